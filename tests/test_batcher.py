"""The vocoder scheduler: urgency order, batches across streams, same audio as alone."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from service.checkpoints.layout import BASE, CheckpointLayout
from service.checkpoints.tiny_vocoder import write_vocoders
from service.speech.streaming import RenderJob, StreamingVocoder
from service.speech.vocoder import UnitVocoder, load_vocoder
from service.speech_worker.batcher import (
    FIRST_CHUNK_DEADLINE_SECONDS,
    RUNNING_OUT_PASSES,
    VocoderBatcher,
    deadline,
    incremental_streams,
    queue_place,
    urgency,
)
from service.speech_worker.priority import Deadline


@pytest.fixture(scope="module")
def vocoder(tmp_path_factory: pytest.TempPathFactory) -> UnitVocoder:
    root = tmp_path_factory.mktemp("vocoders")
    layout = CheckpointLayout(root)
    write_vocoders(layout, seed=0, progress=lambda _: None)
    return load_vocoder(layout.vocoder_dir(BASE))


def codes(seed: int, count: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, 500, count).tolist()


class Recorder:
    """Runs each batch at once, as the worker's inference thread would, and keeps its shape."""

    def __init__(self, pass_seconds: float | None = None) -> None:
        self.pass_seconds = pass_seconds  # what each pass reports it took (None: as measured)
        self.batches: list[list[tuple[int, int]]] = []
        self.incremental: list[list[bool]] = []  # per batch: which chunks are incremental
        self.deadlines: list[float | None] = []  # per batch: the deadline it was run with

    async def __call__(
        self,
        function: Any,
        work: list[tuple[UnitVocoder, RenderJob]],
        deadline: Deadline | None = None,
    ) -> Any:
        self.batches.append([(id(job), len(job.frames)) for _, job in work])
        self.incremental.append([job.decoder is not None for _, job in work])
        self.deadlines.append(None if deadline is None else deadline.at)
        await asyncio.sleep(0)  # let other streams queue, as a real forward pass would
        wavs, seconds = function(work)
        return wavs, seconds if self.pass_seconds is None else self.pass_seconds


async def stream_through(batcher: VocoderBatcher, stream: StreamingVocoder, units: list[int],
                         sizes: int, urgent: tuple[int, float]) -> list[np.ndarray]:  # fmt: skip
    chunks: list[np.ndarray] = []
    for start in range(0, len(units), sizes):
        jobs = stream.push_jobs(units[start : start + sizes])
        chunks += await batcher.render(stream.vocoder, jobs, urgent)
    return chunks + await batcher.render(stream.vocoder, stream.finish_jobs(), urgent)


def test_streams_rendered_together_equal_one_shot(vocoder: UnitVocoder) -> None:
    recorder = Recorder()
    batcher = VocoderBatcher(recorder, max_batch=8)
    speakers = [0, 1, 2, 3]
    unit_lists = [codes(seed, 70 + 9 * seed) for seed in range(4)]

    async def main() -> list[list[np.ndarray]]:
        streams = [StreamingVocoder(vocoder, speaker=s, first_chunk_units=5, chunk_units=7)
                   for s in speakers]  # fmt: skip
        return await asyncio.gather(*[
            stream_through(batcher, stream, units, 20, (1, 0.0))
            for stream, units in zip(streams, unit_lists, strict=True)
        ])  # fmt: skip

    results = asyncio.run(main())
    for speaker, units, chunks in zip(speakers, unit_lists, results, strict=True):
        want = vocoder.synthesize(units, speaker=speaker)
        got = np.concatenate(chunks)
        assert got.shape == want.shape
        assert np.abs(got - want).max() < 1e-4
    sizes = [len(batch) for batch in recorder.batches]
    assert max(sizes) > 1  # the streams' windows did share forward passes
    assert max(sizes) <= 8


def test_a_lone_stream_is_rendered_at_once_and_alone(vocoder: UnitVocoder) -> None:
    recorder = Recorder()
    batcher = VocoderBatcher(recorder, max_batch=8)
    units = codes(7, 60)
    stream = StreamingVocoder(vocoder, first_chunk_units=5, chunk_units=7, max_chunk_units=7)
    chunks = asyncio.run(stream_through(batcher, stream, units, 7, (1, 0.0)))
    assert np.abs(np.concatenate(chunks) - vocoder.synthesize(units)).max() < 1e-4
    assert all(len(batch) == 1 for batch in recorder.batches)


def test_most_urgent_first_and_cut_windows_alone(vocoder: UnitVocoder) -> None:
    recorder = Recorder()
    # At time 0 every playing stream below has 10 s of audio or more left.
    batcher = VocoderBatcher(recorder, max_batch=2, clock=lambda: 0.0)
    late = StreamingVocoder(vocoder, first_chunk_units=5, chunk_units=7)
    soon = StreamingVocoder(vocoder, first_chunk_units=5, chunk_units=7)
    fresh = StreamingVocoder(vocoder, first_chunk_units=5, chunk_units=7)
    ended = StreamingVocoder(vocoder, first_chunk_units=5, chunk_units=7)
    late_jobs = late.push_jobs(codes(1, 40))
    soon_jobs = soon.push_jobs(codes(2, 40))
    fresh_jobs = fresh.push_jobs(codes(3, 40))[:1]
    ended.push_jobs(codes(4, 12))
    ended_jobs = ended.finish_jobs()
    assert not ended_jobs[-1].batchable and all(job.batchable for job in late_jobs)

    async def main() -> None:
        # Submitted in the worst order; the runner starts after all of them are queued.
        await asyncio.gather(
            batcher.render(vocoder, ended_jobs, urgency(3.0, 10.0, 0.0)),
            batcher.render(vocoder, late_jobs, urgency(9.0, 10.0, 0.0)),
            batcher.render(vocoder, soon_jobs, urgency(1.0, 10.0, 0.0)),
            batcher.render(vocoder, fresh_jobs, urgency(0.0, None, 50.0)),
        )

    asyncio.run(main())
    jobs = {"fresh": fresh_jobs, "soon": soon_jobs, "ended": ended_jobs, "late": late_jobs}
    group = {id(job): name for name, group_jobs in jobs.items() for job in group_jobs}
    # Each forward pass starts with the most urgent chunk waiting: a stream without audio
    # first, then by when each stream's audio runs out. Less urgent windows may fill a batch.
    heads = [group[batch[0][0]] for batch in recorder.batches]
    rank = {"fresh": 0, "soon": 1, "ended": 2, "late": 3}
    assert heads[0] == "fresh"
    assert [rank[name] for name in heads] == sorted(rank[name] for name in heads)
    assert all(len(batch) <= 2 for batch in recorder.batches)
    last = id(ended_jobs[-1])
    assert [len(b) for b in recorder.batches if any(i == last for i, _ in b)] == [1]


@pytest.mark.parametrize(("pass_seconds", "order"), [
    (0.25, ["dry", "fresh", "comfortable"]),  # 0.3 s left: less than two such passes
    (0.1, ["fresh", "dry", "comfortable"]),  # enough for a first chunk's pass, then its own
])  # fmt: skip
def test_a_listener_about_to_run_out_goes_before_streams_without_audio(
    vocoder: UnitVocoder, pass_seconds: float, order: list[str]
) -> None:
    # When replies start together, a playing reply's next chunk must not wait for every other
    # stream's first chunk if its listener would run dry meanwhile (RUNNING_OUT_PASSES passes
    # of the recent ones); a stream with audio to spare still waits.
    now = 100.0
    recorder = Recorder(pass_seconds)
    batcher = VocoderBatcher(recorder, max_batch=1, clock=lambda: now)
    streams = {
        name: StreamingVocoder(vocoder, first_chunk_units=5, chunk_units=7)
        for name in ("earlier", "comfortable", "fresh", "dry")
    }
    jobs = {name: stream.push_jobs(codes(20 + i, 12))[:1]
            for i, (name, stream) in enumerate(streams.items())}  # fmt: skip
    places = {
        "comfortable": urgency(1.5, now, 0.0),
        "fresh": urgency(0.0, None, now - 0.5),  # queued half a second ago: not overdue
        "dry": urgency(0.3, now, 0.0),
    }

    async def main() -> None:
        await batcher.render(vocoder, jobs["earlier"], urgency(0.0, None, 0.0))  # a pass's time
        # Queued in the worst order; the runner starts after all of them are queued.
        await asyncio.gather(*[
            batcher.render(vocoder, jobs[name], places[name]) for name in places
        ])  # fmt: skip

    asyncio.run(main())
    assert RUNNING_OUT_PASSES * 0.1 < 0.3 < RUNNING_OUT_PASSES * 0.25
    name_of = {id(job): name for name, group in jobs.items() for job in group}
    assert [name_of[batch[0][0]] for batch in recorder.batches[1:]] == order


def test_a_first_chunk_past_its_deadline_goes_before_listeners_running_out() -> None:
    # Under sustained load every playing reply may be running out; a new reply's first chunk
    # still gets its turn once its deadline has passed (earliest deadline first among them).
    now, margin = 100.0, 0.5
    overdue = urgency(0.0, None, now - FIRST_CHUNK_DEADLINE_SECONDS - 0.1)
    waiting_first = urgency(0.0, None, now - 0.5)
    dry = urgency(0.2, now, 0.0)
    stalled = urgency(0.0, now - 0.5, 0.0)  # its listener ran dry 0.5 s ago
    places = sorted([waiting_first, dry, overdue, stalled],
                    key=lambda u: queue_place(u, now, margin))  # fmt: skip
    assert places == [stalled, overdue, dry, waiting_first]


def test_a_caller_that_leaves_drops_its_waiting_chunks(vocoder: UnitVocoder) -> None:
    recorder = Recorder()
    batcher = VocoderBatcher(recorder, max_batch=1)
    stream = StreamingVocoder(vocoder, first_chunk_units=5, chunk_units=7)
    jobs = stream.push_jobs(codes(5, 80))
    assert len(jobs) > 3

    async def main() -> None:
        task = asyncio.create_task(batcher.render(vocoder, jobs, (1, 0.0)))
        await asyncio.sleep(0)  # queued; the runner takes the first chunk
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)

    asyncio.run(main())
    assert len(recorder.batches) < len(jobs)


def test_urgency_orders_fresh_streams_first() -> None:
    assert urgency(0.0, None, 100.0) < urgency(5.0, 1.0, 0.0)
    assert urgency(1.0, 10.0, 0.0) < urgency(2.0, 10.0, 0.0)


def test_a_playing_streams_pass_runs_with_the_time_its_audio_runs_out(
    vocoder: UnitVocoder,
) -> None:
    # The inference threads let a chunk go first, and long calls step aside for it, only near
    # its deadline (service/speech_worker/priority.py): a playing stream's is when its sent
    # audio runs out, a first chunk's a fixed time after it was queued.
    assert deadline(urgency(0.0, None, 100.0)) == 100.0 + FIRST_CHUNK_DEADLINE_SECONDS
    assert deadline(urgency(2.5, 10.0, 0.0)) == 12.5
    recorder = Recorder()
    batcher = VocoderBatcher(recorder, max_batch=1)
    fresh = StreamingVocoder(vocoder, first_chunk_units=5, chunk_units=7)
    playing = StreamingVocoder(vocoder, first_chunk_units=5, chunk_units=7)

    async def main() -> None:
        await batcher.render(vocoder, fresh.push_jobs(codes(11, 12))[:1], urgency(0, None, 0))
        await batcher.render(vocoder, playing.push_jobs(codes(12, 12))[:1], urgency(2.5, 10, 0))

    asyncio.run(main())
    assert recorder.deadlines == [FIRST_CHUNK_DEADLINE_SECONDS, 12.5]


def test_streams_are_incremental_where_chunks_are_rendered_alone() -> None:
    # Incremental streams keep per-stream layer state, so their chunks are never batched
    # across streams: `auto` chooses them only at one chunk per pass (a CPU's default).
    assert incremental_streams("auto", 1)
    assert not incremental_streams("auto", 32)
    assert incremental_streams("incremental", 32)
    assert not incremental_streams("windows", 1)


def test_an_incremental_streams_chunks_are_rendered_alone(vocoder: UnitVocoder) -> None:
    # Its chunks advance its own layers' state: never batched with other streams' windows,
    # while the windows of the other two streams still share passes.
    recorder = Recorder()
    batcher = VocoderBatcher(recorder, max_batch=8)
    units = [codes(seed, 60) for seed in (8, 9, 10)]
    streams = [
        StreamingVocoder(vocoder, first_chunk_units=5, chunk_units=7, incremental=incremental)
        for incremental in (True, False, False)
    ]

    async def main() -> list[list[np.ndarray]]:
        return await asyncio.gather(*[
            stream_through(batcher, stream, stream_units, 20, (1, 0.0))
            for stream, stream_units in zip(streams, units, strict=True)
        ])  # fmt: skip

    results = asyncio.run(main())
    for stream_units, chunks in zip(units, results, strict=True):
        assert np.abs(np.concatenate(chunks) - vocoder.synthesize(stream_units)).max() < 1e-4
    with_incremental = [kinds for kinds in recorder.incremental if any(kinds)]
    assert with_incremental and all(len(kinds) == 1 for kinds in with_incremental)
    assert max(len(kinds) for kinds in recorder.incremental) > 1


def test_a_waiting_pass_carries_the_deadlines_of_the_chunks_queued_behind_it(
    vocoder: UnitVocoder,
) -> None:
    # The chunks queued behind a pass cannot run before it, so the inference threads must see
    # their deadlines on it: a playing stream's chunk queued behind a fresh stream's first
    # chunk brings that pass's deadline forward while it waits.
    queued_at = 50.0
    seen: list[tuple[str, float | None]] = []

    async def main() -> None:
        thread_free = asyncio.Event()

        async def run(function: Any, work: Any, deadline: Deadline | None = None) -> Any:
            assert deadline is not None
            seen.append(("submitted", deadline.at))
            await thread_free.wait()
            seen.append(("let in", deadline.at))
            return function(work)

        batcher = VocoderBatcher(run, max_batch=1)
        fresh = StreamingVocoder(vocoder, first_chunk_units=5, chunk_units=7)
        playing = StreamingVocoder(vocoder, first_chunk_units=5, chunk_units=7)
        first = asyncio.create_task(
            batcher.render(vocoder, fresh.push_jobs(codes(13, 12))[:1], urgency(0, None, queued_at))
        )
        await asyncio.sleep(0)
        later = asyncio.create_task(
            batcher.render(vocoder, playing.push_jobs(codes(14, 12))[:1], urgency(2.5, 10, 0))
        )
        await asyncio.sleep(0)
        thread_free.set()
        await asyncio.gather(first, later)

    asyncio.run(main())
    assert seen == [
        ("submitted", queued_at + FIRST_CHUNK_DEADLINE_SECONDS),  # the first chunk alone
        ("let in", 12.5),  # the playing stream's chunk queued behind it meanwhile
        ("submitted", 12.5),
        ("let in", 12.5),
    ]
