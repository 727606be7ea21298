"""A speech-worker stream session (service/speech_worker/session.py) on the embedded models."""

from __future__ import annotations

import numpy as np

from service.checkpoints.layout import BASE, CheckpointLayout
from service.speech.pipeline import SpeechStack
from service.speech_worker.session import StreamSession


def test_a_burst_of_units_is_planned_about_one_chunk_per_slice(layout: CheckpointLayout) -> None:
    # All of a reply's units queued at once (a fast LM): the worker pushes them in slices of
    # one chunk's cap (`StreamingVocoder.slice_units`), so each chunk can be sent as soon as it
    # is rendered instead of waiting for all the windows planned with it (stream_route.py).
    stack = SpeechStack(layout, BASE)
    session = StreamSession(
        stack,
        speaker=1,
        sample_rate=16000,
        max_tokens=10_000,
        first_chunk_units=5,
        chunk_units=5,
        max_chunk_units=40,
    )
    units = np.random.default_rng(0).integers(0, 500, 200)
    tokens = session.accept([f"[Hu{unit}]" for unit in units], context=False)
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
