"""The vocoder scheduler: the ready chunks of every stream, rendered together and by urgency.

Each stream plans its chunks (`StreamSession.plan`: windows of frames with their receptive
field) and hands them here. One runner takes what is waiting, most urgent first, and renders it
on the worker's inference thread:

* urgency: a playing stream whose buffered audio would run out while `RUNNING_OUT_PASSES`
  more passes run (the longest recent one) comes first (its player is about to stall), with
  first chunks past their deadline beside them (`queue_place`), then a stream that has sent no
  audio yet (its listener hears nothing until then), then the stream whose buffered audio runs
  out soonest (its first audio time plus the audio it was sent: the moment its player would
  stall). That moment (for a first chunk, `FIRST_CHUNK_DEADLINE_SECONDS` after it was queued)
  is the chunk's deadline, and the earliest among all waiting chunks is the deadline of the
  pass waiting for an inference thread, brought forward when a more pressing chunk queues
  behind it (the pass ahead of it must run first): near its deadline a pass goes before other
  model work, and long calls step aside for it (service/speech_worker/priority.py);
* batching: the most urgent chunk's window goes into one forward pass with the next waiting
  windows of the same vocoder, up to `vocoder_batch_size` (`UnitVocoder.render_batch`). A chunk
  whose window was cut short by the end of its stream is rendered alone (`RenderJob.batchable`),
  and so is every chunk of an incremental stream (its layers' state is its own,
  service/speech/incremental.py).
  Passes run at a few padded lengths (`shape_bucket`), which torch's kernels are built for
  once. Nothing waits for a batch to fill: whatever queued while the previous forward pass ran
  forms the next one, so a lone stream pays no extra latency and batches grow with the load.

Output is the same as per-stream rendering up to float rounding (tests/test_vocoder.py and
tests/test_speech_worker.py check both paths against one-shot synthesis).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from service.speech.streaming import RenderJob, render_alone
from service.speech.vocoder import UnitVocoder, shape_bucket
from service.speech_worker.priority import Deadline

# (0, submitted) for a stream that has sent no audio yet, else (1, when its audio runs out).
Urgency = tuple[int, float]
RunInThread = Callable[..., Awaitable[Any]]


@dataclass(order=True)
class _Waiting:
    urgency: Urgency
    order: int  # submission order among equal urgencies (a stream's chunks stay in order)
    vocoder: UnitVocoder = field(compare=False)
    job: RenderJob = field(compare=False)
    result: asyncio.Future[np.ndarray] = field(compare=False)


class VocoderBatcher:
    """Renders planned chunks for every stream of one worker."""

    def __init__(
        self,
        run: RunInThread,
        max_batch: int,
        on_batch: Callable[[int, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,  # the urgencies' clock; tests set it
    ) -> None:
        self._run = run
        self._clock = clock
        self.max_batch = max_batch
        self._on_batch = on_batch
        self._waiting: list[_Waiting] = []
        self._submitted = 0
        self._runner: asyncio.Task[None] | None = None
        self._pending: Deadline | None = None  # the deadline of the pass waiting for a thread
        self._recent_passes: deque[float] = deque(maxlen=RECENT_PASSES)  # seconds each

    async def render(
        self, vocoder: UnitVocoder, jobs: Sequence[RenderJob], urgency: Urgency
    ) -> list[np.ndarray]:
        """The chunks of `jobs`, in order; cancelling drops those not started yet."""
        if not jobs:
            return []
        loop = asyncio.get_running_loop()
        mine = []
        for job in jobs:
            self._submitted += 1
            mine.append(_Waiting(urgency, self._submitted, vocoder, job, loop.create_future()))
        self._waiting += mine
        if self._pending is not None:
            self._pending.bring_forward(deadline(urgency))
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._render_waiting())
        try:
            return [await waiting.result for waiting in mine]
        finally:
            self._forget(mine)

    async def aclose(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    def _forget(self, mine: list[_Waiting]) -> None:
        """Drop a caller's chunks that no batch took (the caller is gone)."""
        gone = {id(waiting) for waiting in mine}
        self._waiting = [waiting for waiting in self._waiting if id(waiting) not in gone]
        for waiting in mine:
            waiting.result.cancel()

    async def _render_waiting(self) -> None:
        try:
            while self._waiting:
                await self._render_next()
        finally:
            # Only reached with chunks waiting when the runner is cancelled (shutdown).
            for waiting in self._waiting:
                if not waiting.result.done():
                    waiting.result.set_exception(RuntimeError("the vocoder scheduler stopped"))

    async def _render_next(self) -> None:
        batch = self._next_batch()
        # The chunks left waiting cannot run before this pass: it carries their deadlines.
        self._pending = Deadline(min(deadline(w.urgency) for w in batch + self._waiting))
        try:
            work = [(w.vocoder, w.job) for w in batch]
            wavs, seconds = await self._run(_render, work, deadline=self._pending)
        except Exception as error:  # the callers report it; the runner goes on
            for waiting in batch:
                if not waiting.result.done():
                    waiting.result.set_exception(error)
            return
        finally:
            self._pending = None
        self._recent_passes.append(seconds)
        if self._on_batch is not None:
            self._on_batch(len(batch), seconds)
        for waiting, wav in zip(batch, wavs, strict=True):
            if not waiting.result.done():
                waiting.result.set_result(waiting.job.cut(wav))

    def _next_batch(self) -> list[_Waiting]:
        now = self._clock()
        margin = RUNNING_OUT_PASSES * max(self._recent_passes, default=0.0)
        self._waiting.sort(key=lambda w: (*queue_place(w.urgency, now, margin), w.order))
        first = self._waiting[0]
        batch = [first]
        if first.job.batchable:
            for waiting in self._waiting[1:]:
                if len(batch) >= self.max_batch:
                    break
                if waiting.vocoder is first.vocoder and waiting.job.batchable:
                    batch.append(waiting)
        taken = {id(waiting) for waiting in batch}
        self._waiting = [waiting for waiting in self._waiting if id(waiting) not in taken]
        return batch


def _render(work: list[tuple[UnitVocoder, RenderJob]]) -> tuple[list[np.ndarray], float]:
    """One forward pass (worker thread): the windows' audio, cut by the caller, and the
    seconds the pass took (not counting its wait for the thread).

    At bucketed lengths (`shape_bucket`), padded on the side where the window's receptive
    field is complete, so the chunks' samples are what an unpadded pass gives.
    """
    started = time.perf_counter()
    vocoder, first = work[0]
    if first.batchable:
        width = shape_bucket(max(len(job.frames) for _, job in work))
        jobs = [(job.frames, job.conditioning) for _, job in work]
        wavs = vocoder.render_batch(jobs, width)
    else:
        wavs = [render_alone(vocoder, first)]
    return wavs, time.perf_counter() - started


def urgency(sent_seconds: float, first_audio_at: float | None, submitted: float) -> Urgency:
    """A stream's place in the queue (module docstring): from what it has sent so far."""
    if first_audio_at is None:
        return (0, submitted)
    return (1, first_audio_at + sent_seconds)


# A playing stream whose listener would run out of audio within this many passes (the longest
# of the last `RECENT_PASSES`) goes before the streams that have sent none. Steady chunks
# always waited behind first chunks before: when four replies started together, the first
# reply's next chunk queued behind the three others' first chunks (0.2-0.3 s each in float32
# at official size) and its listener ran dry (docs/benchmarks.md, "Realtime turns in
# bfloat16, and replies that start together"). Two passes: the one a first chunk would take
# ahead of it, and its own (one pass, tried, still stalled 0.71 s once). Counted in passes,
# not seconds, so that the margin follows the hardware and the precision: a fixed 0.5 s
# (tried) gave first audio no sooner here and would hold first chunks back far too long on a
# GPU, whose passes take milliseconds.
RUNNING_OUT_PASSES = 2
RECENT_PASSES = 8


def running_out(urgency: Urgency, now: float, margin: float) -> bool:
    """Whether a chunk's listener runs out of audio within `margin` seconds."""
    started, at = urgency
    return bool(started) and at - now <= margin


def queue_place(urgency: Urgency, now: float, margin: float) -> tuple[float, ...]:
    """A waiting chunk's place (lower goes first; the module docstring has the order).

    Chunks whose listener is running out go first, and with them first chunks past their
    deadline, earliest deadline first: under sustained load every playing reply may be
    running out, and a new reply must still get its first audio."""
    started, _ = urgency
    if running_out(urgency, now, margin) or (not started and deadline(urgency) <= now):
        return (0, deadline(urgency))
    return (1, *urgency)


# A stream's first chunk is needed this long after it was queued. With the default
# `deadline_lead_seconds` (1 s) it goes before other model work once it has waited a second:
# behind an upload's encode it waited the whole encode before (several seconds), while a
# first chunk preempting at once let other sessions' first chunks crowd out a playing reply's
# next one (docs/benchmarks.md, "Deadlines").
FIRST_CHUNK_DEADLINE_SECONDS = 2.0


def deadline(urgency: Urgency) -> float:
    """When a chunk is needed (time.monotonic): when its listener runs out of audio once its
    stream plays, else `FIRST_CHUNK_DEADLINE_SECONDS` after it was queued. The inference
    threads let a chunk whose deadline is near go first (service/speech_worker/priority.py)."""
    started, at = urgency
    return at if started else at + FIRST_CHUNK_DEADLINE_SECONDS


# On a CPU a batched forward pass costs what its windows cost one by one (docs/benchmarks.md), so
# batching would only make the most urgent chunk wait for the others; a GPU runs a batch in
# about the time of one window.
CPU_BATCH_SIZE = 1
GPU_BATCH_SIZE = 32


def default_batch_size(device: str) -> int:
    return CPU_BATCH_SIZE if device.startswith("cpu") else GPU_BATCH_SIZE


# The speech worker's `vocoder_streaming` setting.
StreamingMode = Literal["auto", "incremental", "windows"]


def incremental_streams(mode: StreamingMode, batch_size: int) -> bool:
    """Whether streams vocode incrementally (service/speech/incremental.py). Their chunks are
    not batched across streams, so `auto` chooses it only where a pass renders one chunk."""
    return mode == "incremental" or (mode == "auto" and batch_size == 1)
