"""`bench realtime`: per-stream speed, peak memory of the stack, and the table that holds them."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import psutil
import soundfile
from prometheus_client.parser import text_string_to_metric_families

from service.bench.processes import listening_pid
from service.bench.realtime import (
    COLUMNS,
    LevelResult,
    PeakRss,
    Report,
    SessionResult,
    markdown_section,
    markdown_table,
    mean_phases,
    phase_table,
    run_benchmark,
    stream_speed,
)
from service.checkpoints.layout import BASE
from service.gateway.realtime.response import FIRST_AUDIO_PHASES

MIB = 2**20


def test_stream_speed_is_audio_after_the_first_delta_per_wall_second() -> None:
    # 0.5 s deltas every 0.5 s: exactly playback speed, whatever the first delta's size.
    assert stream_speed([(10.0, 2.0), (10.5, 0.5), (11.0, 0.5), (11.5, 0.5)]) == 1.0
    assert stream_speed([(0.0, 0.5), (0.25, 0.5), (0.5, 0.5)]) == 2.0
    assert stream_speed([(0.0, 1.0), (2.0, 1.0)]) == 0.5
    assert stream_speed([(3.0, 6.0)]) is None  # a whole reply at once has no rate
    assert stream_speed([]) is None


def test_peak_rss_sees_a_freed_allocation_and_resets_per_level() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\n"
         "sys.stdin.readline(); a = bytearray(300 * 2**20); del a; print('freed', flush=True)\n"
         "sys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    try:
        peak = PeakRss([child.pid])
        peak.start()
        child.stdin.write("allocate\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "freed"
        now = psutil.Process(child.pid).memory_info().rss
        first = peak.peak()
        assert first is not None and first >= 300 * MIB > now + 200 * MIB
        peak.start()  # the next level: the earlier peak no longer counts
        second = peak.peak()
        assert second is not None and second < 100 * MIB
    finally:
        child.kill()
        child.wait()
    assert PeakRss([child.pid]).peak() is None  # gone: nothing to read


def level(sessions: int, streaming: bool, speeds: list[float | None]) -> LevelResult:
    results = [
        SessionResult(status="completed", latency=0.4 + 0.1 * i, audio_seconds=5.0,
                      stall=0.01 * i, speed=speed)
        for i, speed in enumerate(speeds)
    ]  # fmt: skip
    return LevelResult(sessions, streaming, results, wall=12.0, speech_rss=1536 * MIB,
                       gateway_rss=(250 * MIB if streaming else None))  # fmt: skip


def rows_of(table: str) -> list[dict[str, str]]:
    lines = [line.strip().strip("|") for line in table.strip().splitlines()]
    header = [cell.strip() for cell in lines[0].split("|")]
    return [
        dict(zip(header, (c.strip() for c in line.split("|")), strict=True)) for line in lines[2:]
    ]


def test_table_has_the_speed_and_memory_of_every_level() -> None:
    one = Report("http://127.0.0.1:1", "a stack", Path("a.flac"), 9.1, 100, label="per-stream",
                 speech_cores=2)  # fmt: skip
    one.levels = [level(2, True, [1.8, 1.2]), level(2, False, [None, None])]
    other = Report("http://127.0.0.1:2", "b stack", Path("a.flac"), 9.1, 100, label="batched")
    other.levels = [level(1, True, [3.0])]
    rows = rows_of(markdown_table(one, other))
    assert list(rows[0]) == ["Stack", *COLUMNS]
    assert [(r["Stack"], r["Sessions"], r["Audio out"]) for r in rows] == [
        ("per-stream", "2", "streamed"), ("per-stream", "2", "whole reply, then sent"),
        ("batched", "1", "streamed"),
    ]  # fmt: skip
    assert rows[0]["Slowest stream (x real time)"] == "1.20"  # the worst, not the mean
    assert rows[1]["Slowest stream (x real time)"] == "–"
    assert rows[0]["Speech worker peak RSS (MiB)"] == "1536"
    assert rows[0]["Gateway peak RSS (MiB)"] == "250" and rows[1]["Gateway peak RSS (MiB)"] == "–"
    assert rows[0]["Worst stall (s)"] == "0.01" and rows[0]["Keeps up with real time"] == "yes"
    section = markdown_section("spiritlm-serve bench realtime", one, other)
    assert "2 concurrent session(s)** (per-stream)" in section
    assert "1 real-time session(s) per speech core (the speech worker may run on 2 core(s))" in (
        section
    )
    assert "**1 concurrent session(s)** (batched) is the largest" in section
    assert "by phase" not in section  # no level measured its phases
    assert "(silence_duration_ms 2000)" in section
    one.silence_ms = 500
    assert "(silence_duration_ms 500)" in markdown_section("bench", one)


def test_phase_table_has_a_row_per_streamed_level_in_phase_order() -> None:
    report = Report("http://127.0.0.1:1", "a stack", Path("a.flac"), 9.1, 100, label="x")
    streamed, whole = level(4, True, [1.0] * 4), level(4, False, [None] * 4)
    streamed.phases = {"encode": 0.1, "prompt": 0.01, "lm": 0.2, "vocoder": 0.3, "send": 0.004}
    report.levels = [streamed, whole]
    rows = rows_of(phase_table(report))
    assert rows == [{"Stack": "x", "Sessions": "4", "encode": "0.10", "prompt": "0.01",
                     "lm": "0.20", "vocoder": "0.30", "send": "0.00"}]  # fmt: skip
    assert "mean seconds per phase" in markdown_section("bench", report)
    assert mean_phases({"lm": (1.0, 2.0)}, {"lm": (2.5, 5.0), "send": (0.5, 2.0)}) == {
        "lm": 0.5, "send": 0.25
    }  # fmt: skip


def test_levels_measure_first_audio_speed_and_memory(
    servers,
    speech_file: Path,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    gateway = servers.gateway(BASE)
    report = asyncio.run(
        run_benchmark(
            gateway,
            first_seconds(speech_file, 3.5, tmp_path),  # one short turn keeps each level brief
            [2],
            max_tokens=40,
            time_budget=600.0,
            progress=lambda _: None,
            label="test",
            silence_ms=700,  # its 2.45 s of speech end at the start of the file's long pause
        )  # fmt: skip
    )
    assert report.silence_ms == 700
    assert [(lv.sessions, lv.streaming) for lv in report.levels] == [(2, True), (2, False)]
    streamed, whole = report.levels
    assert len(streamed.completed) == 2, [r.error for r in streamed.results]
    assert all(r.latency is not None and 0 < r.latency < 60 for r in streamed.completed)
    slowest = streamed.slowest_stream
    assert slowest is not None and 0 < slowest < 1000 and not math.isinf(streamed.worst_stall)
    assert whole.slowest_stream is None  # one piece, no rate
    # Where the streamed first audio went, from the gateway's phase histogram: every phase, and
    # together about the first audio the client saw (it starts the clock at speech_stopped).
    assert list(streamed.phases) == list(FIRST_AUDIO_PHASES) and whole.phases == {}
    assert all(seconds >= 0 for seconds in streamed.phases.values())
    assert_phases_add_up_to_first_audio(streamed)
    # Memory: the speech worker behind the gateway, a plausible size, its own and not the gateway's.
    speech_pid = listening_pid(servers.speech())
    assert speech_pid is not None
    speech_now = psutil.Process(speech_pid).memory_info().rss
    for lv in report.levels:
        assert lv.speech_rss is not None and 50 * MIB < lv.speech_rss < 64 * 2**30
        assert lv.gateway_rss is not None and 20 * MIB < lv.gateway_rss < 64 * 2**30
    # The last level's peak is not below what the worker holds now, after it.
    last = report.levels[-1].speech_rss
    assert last is not None and last >= 0.9 * speech_now
    assert report.speech_cores is not None and report.speech_cores >= 1
    rows = rows_of(markdown_table(report))
    assert float(rows[0]["Speech worker peak RSS (MiB)"]) == round(streamed.speech_rss / MIB)
    assert np.isclose(float(rows[0]["Slowest stream (x real time)"]), slowest, atol=0.006)


def test_push_to_talk_callers_commit_their_turns_and_the_clock_starts_there(
    servers,
    speech_file: Path,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    # No VAD: each caller sends its turn, commits it and asks for a reply; the server encodes
    # the turn only then, so the encode phase is part of the first audio. The baseline's
    # caller clears its input instead and tokenizes the turn itself.
    gateway = servers.gateway(BASE)
    replies_before = first_audio_counts(gateway)
    report = asyncio.run(
        run_benchmark(
            gateway,
            first_seconds(speech_file, 2.0, tmp_path),
            [1],
            max_tokens=30,
            time_budget=600.0,
            progress=lambda _: None,
            push_to_talk=True,
        )  # fmt: skip
    )
    assert report.push_to_talk
    # The gateway's replies were to commits, none to its VAD: the warm-up and the streamed
    # level's (the baseline asks for none).
    replies = first_audio_counts(gateway)
    assert replies.get("commit", 0) - replies_before.get("commit", 0) == 2
    assert replies.get("vad", 0) == replies_before.get("vad", 0)
    streamed, whole = report.levels
    for lv in (streamed, whole):
        assert len(lv.completed) == 1, [r.error for r in lv.results]
        assert all(r.latency is not None and 0 < r.latency < 60 for r in lv.completed)
    assert streamed.phases["encode"] > 0
    assert_phases_add_up_to_first_audio(streamed)
    section = markdown_section("bench", report)
    assert "commits its turn (push to talk" in section
    assert "from the client sending its commit" in section and "silence_duration_ms" not in section


def test_push_to_talk_refuses_a_vad_silence() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "service", "bench", "realtime", "--push-to-talk",
         "--silence-ms", "500", "--url", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode != 0
    assert "--silence-ms sets the server VAD, which --push-to-talk turns off" in completed.stderr


def first_seconds(speech_file: Path, seconds: float, directory: Path) -> Path:
    """A WAV file of the speech file's first `seconds`."""
    wave, rate = soundfile.read(str(speech_file), dtype="float32")
    short = directory / "turn.wav"
    soundfile.write(str(short), wave[: int(seconds * rate)], rate)
    return short


def assert_phases_add_up_to_first_audio(streamed: LevelResult) -> None:
    """The gateway's phases (from the turn's commit) total about the client's first audio."""
    client_mean = float(np.mean(streamed.latencies))
    assert abs(sum(streamed.phases.values()) - client_mean) < 0.3 + 0.2 * client_mean


def first_audio_counts(gateway: str) -> dict[str, float]:
    """The gateway's realtime replies so far, by what ended their turns (vad, commit, create)."""
    text = httpx.get(f"{gateway}/metrics", timeout=10).text
    return {
        sample.labels["trigger"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "spiritlm_realtime_first_audio_seconds"
        for sample in family.samples
        if sample.name.endswith("_count")
    }
