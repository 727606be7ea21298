"""Realtime benchmark: concurrent voice sessions over WS /v1/realtime, streaming vs. not.

Each session is one simulated caller: it streams the speech file in real time (100 ms appends,
paced by the clock) and keeps sending silence afterwards, as a microphone would; the server's
VAD ends the turn (silence_duration_ms 2000, so the file's 1.6 s pause does not split it) and
answers in speech. A push-to-talk caller (`push_to_talk`) turns the VAD off
(``turn_detection: null``), stops sending when the file ends and commits the turn itself
(``input_audio_buffer.commit``, then ``response.create``): nothing tells the server beforehand
that the turn is about to end, so all of its encoding happens after the commit. Measured per
session, on the client's clock:

* latency: from receiving ``input_audio_buffer.speech_stopped`` (push to talk: from sending
  the commit) to the first audio delta;
* stall: how long a player that starts at the first delta and plays every delta back to back
  would have to pause, waiting for audio (0 when every delta arrives before it is needed).
  Output keeps up with real time when no session stalls more than `STALL_LIMIT`;
* stream speed: the audio seconds that came after the first delta per wall second from the
  first delta to the last (1 = exactly as fast as playback; below 1 a player runs dry).

Per streamed level, from the gateway's /metrics: where the first audio time went, as the mean of
each phase of spiritlm_realtime_first_audio_phase_seconds (encode, prompt, lm, vocoder, send;
service/gateway/realtime/response.py) over the level's replies.

Per level, on the gateway's machine (when the gateway runs on this one): the peak resident
memory of the speech worker(s) and of the gateway, from /proc (`PeakRss`).

Every level of concurrency runs twice: streaming (the gateway's realtime reply, audio deltas as
the vocoder produces them) and the non-streaming baseline, built by this client from the public
API the way a server without streaming would answer: the same realtime session detects the
turn (``create_response: false``), then the reply is generated whole (POST /v1/generate with
the prompt the realtime session would build, speech tokens only, ``end_of_turn``) and vocoded
whole (POST /v1/speech/detokenize), and its audio counts as arriving at once. The user's speech
is tokenized once before the level, as the gateway encodes a turn while the user pauses; a
push-to-talk baseline clears the session's input instead of committing it and tokenizes the
turn then (POST /v1/speech/tokenize), as a server must when nothing came before the commit.
Levels go up until streaming output no longer keeps up; the largest level that kept up is
reported.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil
import soundfile
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from service.audio.pcm import float_to_pcm16, pcm16_wav
from service.audio.resample import resample
from service.bench.processes import listening_pid
from service.bench.report import load_average, machine_description, percentile, stall_of
from service.gateway.realtime.config import DEFAULT_TEMPERATURE, TOP_P
from service.gateway.realtime.response import FIRST_AUDIO_PHASES
from service.lm.prompt import SpeechInput, TurnEnd, build_prompt

SECTION = "bench-realtime"
RATE = 24000
CHUNK_SECONDS = 0.1
SILENCE_MS = 2000
STALL_LIMIT = 0.25  # seconds of playback pause still counted as keeping up
SESSION_TIMEOUT = 240.0
RSS_INTERVAL = 0.1  # seconds between RSS samples, where the kernel's peak cannot be reset
LOOPBACK = ("127.0.0.1", "localhost", "::1")
FINISHED = ("completed", "incomplete")

Progress = Callable[[str], None]


@dataclass
class SessionResult:
    status: str = "no response"
    latency: float | None = None  # end of the turn (speech_stopped, or the commit) -> first audio
    audio_seconds: float = 0.0
    stall: float = 0.0
    speed: float | None = None  # audio seconds per wall second after the first delta
    error: str | None = None


@dataclass
class LevelResult:
    sessions: int
    streaming: bool
    results: list[SessionResult]
    wall: float
    speech_rss: int | None = None  # peak bytes of the (largest) speech worker during the level
    gateway_rss: int | None = None  # peak bytes of the gateway during the level
    phases: dict[str, float] = field(default_factory=dict)  # mean s per first-audio phase

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
    def slowest_stream(self) -> float | None:
        """The lowest stream speed of the level's replies (None: no reply had two deltas)."""
        speeds = [r.speed for r in self.completed if r.speed is not None]
        return min(speeds) if speeds else None

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
    silence_ms: int = SILENCE_MS  # the server VAD's silence_duration_ms
    push_to_talk: bool = False  # callers commit their turns; no VAD
    speech_cores: int | None = None  # CPU cores the speech worker may run on (its affinity)

    def largest_real_time(self) -> int | None:
        kept = [level.sessions for level in self.levels if level.streaming and level.keeps_up]
        return max(kept) if kept else None


# ---- memory of the stack --------------------------------------------------------------------


def _status_kib(pid: int, field_name: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), in bytes; None if unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    return None


class PeakRss:
    """Peak resident memory of some processes over one stretch of time (a level).

    `start` resets the kernel's high-water mark (VmHWM) by writing 5 to /proc/PID/clear_refs,
    which only the owner of the process may do and which changes nothing else; the peak is then
    exact. Where that is refused (another user's process), the peak is the largest of the RSS
    samples that `sample` takes every `RSS_INTERVAL` while the level runs.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self._exact: set[int] = set()
        self._sampled: dict[int, int] = {}

    def start(self) -> None:
        self._exact.clear()
        self._sampled.clear()
        for pid in self.pids:
            with contextlib.suppress(OSError):
                Path(f"/proc/{pid}/clear_refs").write_text("5", encoding="ascii")
                self._exact.add(pid)
        self.sample()

    def sample(self) -> None:
        for pid in self.pids:
            rss = _status_kib(pid, "VmRSS")
            if rss is not None:
                self._sampled[pid] = max(rss, self._sampled.get(pid, 0))

    def peak(self) -> int | None:
        """The largest peak of the processes since `start` (bytes), None if none was read."""
        self.sample()
        peaks = []
        for pid in self.pids:
            hwm = _status_kib(pid, "VmHWM") if pid in self._exact else None
            sampled = self._sampled.get(pid)
            values = [value for value in (hwm, sampled) if value is not None]
            if values:
                peaks.append(max(values))
        return max(peaks) if peaks else None


@dataclass
class StackMemory:
    """The gateway's and its speech workers' peaks, for a gateway running on this machine."""

    gateway: PeakRss
    speech: PeakRss

    def start(self) -> None:
        self.gateway.start()
        self.speech.start()

    def sample(self) -> None:
        self.gateway.sample()
        self.speech.sample()


async def stack_memory(url: str) -> StackMemory | None:
    """The processes behind a loopback gateway: its own, and its speech workers' (from /ready).

    None for a gateway on another machine, where the bench cannot see the processes.
    """
    if urlsplit(url).hostname not in LOOPBACK:
        return None
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            workers = (await http.get("/ready")).json().get("speech_workers", {})
    except (httpx.HTTPError, ValueError):
        workers = {}
    # /ready names workers by URL to callers it authenticates, by index to others.
    urls = [
        name for name in workers if name.startswith("http") and urlsplit(name).hostname in LOOPBACK
    ]
    pids = await asyncio.to_thread(lambda: [listening_pid(u) for u in [url, *urls]])
    gateway, speech = pids[0], [pid for pid in pids[1:] if pid is not None]
    return StackMemory(PeakRss([gateway] if gateway else []), PeakRss(speech))


def speech_cores(memory: StackMemory | None) -> int | None:
    """How many CPU cores the (first) speech worker may run on."""
    if memory is None or not memory.speech.pids:
        return None
    try:
        return len(psutil.Process(memory.speech.pids[0]).cpu_affinity() or [])
    except (psutil.Error, AttributeError):  # AttributeError: no affinity on this platform
        return None


def speech_pcm(path: Path) -> tuple[bytes, float]:
    wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = wave.mean(axis=1).astype(np.float32)
    if rate != RATE:
        mono = resample(mono, rate, RATE)
    return float_to_pcm16(mono), len(mono) / RATE


@dataclass(frozen=True)
class Caller:
    """What every session of a run says: the speech, and its tokens for the baseline (empty
    for push-to-talk callers, whose baseline tokenizes each turn after it ends).

    Every request names no model, so all of them get the gateway's default, as the realtime
    session (opened without ``?model=``) does.
    """

    pcm: bytes
    tokens: str
    max_tokens: int
    silence_ms: int = SILENCE_MS  # the server VAD's silence_duration_ms
    push_to_talk: bool = False  # the caller commits its turn when the file ends; no VAD


class _Turn:
    """When the caller's turn ended, on the client's clock: when `speech_stopped` arrived, or
    when a push-to-talk caller sent its commit (the baseline's caller: its clear)."""

    def __init__(self) -> None:
        self.at: float | None = None

    def end(self) -> None:
        if self.at is None:
            self.at = time.perf_counter()


async def run_session(url: str, caller: Caller, *, streaming: bool) -> SessionResult:
    result = SessionResult()
    turn = _Turn()
    ws_url = url.replace("http://", "ws://").replace("https://", "wss://") + "/v1/realtime"
    async with connect(ws_url, max_size=None, open_timeout=60) as ws:
        await ws.recv()  # session.created
        turns: dict[str, Any] | None = None
        if not caller.push_to_talk:
            turns = {"type": "server_vad", "silence_duration_ms": caller.silence_ms}
            if not streaming:
                turns["create_response"] = False  # the baseline answers the turn itself
        update = {
            "audio": {"input": {"turn_detection": turns}},
            "max_output_tokens": caller.max_tokens,
        }
        await ws.send(json.dumps({"type": "session.update", "session": update}))
        done = asyncio.Event()
        if streaming:
            reader = asyncio.create_task(_read(ws, result, done, turn))
        else:
            reader = asyncio.create_task(_read_baseline(ws, url, caller, result, done, turn))
        try:
            await _talk(ws, caller, done, turn, streaming=streaming)
            await asyncio.wait_for(reader, SESSION_TIMEOUT)
        finally:
            reader.cancel()
    return result


async def _talk(
    ws: Any, caller: Caller, done: asyncio.Event, turn: _Turn, *, streaming: bool
) -> None:
    """The file, paced in real time; then silence until the reply is done, or for a
    push-to-talk caller the end of its turn: the commit and the request for a reply."""
    pcm = caller.pcm
    step = int(CHUNK_SECONDS * RATE) * 2
    silence = bytes(step)
    start = time.perf_counter()
    index = 0
    deadline = start + SESSION_TIMEOUT
    while not done.is_set() and time.perf_counter() < deadline:
        offset = index * step
        if caller.push_to_talk and offset >= len(pcm):
            if streaming:
                await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                turn.end()
                await ws.send(json.dumps({"type": "response.create"}))
            else:  # the baseline answers the turn itself: a commit would encode it twice
                await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
                turn.end()
            return
        piece = pcm[offset : offset + step] if offset < len(pcm) else silence
        await ws.send(
            json.dumps(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(piece).decode()}
            )
        )
        index += 1
        await asyncio.sleep(max(0.0, start + index * CHUNK_SECONDS - time.perf_counter()))


async def _read(ws: Any, result: SessionResult, done: asyncio.Event, turn: _Turn) -> None:
    arrivals: list[tuple[float, float]] = []
    try:
        async for frame in ws:
            now = time.perf_counter()
            event = json.loads(frame)
            kind = event["type"]
            if kind == "input_audio_buffer.speech_stopped":
                turn.end()
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
    _timed(result, turn.at, arrivals)


def _timed(
    result: SessionResult, ended_at: float | None, arrivals: list[tuple[float, float]]
) -> None:
    if ended_at is not None and arrivals:
        result.latency = arrivals[0][0] - ended_at
    result.audio_seconds = sum(seconds for _, seconds in arrivals)
    result.stall = stall_of(arrivals)
    result.speed = stream_speed(arrivals)


def stream_speed(arrivals: list[tuple[float, float]]) -> float | None:
    """Audio seconds after the first delta per wall second from the first delta to the last.

    1.0 is exactly playback speed. None with fewer than two deltas (a whole reply sent at once
    has no rate of its own).
    """
    if len(arrivals) < 2 or arrivals[-1][0] <= arrivals[0][0]:
        return None
    later = sum(seconds for _, seconds in arrivals[1:])
    return later / (arrivals[-1][0] - arrivals[0][0])


async def _read_baseline(
    ws: Any, url: str, caller: Caller, result: SessionResult, done: asyncio.Event, turn: _Turn
) -> None:
    """The non-streaming baseline: at the end of the turn, generate whole, then vocode whole.

    The turn ends at `speech_stopped`, or when a push-to-talk caller clears its input (`_talk`,
    which starts the clock); the server's `cleared` confirms that the session took it."""
    arrivals: list[tuple[float, float]] = []
    end_event = "input_audio_buffer.speech_stopped"
    if caller.push_to_talk:
        end_event = "input_audio_buffer.cleared"
    try:
        if await _until_event(ws, end_event, result):
            turn.end()
            async with httpx.AsyncClient(base_url=url, timeout=SESSION_TIMEOUT) as http:
                result.status, pcm = await _whole_reply(http, caller)
            arrivals.append((time.perf_counter(), len(pcm) / 2 / RATE))
    finally:
        done.set()
    _timed(result, turn.at, arrivals)


async def _until_event(ws: Any, kind: str, result: SessionResult) -> bool:
    """Whether an event of `kind` came before the session closed; `error` events on the way are
    kept in `result`."""
    async for frame in ws:
        event = json.loads(frame)
        if event["type"] == "error":
            result.error = event["error"]["message"]
        if event["type"] == kind:
            return True
    return False


async def _whole_reply(http: httpx.AsyncClient, caller: Caller) -> tuple[str, bytes]:
    # The prompt and sampling of a realtime reply to one spoken turn (service/gateway/realtime/).
    tokens = caller.tokens
    if caller.push_to_talk:  # nothing was encoded before the commit
        tokens = await _tokens_of(http, pcm16_wav(caller.pcm, RATE))
    prompt = build_prompt([SpeechInput(tokens), TurnEnd()], "speech")
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


async def run_level(
    url: str,
    caller: Caller,
    sessions: int,
    *,
    streaming: bool,
    memory: StackMemory | None = None,
) -> LevelResult:
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

    phases_before = await phase_totals(url) if streaming else {}
    sampler = None
    if memory is not None:
        memory.start()
        sampler = asyncio.create_task(_sample_every(memory, RSS_INTERVAL))
    try:
        results = await asyncio.gather(*(one(index) for index in range(sessions)))
    finally:
        if sampler is not None:
            sampler.cancel()
    level = LevelResult(sessions, streaming, list(results), time.perf_counter() - started)
    if streaming:
        level.phases = mean_phases(phases_before, await phase_totals(url))
    if memory is not None:
        level.speech_rss, level.gateway_rss = memory.speech.peak(), memory.gateway.peak()
    return level


PHASE_METRIC = "spiritlm_realtime_first_audio_phase_seconds"


async def phase_totals(url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the gateway's first-audio phases by phase; {} when /metrics is closed."""
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            response = await http.get("/metrics")
    except httpx.HTTPError:
        return {}
    if response.status_code != 200:
        return {}
    totals: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name != PHASE_METRIC:
            continue
        for sample in family.samples:
            index = {f"{PHASE_METRIC}_sum": 0, f"{PHASE_METRIC}_count": 1}.get(sample.name)
            if index is not None:
                totals.setdefault(sample.labels["phase"], [0.0, 0.0])[index] = sample.value
    return {phase: (pair[0], pair[1]) for phase, pair in totals.items()}


def mean_phases(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Mean seconds per phase of the replies counted between two `phase_totals`."""
    means = {}
    for phase in FIRST_AUDIO_PHASES:
        total, count = after.get(phase, (0.0, 0.0))
        total_before, count_before = before.get(phase, (0.0, 0.0))
        if count > count_before:
            means[phase] = (total - total_before) / (count - count_before)
    return means


async def _sample_every(memory: StackMemory, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        memory.sample()


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
    silence_ms: int = SILENCE_MS,
    push_to_talk: bool = False,
) -> Report:
    """Levels of concurrent sessions on one gateway; `baseline` adds the whole-reply runs;
    `silence_ms`: the silence that ends a turn (server VAD's silence_duration_ms);
    `push_to_talk`: callers commit their turns themselves instead (no VAD)."""
    pcm, seconds = speech_pcm(audio)
    # A push-to-talk baseline tokenizes each turn after its end (`_whole_reply`).
    tokens = "" if push_to_talk else await _tokens(url, audio)
    caller = Caller(pcm, tokens, max_tokens, silence_ms, push_to_talk)
    report = Report(url, target, audio, seconds, max_tokens, load_before=load_average())
    report.label = label
    report.silence_ms = silence_ms
    report.push_to_talk = push_to_talk
    memory = await stack_memory(url)
    report.speech_cores = speech_cores(memory)
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
            level = await run_level(url, caller, sessions, streaming=streaming, memory=memory)
            report.levels.append(level)
            progress(f"{label}: {describe(level)}" if label else describe(level))
        streamed = next(level for level in reversed(report.levels) if level.streaming)
        if not streamed.keeps_up:
            break
    report.load_after = load_average()
    return report


async def _tokens(url: str, audio: Path) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=SESSION_TIMEOUT) as http:
        return await _tokens_of(http, audio.read_bytes())


async def _tokens_of(http: httpx.AsyncClient, audio_file: bytes) -> str:
    response = await http.post("/v1/speech/tokenize", files={"file": audio_file})
    response.raise_for_status()
    return response.json()["tokens"]


def describe(level: LevelResult) -> str:
    mode = "streaming" if level.streaming else "non-streaming"
    latencies = level.latencies
    p50 = f"{percentile(latencies, 50):.2f}" if latencies else "-"
    phases = ", ".join(f"{phase} {mean:.2f}" for phase, mean in level.phases.items())
    return (
        f"{level.sessions} session(s), {mode}: {len(level.completed)}/{level.sessions} replied, "
        f"first audio p50 {p50} s, worst stall {level.worst_stall:.2f} s"
        + (f" (mean s by phase: {phases})" if phases else "")
    )


# ---- the report ----------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "–" if value is None or value == float("inf") else f"{value:.2f}"


def _mib(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**20:.0f}"


# The table's columns; scripts/make_performance_report.py finds its plot's data by these names.
COLUMNS = (
    "Sessions", "Audio out", "Replies", "First audio p50 (s)", "p95 (s)", "Worst stall (s)",
    "Slowest stream (x real time)", "Reply audio (s)", "Speech worker peak RSS (MiB)",
    "Gateway peak RSS (MiB)", "Keeps up with real time",
)  # fmt: skip
ALIGN = ("---:", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---")


def markdown_table(*reports: Report) -> str:
    """One table; a first column names each report's stack configuration when they have one."""
    labelled = any(report.label for report in reports)
    header = (("Stack",) if labelled else ()) + COLUMNS
    align = (("---",) if labelled else ()) + ALIGN
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for report in reports:
        for level in report.levels:
            latencies = level.latencies
            audio = [r.audio_seconds for r in level.completed]
            cells = (
                str(level.sessions),
                "streamed" if level.streaming else "whole reply, then sent",
                f"{len(level.completed)}/{level.sessions}",
                _seconds(percentile(latencies, 50) if latencies else None),
                _seconds(percentile(latencies, 95) if latencies else None),
                _seconds(level.worst_stall),
                _seconds(level.slowest_stream),
                _seconds(float(np.mean(audio)) if audio else None),
                _mib(level.speech_rss),
                _mib(level.gateway_rss),
                "yes" if level.keeps_up else "no",
            )
            lines.append("| " + " | ".join(((report.label,) if labelled else ()) + cells) + " |")
    return "\n".join(lines) + "\n"


def phase_table(*reports: Report) -> str:
    """Mean first-audio seconds by phase for each streamed level ('' when no level has them)."""
    rows = [(report, level) for report in reports for level in report.levels if level.phases]
    if not rows:
        return ""
    labelled = any(report.label for report, _ in rows)
    header = (("Stack",) if labelled else ()) + ("Sessions",) + FIRST_AUDIO_PHASES
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(("---",) * labelled + ("---:",) * (len(header) - labelled)) + "|",
    ]
    for report, level in rows:
        cells = [str(level.sessions)] + [_seconds(level.phases.get(p)) for p in FIRST_AUDIO_PHASES]
        lines.append("| " + " | ".join(((report.label,) if labelled else ()) + tuple(cells)) + " |")
    return "\n".join(lines) + "\n"


def _verdict(report: Report) -> str:
    largest = report.largest_real_time()
    stack = f" ({report.label})" if report.label else ""
    if not largest:
        return f"No level kept up with real time on this machine{stack}."
    cores = report.speech_cores
    per_core = (
        f": {largest / cores:g} real-time session(s) per speech core (the speech worker may "
        f"run on {cores} core(s))"
        if cores
        else ""
    )
    return (
        f"**{largest} concurrent session(s)**{stack} is the largest level whose streamed replies "
        f"kept up with real time on this machine{per_core}."
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
            f"time as 100 ms appends, then {_turn_end(report)}; the reply is speech, "
            f"max_output_tokens {report.max_tokens}. One warm-up session runs first and is "
            "not counted.",
            f"- First audio: from the client {_turn_clock(report)} to its first audio delta. "
            "Stall: how long a player starting at the first delta would pause waiting for audio; "
            f"a level keeps up when every session replied and no stall exceeds {STALL_LIMIT} s.",
            "- Slowest stream: the per-stream real-time factor of the level's slowest reply, as "
            "audio seconds after its first delta per wall second from its first delta to its "
            "last (1 = as fast as playback; – when the reply came in one piece).",
            "- Peak RSS: the largest resident memory of the speech worker and of the gateway "
            "during the level (the kernel's high-water mark, reset when the level starts; – for "
            "a gateway on another machine).",
            "- Whole reply, then sent (the non-streaming baseline, built by the client): once "
            "the turn has ended, the reply is generated whole (`/v1/generate`, same "
            "prompt and sampling, tokens only) and vocoded whole (`/v1/speech/detokenize`).",
            "",
            markdown_table(*reports).rstrip(),
            "",
            *_phase_lines(*reports),
            *[_verdict(r) for r in reports],
        ]
    )


def _turn_end(report: Report) -> str:
    if report.push_to_talk:
        return (
            "commits its turn (push to talk: `turn_detection` null, `input_audio_buffer.commit` "
            "and `response.create`; the baseline clears the input instead and tokenizes the "
            "turn then)"
        )
    return f"silence; server VAD ends the turn (silence_duration_ms {report.silence_ms})"


def _turn_clock(report: Report) -> str:
    return "sending its commit" if report.push_to_talk else "receiving `speech_stopped`"


def _phase_lines(*reports: Report) -> list[str]:
    table = phase_table(*reports)
    if not table:
        return []
    return [
        "Where the streamed replies' first audio went (mean seconds per phase, from the "
        "gateway's `spiritlm_realtime_first_audio_phase_seconds`: the user's turns encoded, the "
        "prompt built, the first speech token, the first audio from the vocoder, its delta sent; "
        "on the gateway's clock, from the turn's commit):",
        "",
        table.rstrip(),
        "",
    ]
