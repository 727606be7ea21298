"""State shared by the worker's routes: settings, models, metrics and the thread limiters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from service.speech_worker.batcher import VocoderBatcher
from service.speech_worker.metrics import WorkerMetrics
from service.speech_worker.models import SpeechModels
from service.speech_worker.priority import Deadline, Priority, PriorityLimiter, run_in_thread
from service.speech_worker.settings import SpeechWorkerSettings

T = TypeVar("T")


@dataclass
class WorkerState:
    settings: SpeechWorkerSettings
    models: SpeechModels
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    active_streams: int = 0
    limiter: PriorityLimiter = field(init=False)  # the inference threads, see `run`
    planning_limiter: PriorityLimiter = field(init=False)  # the planning thread, see `plan`
    _batcher: VocoderBatcher | None = None

    def __post_init__(self) -> None:
        self.limiter = PriorityLimiter(
            self.settings.inference_threads,
            deadline_lead=self.settings.deadline_lead_seconds,
            on_step_aside=self.metrics.steps_aside.inc,
        )
        self.planning_limiter = PriorityLimiter(1)

    @property
    def batcher(self) -> VocoderBatcher:
        """The streams' vocoder scheduler (service/speech_worker/batcher.py), made on first use."""
        if self._batcher is None:
            size = self.models.vocoder_batch_size
            self._batcher = VocoderBatcher(self.run, size, self.metrics.observe_vocoder_batch)
        return self._batcher

    async def run(
        self,
        function: Callable[..., T],
        *args: object,
        priority: Priority = Priority.WAITED,
        deadline: Deadline | None = None,
        preemptible: bool = False,
    ) -> T:
        """Run model work in a worker thread; at most `inference_threads` at once, waiting
        calls let in by `deadline` and `priority`
        (service/speech_worker/priority.py). A `preemptible` call hands its thread over at its
        model's layer boundaries to a caller whose deadline is due (service/speech/yielding.py):
        encodes and one-shot syntheses are, long calls whose results nobody hears while they
        run; a stream's chunks are not, they are short, and they are what steps in."""
        return await run_in_thread(
            self.limiter,
            function,
            *args,
            priority=priority,
            deadline=deadline,
            preemptible=preemptible,
        )

    async def plan(self, function: Callable[..., T], *args: object) -> T:
        """Run a stream's planning step in a worker thread, one at a time, beside `run`'s.

        Planning (parsing tokens, predicting the durations of at most `max_chunk_units` units,
        cutting windows: milliseconds) used to queue on the inference threads behind vocoder
        passes and encodes of a few hundred milliseconds each, so a stream under load waited
        that long for every token batch before its chunk could even be queued for rendering
        (measured with four official-size sessions on one core: 0.13-0.40 s per step,
        docs/benchmarks.md). Its own single thread keeps it off the event loop and bounded:
        torch runs on at most `inference_threads` + 1 threads. On a GPU the duration predictor
        still shares the device's stream with the vocoder passes.
        """
        return await run_in_thread(self.planning_limiter, function, *args)
