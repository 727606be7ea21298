"""Realtime benchmark: concurrent voice sessions over WS /v1/realtime, streaming vs. not.

Each session is one simulated caller: it streams the speech file in real time (100 ms appends,
paced by the clock) and keeps sending silence afterwards, as a microphone would; the server's
VAD ends the turn (silence_duration_ms 2000, so the file's 1.6 s pause does not split it) and
answers in speech. Measured per session, on the client's clock:

* latency: from receiving ``input_audio_buffer.speech_stopped`` to the first audio delta;
* stall: how long a player that starts at the first delta and plays every delta back to back
  would have to pause, waiting for audio (0 when every delta arrives before it is needed).
  Output keeps up with real time when no session stalls more than `STALL_LIMIT`.

Every level of concurrency runs twice: streaming (audio deltas as the vocoder produces them)
and non-streaming (session ``stream_audio: false``: the reply's tokens are generated, then the
whole reply is synthesised in one piece and sent). Levels go up until streaming output no
longer keeps up; the largest level that kept up is reported.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from service.audio.resample import resample
from service.bench.report import load_average, machine_description, percentile

SECTION = "bench-realtime"
RATE = 24000
CHUNK_SECONDS = 0.1
SILENCE_MS = 2000
STALL_LIMIT = 0.25  # seconds of playback pause still counted as keeping up
SESSION_TIMEOUT = 240.0

Progress = Callable[[str], None]


@dataclass
class SessionResult:
    status: str = "no response"
    latency: float | None = None  # speech_stopped -> first audio delta
    audio_seconds: float = 0.0
    stall: float = 0.0
    error: str | None = None


@dataclass
class LevelResult:
    sessions: int
    streaming: bool
    results: list[SessionResult]
    wall: float

    @property
    def completed(self) -> list[SessionResult]:
        return [r for r in self.results if r.status == "completed" and r.latency is not None]

    @property
    def latencies(self) -> list[float]:
        return [r.latency for r in self.completed if r.latency is not None]

    @property
    def worst_stall(self) -> float:
        return max((r.stall for r in self.completed), default=float("inf"))

    @property
    def keeps_up(self) -> bool:
        return len(self.completed) == self.sessions and self.worst_stall <= STALL_LIMIT


@dataclass
class Report:
    url: str
    target: str  # how the gateway was run, for the report
    audio: Path
    audio_seconds: float
    max_tokens: int
    levels: list[LevelResult] = field(default_factory=list)
    load_before: float | None = None
    load_after: float | None = None

    def largest_real_time(self) -> int | None:
        kept = [level.sessions for level in self.levels if level.streaming and level.keeps_up]
        return max(kept) if kept else None


def speech_pcm(path: Path) -> tuple[bytes, float]:
    wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = wave.mean(axis=1).astype(np.float32)
    if rate != RATE:
        mono = resample(mono, rate, RATE)
    pcm = (np.clip(mono, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    return pcm, len(mono) / RATE


def stall_of(arrivals: list[tuple[float, float]]) -> float:
    """Longest wait of a player that starts at the first delta; arrivals = (time, seconds)."""
    if not arrivals:
        return 0.0
    start = arrivals[0][0]
    queued = 0.0  # audio seconds scheduled before each delta
    paused = 0.0
    for arrival, seconds in arrivals:
        wait = arrival - (start + queued + paused)
        paused += max(0.0, wait)
        queued += seconds
    return paused


async def run_session(url: str, pcm: bytes, *, streaming: bool, max_tokens: int) -> SessionResult:
    result = SessionResult()
    ws_url = url.replace("http://", "ws://").replace("https://", "wss://") + "/v1/realtime"
    async with connect(ws_url, max_size=None, open_timeout=60) as ws:
        await ws.recv()  # session.created
        update = {
            "audio": {
                "input": {
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": SILENCE_MS}
                }
            },
            "max_output_tokens": max_tokens,
            "stream_audio": streaming,
        }
        await ws.send(json.dumps({"type": "session.update", "session": update}))
        done = asyncio.Event()
        reader = asyncio.create_task(_read(ws, result, done))
        try:
            await _talk(ws, pcm, done)
            await asyncio.wait_for(reader, SESSION_TIMEOUT)
        finally:
            reader.cancel()
    return result


async def _talk(ws: Any, pcm: bytes, done: asyncio.Event) -> None:
    """The file, then silence until the reply is done; paced in real time."""
    step = int(CHUNK_SECONDS * RATE) * 2
    silence = bytes(step)
    start = time.perf_counter()
    index = 0
    deadline = start + SESSION_TIMEOUT
    while not done.is_set() and time.perf_counter() < deadline:
        offset = index * step
        piece = pcm[offset : offset + step] if offset < len(pcm) else silence
        await ws.send(
            json.dumps(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(piece).decode()}
            )
        )
        index += 1
        await asyncio.sleep(max(0.0, start + index * CHUNK_SECONDS - time.perf_counter()))


async def _read(ws: Any, result: SessionResult, done: asyncio.Event) -> None:
    stopped_at: float | None = None
    arrivals: list[tuple[float, float]] = []
    try:
        async for frame in ws:
            now = time.perf_counter()
            event = json.loads(frame)
            kind = event["type"]
            if kind == "input_audio_buffer.speech_stopped" and stopped_at is None:
                stopped_at = now
            elif kind in ("response.output_audio.delta", "response.audio.delta"):
                seconds = len(base64.b64decode(event["delta"])) / 2 / RATE
                arrivals.append((now, seconds))
            elif kind == "error":
                result.error = event["error"]["message"]
            elif kind == "response.done":
                result.status = event["response"]["status"]
                break
    finally:
        done.set()
    if stopped_at is not None and arrivals:
        result.latency = arrivals[0][0] - stopped_at
    result.audio_seconds = sum(seconds for _, seconds in arrivals)
    result.stall = stall_of(arrivals)


async def run_level(
    url: str, pcm: bytes, sessions: int, *, streaming: bool, max_tokens: int
) -> LevelResult:
    started = time.perf_counter()

    async def one(index: int) -> SessionResult:
        # Callers do not all start on the same millisecond.
        await asyncio.sleep(index * 0.05)
        try:
            return await run_session(url, pcm, streaming=streaming, max_tokens=max_tokens)
        except (OSError, TimeoutError, asyncio.TimeoutError, WebSocketException) as error:
            return SessionResult(status="failed", error=repr(error))

    results = await asyncio.gather(*(one(index) for index in range(sessions)))
    return LevelResult(sessions, streaming, list(results), time.perf_counter() - started)


async def run_benchmark(
    url: str,
    audio: Path,
    levels: list[int],
    *,
    max_tokens: int,
    time_budget: float,
    progress: Progress,
    target: str = "",
) -> Report:
    pcm, seconds = speech_pcm(audio)
    report = Report(url, target, audio, seconds, max_tokens, load_before=load_average())
    # The first turn of a fresh stack pays one-time costs (first vocoder stream, first prompt
    # shapes in vLLM); it would be counted against the first level only.
    progress("warm-up session (not counted)")
    await run_level(url, pcm, 1, streaming=True, max_tokens=max_tokens)
    started = time.perf_counter()
    for sessions in levels:
        if time.perf_counter() - started > time_budget:
            progress(f"time budget of {time_budget:.0f} s spent; stopping before {sessions}")
            break
        for streaming in (True, False):
            level = await run_level(url, pcm, sessions, streaming=streaming, max_tokens=max_tokens)
            report.levels.append(level)
            progress(describe(level))
        streamed = report.levels[-2]
        if not streamed.keeps_up:
            break
    report.load_after = load_average()
    return report


def describe(level: LevelResult) -> str:
    mode = "streaming" if level.streaming else "non-streaming"
    latencies = level.latencies
    p50 = f"{percentile(latencies, 50):.2f}" if latencies else "-"
    return (
        f"{level.sessions} session(s), {mode}: {len(level.completed)}/{level.sessions} replied, "
        f"first audio p50 {p50} s, worst stall {level.worst_stall:.2f} s"
    )


# ---- the report ----------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "–" if value is None or value == float("inf") else f"{value:.2f}"


def markdown_table(report: Report) -> str:
    lines = [
        "| Sessions | Audio out | Replies | First audio p50 (s) | p95 (s) | Reply audio (s) "
        "| Worst stall (s) | Keeps up with real time |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for level in report.levels:
        latencies = level.latencies
        audio = [r.audio_seconds for r in level.completed]
        lines.append(
            "| {n} | {mode} | {ok}/{n} | {p50} | {p95} | {audio} | {stall} | {keeps} |".format(
                n=level.sessions,
                mode="streamed" if level.streaming else "whole reply, then sent",
                ok=len(level.completed),
                p50=_seconds(percentile(latencies, 50) if latencies else None),
                p95=_seconds(percentile(latencies, 95) if latencies else None),
                audio=_seconds(float(np.mean(audio)) if audio else None),
                stall=_seconds(level.worst_stall),
                keeps="yes" if level.keeps_up else "no",
            )
        )
    return "\n".join(lines) + "\n"


def markdown_section(report: Report, command: str) -> str:
    largest = report.largest_real_time()
    verdict = (
        f"**{largest} concurrent session(s)** is the largest level whose streamed replies kept up "
        "with real time on this machine."
        if largest
        else "No level kept up with real time on this machine."
    )
    loads = f"{_seconds(report.load_before)} at the start, {_seconds(report.load_after)} at the end"
    return "\n".join(
        [
            "## Realtime voice sessions (`bench-realtime`)",
            "",
            f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
            "",
            f"- Machine: {machine_description()}",
            f"- Load average (1 min): {loads} (other jobs on the machine inflate every figure)",
            f"- Gateway: {report.target}",
            f"- Each session streams `{report.audio.name}` ({report.audio_seconds:.1f} s) in real "
            f"time as 100 ms appends, then silence; server VAD ends the turn "
            f"(silence_duration_ms {SILENCE_MS}); the reply is speech, "
            f"max_output_tokens {report.max_tokens}. One warm-up session runs first and is "
            "not counted.",
            "- First audio: from the client receiving `speech_stopped` to its first audio delta. "
            "Stall: how long a player starting at the first delta would pause waiting for audio; "
            f"a level keeps up when every session replied and no stall exceeds {STALL_LIMIT} s.",
            "- Whole reply, then sent: session `stream_audio: false`, i.e. generate all tokens, "
            "synthesise the reply in one piece, then send it (the non-streaming baseline).",
            "",
            markdown_table(report).rstrip(),
            "",
            verdict,
        ]
    )
