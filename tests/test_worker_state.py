"""The speech worker's thread limiters (service/speech_worker/state.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from functools import partial

import anyio
import anyio.to_thread
import pytest

from service.speech.yielding import yield_point
from service.speech_worker.models import SpeechModels, realtime_precision
from service.speech_worker.priority import Deadline, Interrupted, Priority
from service.speech_worker.settings import SpeechWorkerSettings
from service.speech_worker.state import WorkerState


def one_inference_thread() -> WorkerState:
    settings = SpeechWorkerSettings(inference_threads=1)
    return WorkerState(settings=settings, models=SpeechModels(settings))


class Blocking:
    """A model call that holds its thread until released, then notes `done` in `order`."""

    def __init__(self, order: list[str], done: str) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.order, self.done = order, done

    def __call__(self) -> None:
        self.started.set()
        self.release.wait(timeout=30)
        self.order.append(self.done)


def test_planning_does_not_wait_behind_inference() -> None:
    # A stream's planning step (milliseconds) must not queue behind a long vocoder pass or
    # encode on the inference thread: it has a thread of its own.
    state = one_inference_thread()
    order: list[str] = []
    long_inference = Blocking(order, "inference done")

    def planning() -> str:
        order.append("planned")
        long_inference.release.set()  # only reachable while the inference call holds its thread
        return "jobs"

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(state.run, long_inference)
            # The inference call holds the only inference thread before planning starts.
            assert await anyio.to_thread.run_sync(long_inference.started.wait, 30)
            assert await state.plan(planning) == "jobs"

    anyio.run(main)
    assert order == ["planned", "inference done"]


def test_work_sent_ahead_runs_after_waited_work_that_queued_behind_it() -> None:
    # Four sessions' turns ending together: their windows (sent ahead) queued before their
    # tails (waited for); the tails go first once the inference thread is free.
    state = one_inference_thread()
    order: list[str] = []
    long_inference = Blocking([], "inference done")

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(state.run, long_inference)
            assert await anyio.to_thread.run_sync(long_inference.started.wait, 30)
            for name, priority in [
                ("window", Priority.AHEAD),
                ("tail", Priority.WAITED),
                ("next window", Priority.AHEAD),
                ("chunk", Priority.WAITED),
            ]:
                group.start_soon(partial(state.run, order.append, name, priority=priority))
                await anyio.sleep(0.01)
            assert state.limiter.waiting == 4
            long_inference.release.set()

    anyio.run(main)
    assert order == ["tail", "chunk", "window", "next window"]


@pytest.mark.parametrize("kind", ["run", "plan"])
def test_a_cancelled_call_keeps_its_thread_until_the_call_returns(kind: str) -> None:
    # The speech worker cancels the work of a client that went away with Task.cancel
    # (service/speech_worker/disconnect.py); the thread cannot be stopped, so its place must
    # stay taken until it returns, or two torch threads would share one core.
    state = one_inference_thread()
    call = state.run if kind == "run" else state.plan
    limiter = state.limiter if kind == "run" else state.planning_limiter
    order: list[str] = []
    long_call = Blocking(order, "cancelled call returned")

    async def main() -> None:
        first = asyncio.create_task(call(long_call))
        assert await asyncio.to_thread(long_call.started.wait, 30)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first  # the caller gives up at once...
        second = asyncio.create_task(call(order.append, "next call"))
        await asyncio.sleep(0.2)
        assert order == [] and limiter.holders == 1  # ...its thread keeps the place
        long_call.release.set()
        await asyncio.wait_for(second, 30)

    asyncio.run(main())
    assert order == ["cancelled call returned", "next call"]
    assert limiter.holders == 0


@pytest.mark.parametrize("preemptible", [True, False])
def test_a_long_call_hands_its_thread_to_a_due_chunk_at_its_next_layer(preemptible: bool) -> None:
    # A whole-turn encode must not hold a playing reply's next chunk for its whole length: run
    # preemptible, it steps aside at its next yield point (a layer boundary of its model,
    # service/speech/yielding.py) and finishes after the chunk.
    state = one_inference_thread()
    order: list[str] = []
    started, chunk_queued = threading.Event(), threading.Event()

    def long_call() -> None:
        started.set()
        chunk_queued.wait(30)
        yield_point()
        order.append("long call done")

    async def main() -> None:
        long = asyncio.create_task(state.run(long_call, preemptible=preemptible))
        assert await asyncio.to_thread(started.wait, 30)
        due = Deadline(time.monotonic() + 0.2)  # its listener runs out of audio in 0.2 s
        chunk = asyncio.create_task(state.run(order.append, "chunk", deadline=due))
        while state.limiter.waiting == 0:
            await asyncio.sleep(0.01)
        chunk_queued.set()
        await asyncio.wait_for(asyncio.gather(long, chunk), 30)

    asyncio.run(main())
    assert order == (["chunk", "long call done"] if preemptible else ["long call done", "chunk"])
    assert state.limiter.holders == 0 and state.limiter.waiting == 0
    steps = state.metrics.registry.get_sample_value("spiritlm_speech_steps_aside_total")
    assert steps == (1.0 if preemptible else 0.0)


def test_a_call_stepped_aside_at_shutdown_ends_instead_of_blocking_the_exit() -> None:
    # The event loop stops while a long call waits to get its thread back: the call must end
    # (`Interrupted`) rather than keep its thread waiting forever (which would hang the exit).
    state = one_inference_thread()
    ended: list[str] = []
    started, chunk_running, chunk_may_end = threading.Event(), threading.Event(), threading.Event()

    def long_call() -> None:
        started.set()
        try:
            while True:
                yield_point()
                threading.Event().wait(0.01)
        except Interrupted:
            ended.append("interrupted")
            raise

    def chunk() -> None:
        chunk_running.set()
        chunk_may_end.wait(30)

    async def main() -> None:
        asyncio.create_task(state.run(long_call, preemptible=True))
        assert await asyncio.to_thread(started.wait, 30)
        asyncio.create_task(state.run(chunk, deadline=Deadline(time.monotonic())))
        assert await asyncio.to_thread(chunk_running.wait, 30)
        # returning ends the loop: its tasks are cancelled, the long call's wait among them

    asyncio.run(main())
    chunk_may_end.set()
    deadline = time.monotonic() + 10
    while not ended and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ended == ["interrupted"]


def test_the_deadline_lead_setting_reaches_the_inference_limiter() -> None:
    settings = SpeechWorkerSettings(inference_threads=1, deadline_lead_seconds=0.4)
    assert (
        WorkerState(settings=settings, models=SpeechModels(settings)).limiter.deadline_lead == 0.4
    )
    with pytest.raises(ValueError):
        SpeechWorkerSettings(deadline_lead_seconds=2.5)


def test_plans_run_one_at_a_time() -> None:
    settings = SpeechWorkerSettings(inference_threads=4)
    state = WorkerState(settings=settings, models=SpeechModels(settings))
    running, most = [0], [0]
    lock = threading.Lock()

    def planning() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        threading.Event().wait(0.02)
        with lock:
            running[0] -= 1

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(state.plan, planning)

    anyio.run(main)
    assert most[0] == 1


def test_realtime_turns_have_encoders_of_their_own_precision(layout) -> None:  # noqa: ANN001
    import torch

    from service.checkpoints.layout import BASE

    settings = SpeechWorkerSettings(
        checkpoints_dir=layout.root, models=[BASE], realtime_encoder_dtype="bfloat16"
    )
    models = SpeechModels(settings)
    models.load()
    exact, realtime = models.get(BASE), models.get(BASE, realtime=True)
    assert exact.hubert.dtype == torch.float32  # REST and the CLI: the reference's units
    assert realtime.hubert.dtype == torch.bfloat16
    assert realtime.vocoder is exact.vocoder and realtime.quantizer is exact.quantizer
    same = SpeechModels(settings.model_copy(update={"realtime_encoder_dtype": "float32"}))
    same.load()
    assert same.get(BASE, realtime=True) is same.get(BASE)  # nothing loaded twice


def test_realtime_precision_auto_takes_bfloat16_on_cpus_that_have_it() -> None:
    amx, avx512, plain = frozenset({"amx_bf16"}), frozenset({"avx512_bf16"}), frozenset({"avx2"})
    assert realtime_precision("auto", "float32", "cpu", amx) == "bfloat16"
    assert realtime_precision("auto", "float32", "cpu", avx512) == "bfloat16"
    # A GPU's float32 encode is a small share of first audio: the units stay the reference's.
    assert realtime_precision("auto", "float32", "cuda", amx) == "float32"
    assert realtime_precision("auto", "bfloat16", "cuda", plain) == "bfloat16"
    # Emulated bfloat16 is slower than float32: the REST precision stays.
    assert realtime_precision("auto", "float32", "cpu", plain) == "float32"
    assert realtime_precision("auto", "bfloat16", "cpu", plain) == "bfloat16"
    assert realtime_precision("float32", "float32", "cpu", amx) == "float32"
    assert realtime_precision("bfloat16", "float32", "cpu", plain) == "bfloat16"


def test_the_worker_loads_its_encoders_in_the_configured_precision(layout) -> None:  # noqa: ANN001
    import torch

    from service.checkpoints.layout import BASE

    settings = SpeechWorkerSettings(
        checkpoints_dir=layout.root, models=[BASE], encoder_dtype="bfloat16"
    )
    models = SpeechModels(settings)
    models.load()
    assert models.get(BASE).hubert.dtype == torch.bfloat16
    assert models.get(BASE).vocoder.compute_dtype == torch.float32  # vocoder_dtype's default
