"""Realtime benchmark: concurrent voice sessions over WS /v1/realtime, streaming vs. not.

Each session is one simulated caller: it streams the speech file in real time (100 ms appends,
paced by the clock) and keeps sending silence afterwards, as a microphone would; the server's
VAD ends the turn (silence_duration_ms 2000, so the file's 1.6 s pause does not split it) and
answers in speech. Measured per session, on the client's clock:

* latency: from receiving ``input_audio_buffer.speech_stopped`` to the first audio delta;
* stall: how long a player that starts at the first delta and plays every delta back to back
  would have to pause, waiting for audio (0 when every delta arrives before it is needed).
  Output keeps up with real time when no session stalls more than `STALL_LIMIT`.

Every level of concurrency runs twice: streaming (the gateway's realtime reply, audio deltas as
the vocoder produces them) and the non-streaming baseline, built by this client from the public
API the way a server without streaming would answer: the same realtime session detects the
turn (``create_response: false``), then the reply is generated whole (POST /v1/generate with
the prompt the realtime session would build, speech tokens only, ``end_of_turn``) and vocoded
whole (POST /v1/speech/detokenize), and its audio counts as arriving at once. The user's speech
is tokenized once before the level, as the gateway encodes a turn while the user pauses.
Levels go up until streaming output no longer keeps up; the largest level that kept up is
reported.
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

import httpx
import numpy as np
import soundfile
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from service.audio.pcm import float_to_pcm16
from service.audio.resample import resample
from service.bench.report import load_average, machine_description, percentile, stall_of
from service.gateway.realtime.config import DEFAULT_TEMPERATURE, TOP_P
from service.lm.prompt import SpeechInput, TurnEnd, build_prompt

SECTION = "bench-realtime"
RATE = 24000
CHUNK_SECONDS = 0.1
SILENCE_MS = 2000
STALL_LIMIT = 0.25  # seconds of playback pause still counted as keeping up
SESSION_TIMEOUT = 240.0
FINISHED = ("completed", "incomplete")

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
        """Sessions that got their whole reply (ended by itself, or at max_output_tokens)."""
        return [r for r in self.results if r.status in FINISHED and r.latency is not None]

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
    label: str = ""  # the stack configuration, when several are compared in one run

    def largest_real_time(self) -> int | None:
        kept = [level.sessions for level in self.levels if level.streaming and level.keeps_up]
        return max(kept) if kept else None


def speech_pcm(path: Path) -> tuple[bytes, float]:
    wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = wave.mean(axis=1).astype(np.float32)
    if rate != RATE:
        mono = resample(mono, rate, RATE)
    return float_to_pcm16(mono), len(mono) / RATE


@dataclass(frozen=True)
class Caller:
    """What every session of a run says: the speech, and its tokens for the baseline.

    Every request names no model, so all of them get the gateway's default, as the realtime
    session (opened without ``?model=``) does.
    """

    pcm: bytes
    tokens: str
    max_tokens: int


async def run_session(url: str, caller: Caller, *, streaming: bool) -> SessionResult:
    result = SessionResult()
    ws_url = url.replace("http://", "ws://").replace("https://", "wss://") + "/v1/realtime"
    async with connect(ws_url, max_size=None, open_timeout=60) as ws:
        await ws.recv()  # session.created
        turns = {"type": "server_vad", "silence_duration_ms": SILENCE_MS}
        if not streaming:
            turns["create_response"] = False  # the baseline answers the turn itself
        update = {
            "audio": {"input": {"turn_detection": turns}},
            "max_output_tokens": caller.max_tokens,
        }
        await ws.send(json.dumps({"type": "session.update", "session": update}))
        done = asyncio.Event()
        if streaming:
            reader = asyncio.create_task(_read(ws, result, done))
        else:
            reader = asyncio.create_task(_read_baseline(ws, url, caller, result, done))
        try:
            await _talk(ws, caller.pcm, done)
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
    _timed(result, stopped_at, arrivals)


def _timed(
    result: SessionResult, stopped_at: float | None, arrivals: list[tuple[float, float]]
) -> None:
    if stopped_at is not None and arrivals:
        result.latency = arrivals[0][0] - stopped_at
    result.audio_seconds = sum(seconds for _, seconds in arrivals)
    result.stall = stall_of(arrivals)


async def _read_baseline(
    ws: Any, url: str, caller: Caller, result: SessionResult, done: asyncio.Event
) -> None:
    """The non-streaming baseline: at the end of the turn, generate whole, then vocode whole."""
    stopped_at: float | None = None
    arrivals: list[tuple[float, float]] = []
    try:
        async for frame in ws:
            event = json.loads(frame)
            if event["type"] == "error":
                result.error = event["error"]["message"]
            if event["type"] != "input_audio_buffer.speech_stopped":
                continue
            stopped_at = time.perf_counter()
            async with httpx.AsyncClient(base_url=url, timeout=SESSION_TIMEOUT) as http:
                result.status, pcm = await _whole_reply(http, caller)
            arrivals.append((time.perf_counter(), len(pcm) / 2 / RATE))
            break
    finally:
        done.set()
    _timed(result, stopped_at, arrivals)


async def _whole_reply(http: httpx.AsyncClient, caller: Caller) -> tuple[str, bytes]:
    # The prompt and sampling of a realtime reply to one spoken turn (service/gateway/realtime/).
    prompt = build_prompt([SpeechInput(caller.tokens), TurnEnd()], "speech")
    generated = await http.post(
        "/v1/generate",
        json={
            "prompt": prompt,
            "output_modality": "speech",
            "max_tokens": caller.max_tokens,
            "temperature": DEFAULT_TEMPERATURE,
            "top_p": TOP_P,
            "end_of_turn": True,
            "audio": False,
        },
    )
    generated.raise_for_status()
    reply = generated.json()
    tokens = "".join(s["tokens"] for s in reply["segments"] if s["type"] == "speech")
    status = "incomplete" if reply["finish_reason"] == "length" else "completed"
    if "[Hu" not in tokens:
        return status, b""
    audio = await http.post(
        "/v1/speech/detokenize",
        json={"tokens": tokens, "response_format": "pcm", "sample_rate": RATE},
    )
    audio.raise_for_status()
    return status, audio.content


async def run_level(url: str, caller: Caller, sessions: int, *, streaming: bool) -> LevelResult:
    started = time.perf_counter()

    async def one(index: int) -> SessionResult:
        # Callers do not all start on the same millisecond.
        await asyncio.sleep(index * 0.05)
        try:
            return await run_session(url, caller, streaming=streaming)
        except (
            OSError, TimeoutError, asyncio.TimeoutError, WebSocketException, httpx.HTTPError
        ) as error:  # fmt: skip
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
    label: str = "",
    baseline: bool = True,
) -> Report:
    """Levels of concurrent sessions on one gateway; `baseline` adds the whole-reply runs."""
    pcm, seconds = speech_pcm(audio)
    caller = Caller(pcm, await _tokens(url, audio), max_tokens)
    report = Report(url, target, audio, seconds, max_tokens, load_before=load_average())
    report.label = label
    # The first turn of a fresh stack pays one-time costs (first vocoder stream, first prompt
    # shapes in vLLM); it would be counted against the first level only.
    progress("warm-up session (not counted)")
    await run_level(url, caller, 1, streaming=True)
    started = time.perf_counter()
    for sessions in levels:
        if time.perf_counter() - started > time_budget:
            progress(f"time budget of {time_budget:.0f} s spent; stopping before {sessions}")
            break
        for streaming in (True, False) if baseline else (True,):
            level = await run_level(url, caller, sessions, streaming=streaming)
            report.levels.append(level)
            progress(f"{label}: {describe(level)}" if label else describe(level))
        streamed = next(level for level in reversed(report.levels) if level.streaming)
        if not streamed.keeps_up:
            break
    report.load_after = load_average()
    return report


async def _tokens(url: str, audio: Path) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=SESSION_TIMEOUT) as http:
        response = await http.post("/v1/speech/tokenize", files={"file": audio.read_bytes()})
    response.raise_for_status()
    return response.json()["tokens"]


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


def markdown_table(*reports: Report) -> str:
    """One table; a first column names each report's stack configuration when they have one."""
    labelled = any(report.label for report in reports)
    lines = [
        ("| Stack " if labelled else "")
        + "| Sessions | Audio out | Replies | First audio p50 (s) | p95 (s) | Reply audio (s) "
        "| Worst stall (s) | Keeps up with real time |",
        ("|---" if labelled else "") + "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    rows = [(report.label, level) for report in reports for level in report.levels]
    for label, level in rows:
        latencies = level.latencies
        audio = [r.audio_seconds for r in level.completed]
        lines.append(
            (f"| {label} " if labelled else "")
            + "| {n} | {mode} | {ok}/{n} | {p50} | {p95} | {audio} | {stall} | {keeps} |".format(
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


def _verdict(report: Report) -> str:
    largest = report.largest_real_time()
    stack = f" ({report.label})" if report.label else ""
    if not largest:
        return f"No level kept up with real time on this machine{stack}."
    return (
        f"**{largest} concurrent session(s)**{stack} is the largest level whose streamed replies "
        "kept up with real time on this machine."
    )


def markdown_section(command: str, *reports: Report) -> str:
    report, last = reports[0], reports[-1]
    loads = f"{_seconds(report.load_before)} at the start, {_seconds(last.load_after)} at the end"
    targets = [f"{r.label}: {r.target}" if r.label else r.target for r in reports]
    return "\n".join(
        [
            "## Realtime voice sessions (`bench realtime`)",
            "",
            f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
            "",
            f"- Machine: {machine_description()}",
            f"- Load average (1 min): {loads} (other jobs on the machine inflate every figure)",
            f"- Gateway: {'; '.join(targets)}",
            f"- Each session streams `{report.audio.name}` ({report.audio_seconds:.1f} s) in real "
            f"time as 100 ms appends, then silence; server VAD ends the turn "
            f"(silence_duration_ms {SILENCE_MS}); the reply is speech, "
            f"max_output_tokens {report.max_tokens}. One warm-up session runs first and is "
            "not counted.",
            "- First audio: from the client receiving `speech_stopped` to its first audio delta. "
            "Stall: how long a player starting at the first delta would pause waiting for audio; "
            f"a level keeps up when every session replied and no stall exceeds {STALL_LIMIT} s.",
            "- Whole reply, then sent (the non-streaming baseline, built by the client): the "
            "session detects the turn, then the reply is generated whole (`/v1/generate`, same "
            "prompt and sampling, tokens only) and vocoded whole (`/v1/speech/detokenize`).",
            "",
            markdown_table(*reports).rstrip(),
            "",
            *[_verdict(r) for r in reports],
        ]
    )
