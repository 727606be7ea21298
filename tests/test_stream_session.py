"""A speech-worker stream session (service/speech_worker/session.py) on the embedded models."""

from __future__ import annotations

import numpy as np

from service.audio.encode import encode_audio
from service.checkpoints.layout import BASE, CheckpointLayout
from service.speech.pipeline import SpeechStack
from service.speech.streaming import RenderJob, render_alone
from service.speech_worker.session import StreamSession, Token

BURST = [f"[Hu{unit}]" for unit in np.random.default_rng(0).integers(0, 500, 200)]


def burst(stack: SpeechStack, *, incremental: bool) -> tuple[StreamSession, list[Token]]:
    """A session with small chunks, and a reply's 200 units accepted at once (a fast LM)."""
    session = StreamSession(
        stack,
        speaker=1,
        sample_rate=16000,
        max_tokens=10_000,
        first_chunk_units=5,
        chunk_units=5,
        max_chunk_units=40,
        incremental=incremental,
    )
    return session, session.accept(BURST, context=False)


def test_a_burst_of_units_is_planned_about_one_chunk_per_slice(layout: CheckpointLayout) -> None:
    # All of a reply's units queued at once (a fast LM): the worker pushes them in slices of
    # one chunk's cap (`StreamingVocoder.slice_units`), so each chunk can be sent as soon as it
    # is rendered instead of waiting for all the windows planned with it (stream_route.py).
    session, tokens = burst(SpeechStack(layout, BASE), incremental=False)
    slice_units, jobs_per_slice = [], []
    for batch in session.batches(tokens):
        slice_units.append(sum(1 for kind, _ in batch if kind == "hubert"))
        jobs_per_slice.append(len(session.plan(batch)))
    assert jobs_per_slice[0] == 1  # the first slice releases the first chunk alone
    # Then slices of the chunk cap (as many units as were emitted: the first chunk's 5 and the
    # 2 ready units that fitted its forward pass's padded length; then 13, 28, and at most
    # max_chunk_units), one chunk each.
    assert slice_units[1:4] == [7, 13, 28] and max(slice_units[1:]) == 40
    assert max(jobs_per_slice) == 1 and sum(slice_units) == 200


def test_an_incremental_session_plans_one_chunk_per_slice_and_gives_one_shot_audio(
    layout: CheckpointLayout,
) -> None:
    # The same burst, vocoded incrementally (the speech worker's default on a CPU): the
    # delivered audio is the one-shot synthesis.
    stack = SpeechStack(layout, BASE)
    stack.load()
    session, tokens = burst(stack, incremental=True)
    audio, jobs_per_slice = [], []
    for batch in session.batches(tokens):
        jobs = session.plan(batch)
        jobs_per_slice.append(len(jobs))
        audio.append(session.deliver(render(stack, jobs)))
    audio.append(session.deliver_last(render(stack, session.plan_finish())))
    # The first slice releases the first chunk alone; later ones about one chunk each (whole
    # blocks of frames left over from earlier slices may make a second).
    assert jobs_per_slice[0] == 1 and max(jobs_per_slice) <= 2 and sum(jobs_per_slice) >= 5
    got = np.frombuffer(b"".join(audio), dtype="<i2").astype(np.int32)
    want = np.frombuffer(
        encode_audio(stack.decode("".join(BURST), speaker=1), 16000, "pcm"),
        dtype="<i2",
    ).astype(np.int32)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1


def render(stack: SpeechStack, jobs: list[RenderJob]) -> list[np.ndarray]:
    return [job.cut(render_alone(stack.vocoder, job)) for job in jobs]
