"""The speech worker's thread limiters (service/speech_worker/state.py)."""

from __future__ import annotations

import threading

import anyio

from service.speech_worker.models import SpeechModels
from service.speech_worker.settings import SpeechWorkerSettings
from service.speech_worker.state import WorkerState


def test_planning_does_not_wait_behind_inference() -> None:
    # A stream's planning step (milliseconds) must not queue behind a long vocoder pass or
    # encode on the inference thread: it has a thread of its own.
    settings = SpeechWorkerSettings(inference_threads=1)
    state = WorkerState(settings=settings, models=SpeechModels(settings))
    release = threading.Event()
    order: list[str] = []

    def long_inference() -> None:
        release.wait(timeout=30)
        order.append("inference done")

    def planning() -> str:
        order.append("planned")
        release.set()  # only reachable while the inference call still holds its thread
        return "jobs"

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(state.run, long_inference)
            await anyio.sleep(0.05)  # the inference call holds the only inference thread
            assert await state.plan(planning) == "jobs"

    anyio.run(main)
    assert order == ["planned", "inference done"]
