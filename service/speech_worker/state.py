"""State shared by the worker's routes: settings, models, metrics and the thread limiters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import anyio.to_thread

from service.speech_worker.batcher import VocoderBatcher
from service.speech_worker.metrics import WorkerMetrics
from service.speech_worker.models import SpeechModels
from service.speech_worker.priority import Priority, PriorityLimiter
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
        self.limiter = PriorityLimiter(self.settings.inference_threads)
        self.planning_limiter = PriorityLimiter(1)

    @property
    def batcher(self) -> VocoderBatcher:
        """The streams' vocoder scheduler (service/speech_worker/batcher.py), made on first use."""
        if self._batcher is None:
            size = self.models.vocoder_batch_size
            self._batcher = VocoderBatcher(self.run, size, self.metrics.observe_vocoder_batch)
        return self._batcher

    async def run(
        self, function: Callable[..., T], *args: object, priority: Priority = Priority.WAITED
    ) -> T:
        """Run model work in a worker thread; at most `inference_threads` at once, waiting
        calls let in by `priority` (service/speech_worker/priority.py)."""
        return await _in_thread(self.limiter, priority, function, *args)

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
        return await _in_thread(self.planning_limiter, Priority.WAITED, function, *args)


async def _in_thread(
    limiter: PriorityLimiter, priority: Priority, function: Callable[..., T], *args: object
) -> T:
    """`function(*args)` in a worker thread once `limiter` lets it in.

    A caller that is cancelled (its client went away) returns at once, but the call in progress
    keeps its place until its thread returns: the limiter really bounds the threads that use
    torch. (anyio's shield does not hold against a plain `Task.cancel`, which is how
    service/speech_worker/disconnect.py cancels, so the call is shielded here.)
    """
    await limiter.acquire(priority)

    def done(call: asyncio.Future[T]) -> None:
        limiter.release()
        if not call.cancelled():
            call.exception()  # retrieved: a caller that gave up no longer will

    call = asyncio.ensure_future(anyio.to_thread.run_sync(function, *args))
    call.add_done_callback(done)
    return await asyncio.shield(call)
