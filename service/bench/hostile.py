"""Hostile probes: the attacks of docs/security.md's threat model, one at a time, against a stack.

Each attack is one small coroutine that plays a hostile client (a huge upload, a flood, a client
that never reads...) and says what the service answered: the status or event, and the message
of the refusal, which names the limit that was hit. Around each attack the bench watches the
stack from outside:

* `/health` of the gateway, polled every `health_interval` seconds from a thread: the slowest
  answer is reported (an event loop busy with request-sized work shows here);
* the RSS of the gateway, the speech worker and vLLM (its API server and engine processes
  together), sampled every `sample_interval` seconds from a thread: growth = peak during the
  attack (and the settling after it) minus the RSS just before it;
* whether every process of the stack is still alive afterwards.

An attack passes when it got no 5xx, no process died, no process grew by `max_rss_growth_mb` or
more, `/health` stayed under `max_health_seconds`, and the attack's own expectation held (a
worker port without the credential answers 401, a normal request is served while slow bodies
hold connections, ...). Every call has a timeout: an attack that gets no answer is reported as a
hang and the run goes on. A process growing past `guard_rss_growth_mb` stops the attack (and,
when the bench started the stack itself, is killed, so that one attack cannot take the machine
down); `bench hostile` then restarts its stack for the next attack.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil
import soundfile
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.bench.load import metric_sum
from service.bench.processes import role_of, rss, tree

MB = 10**6
Progress = Callable[[str], None]

# The processes whose memory is reported, by the role service/bench/processes.py gives them.
GROUPS = ("gateway", "speech worker", "vLLM")
# An origin no deployment allows (the foreign web page of the WebSocket origin check).
FOREIGN_ORIGIN = "https://hostile.invalid"


@dataclass(frozen=True)
class HostileConfig:
    attack_timeout: float = 120.0  # seconds one attack may take before it counts as a hang
    health_interval: float = 0.1
    health_timeout: float = 10.0
    sample_interval: float = 0.05
    max_rss_growth_mb: float = 600.0
    max_health_seconds: float = 1.0
    guard_rss_growth_mb: float = 2500.0
    settle_seconds: float = 60.0  # at most this long waiting for the stack to go quiet after
    slow_connections: int = 70
    slow_hold_seconds: float = 35.0  # how long the slow bodies are held open
    realtime_items: int = 60
    realtime_item_chars: int = 4_000_000
    realtime_small_items: int = 600
    realtime_small_item_chars: int = 150_000


@dataclass
class Target:
    """The stack under attack: the gateway, its workers (for the direct calls) and processes."""

    url: str
    api_key: str | None = None
    speech_url: str | None = None
    lm_url: str | None = None
    cors_origin: str | None = None  # an origin the gateway allows (CORS preflight)
    model: str | None = None
    pids: list[int] = field(default_factory=list)  # roots of the process trees to watch
    owned: bool = False  # the bench started these processes: the RSS guard may kill them

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def ws_url(self, path: str) -> str:
        return self.url.replace("https://", "wss://").replace("http://", "ws://") + path

    def model_field(self) -> dict[str, str]:
        return {"model": self.model} if self.model else {}


@dataclass
class Outcome:
    """What one attack got back."""

    status: str  # "400", "401, 401", "error event (code)", "hang", ...
    message: str = ""  # the refusal's message (the limit hit) or what happened
    problem: str | None = None  # the attack's own expectation that did not hold
    codes: list[int] = field(default_factory=list)  # every HTTP status seen


@dataclass
class Row:
    attack: str
    outcome: Outcome
    seconds: float
    health_max: float | None  # slowest /health (a failed poll counts with its full time)
    health_failures: int
    rss_growth: dict[str, int]  # group -> bytes
    died: list[str]
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


class Probe:
    """What an attack works with: the target, the settings, HTTP clients and the payloads."""

    def __init__(self, target: Target, config: HostileConfig, payloads: Payloads) -> None:
        self.target = target
        self.config = config
        self.payloads = payloads
        timeout = httpx.Timeout(config.attack_timeout, connect=10.0)
        self.http = httpx.AsyncClient(base_url=target.url, headers=target.headers(),
                                      timeout=timeout)  # fmt: skip
        # Without the API key: preflights, direct worker calls.
        self.bare = httpx.AsyncClient(timeout=timeout)

    async def close(self) -> None:
        await self.http.aclose()
        await self.bare.aclose()

    async def vllm_counts(self) -> dict[str, float] | None:
        """vLLM's request counters (its /metrics is open without the credential)."""
        if not self.target.lm_url:
            return None
        try:
            text = (await self.bare.get(self.target.lm_url + "/metrics", timeout=10)).text
        except httpx.HTTPError:
            return None
        names = {
            "running": "vllm:num_requests_running",
            "finished": "vllm:request_success_total",
            "generated": "vllm:generation_tokens_total",
        }
        return {key: metric_sum(text, name) or 0.0 for key, name in names.items()}


# ---- payloads -------------------------------------------------------------------------------


def silence_flac(rate: int, seconds: float) -> bytes:
    """A FLAC file of digital silence: tiny on the wire, `seconds * rate` samples once decoded."""
    buffer = io.BytesIO()
    total = int(rate * seconds)
    block = np.zeros(rate * 10, dtype=np.int16)
    with soundfile.SoundFile(buffer, mode="w", samplerate=rate, channels=1, format="FLAC",
                             subtype="PCM_16") as out:  # fmt: skip
        for start in range(0, total, len(block)):
            out.write(block[: min(len(block), total - start)])
    return buffer.getvalue()


def tone_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.3 * np.sin(2 * np.pi * 220 * t), rate, format="WAV")
    return buffer.getvalue()


class Payloads:
    """The attack bodies, built once (outside any attack's measurement) and reused."""

    @cached_property
    def flac_192k_599s(self) -> bytes:
        return silence_flac(192_000, 599)

    @cached_property
    def flac_16k_300s_b64(self) -> str:
        return base64.b64encode(silence_flac(16_000, 300)).decode()

    @cached_property
    def short_wav(self) -> bytes:
        return tone_wav()


# ---- helpers --------------------------------------------------------------------------------


def error_message(response: httpx.Response) -> str:
    """The message of an OpenAI-shaped error body, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        param = f" (param {error['param']})" if error.get("param") else ""
        return f"{error.get('message', '')}{param}"
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:200]
    return response.text[:200]


def answered(response: httpx.Response, expect: tuple[int, ...] = ()) -> Outcome:
    """An outcome from one response; `expect`: the statuses the attack should get."""
    code = response.status_code
    message = error_message(response) if code >= 400 else ""
    problem = None
    if expect and code not in expect:
        problem = f"expected {'/'.join(map(str, expect))}, got {code}"
    return Outcome(str(code), message, problem, [code])


def refusal(response: httpx.Response, what: str) -> Outcome:
    """A request the service must refuse with a 4xx before doing the work (`what`)."""
    outcome = answered(response)
    if response.status_code < 400:
        outcome.problem = f"accepted: {what}"
    return outcome


async def _no_exception(coroutine: Awaitable[Any]) -> None:
    """Await `coroutine` (typically a task just cancelled) whatever it ends with."""
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await coroutine


# ---- the attacks ----------------------------------------------------------------------------


async def generate_opus_44100(probe: Probe) -> Outcome:
    """/v1/generate with response_format opus at 44100 Hz: a 400 before any generation."""
    before = await probe.vllm_counts()
    body = {
        **probe.target.model_field(),
        "inputs": [{"type": "text", "text": "Tell me about the sea."}],
        "output_modality": "speech",
        "response_format": "opus",
        "sample_rate": 44100,
        "max_tokens": 50,
    }
    outcome = answered(await probe.http.post("/v1/generate", json=body), expect=(400,))
    after = await probe.vllm_counts()
    if before and after and after["generated"] > before["generated"]:
        ran = after["generated"] - before["generated"]
        outcome.problem = f"{outcome.problem or 'refused'}, but only after {ran:g} LM tokens ran"
    return outcome


async def cors_preflight(probe: Probe) -> Outcome:
    """An allowed origin's preflight, no key: 200 with CORS headers; its 401 carries them too."""
    origin = probe.target.cors_origin
    if not origin:
        return Outcome("skipped", "no allowed origin given (--cors-origin)")
    url = probe.target.url + "/v1/generate"
    preflight = await probe.bare.options(url, headers={
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    })  # fmt: skip
    outcome = answered(preflight, expect=(200,))
    allowed = preflight.headers.get("access-control-allow-origin")
    if preflight.status_code == 200 and allowed not in (origin, "*"):
        outcome.problem = f"preflight without Access-Control-Allow-Origin for {origin}"
    outcome.message = f"preflight: allow-origin {allowed}"
    if probe.target.api_key:
        refused = await probe.bare.post(url, json={"prompt": "x"}, headers={"Origin": origin})
        outcome.codes.append(refused.status_code)
        outcome.status += f", {refused.status_code} without key"
        cors = refused.headers.get("access-control-allow-origin")
        outcome.message += f"; refusal: allow-origin {cors}"
        if refused.status_code != 401:
            outcome.problem = outcome.problem or f"no key: expected 401, got {refused.status_code}"
        elif cors not in (origin, "*"):
            outcome.problem = outcome.problem or "the 401 carries no CORS header"
    return outcome


def _method_labels(text: str) -> set[str]:
    labels = set()
    for line in text.splitlines():
        if line.startswith("spiritlm_requests_total{") and 'method="' in line:
            labels.add(line.split('method="', 1)[1].split('"', 1)[0])
    return labels


async def metrics_method_names(probe: Probe, count: int = 50) -> Outcome:
    """Arbitrary HTTP method names: /metrics must not grow a label value per name."""
    before = _method_labels((await probe.http.get("/metrics")).text)
    sent = [f"HOSTILE{index:03d}" for index in range(count)]
    codes: Counter[int] = Counter()
    failed = 0
    for method in sent:
        try:
            codes[
                (await probe.bare.request(method, probe.target.url + "/v1/models")).status_code
            ] += 1
        except httpx.HTTPError:
            failed += 1  # the server closed the connection on an unknown method: fine
    scrape = await probe.http.get("/metrics")
    after = _method_labels(scrape.text)
    new = sorted(after - before)
    leaked = [label for label in new if label in sent]
    statuses = ", ".join(f"{code} x{n}" for code, n in sorted(codes.items()))
    if failed:
        statuses += f"{', ' if statuses else ''}closed x{failed}"
    outcome = Outcome(statuses, f"{count} method names; new /metrics method labels: "
                      f"{', '.join(new) or 'none'}", codes=list(codes))  # fmt: skip
    if scrape.status_code != 200:
        outcome.problem = f"/metrics answered {scrape.status_code}"
    elif leaked:
        outcome.problem = f"{len(leaked)} raw method names became metric labels"
    return outcome


async def worker_ports_without_credential(probe: Probe) -> Outcome:
    """The speech worker's and vLLM's ports called directly, without the internal credential."""
    calls: list[tuple[str, str, str, dict[str, Any]]] = []
    speech, lm = probe.target.speech_url, probe.target.lm_url
    if speech:
        audio = probe.payloads.short_wav
        calls.append(("speech /v1/encode", "POST", speech + "/v1/encode",
                      {"content": audio, "headers": {"Content-Type": "audio/wav"}}))  # fmt: skip
    if lm:
        completion = {"model": probe.target.model or "spirit-lm", "prompt": "hi", "max_tokens": 1}
        calls += [
            ("vLLM /v1/models", "GET", lm + "/v1/models", {}),
            ("vLLM /v1/completions", "POST", lm + "/v1/completions", {"json": completion}),
            ("vLLM /invocations", "POST", lm + "/invocations", {"json": completion}),
        ]
    if not calls:
        return Outcome("skipped", "no worker URL known (--speech-url, --lm-url)")
    got, codes, wrong = [], [], []
    for name, method, url, extra in calls:
        try:
            code = (await probe.bare.request(method, url, **extra)).status_code
        except httpx.HTTPError as error:
            got.append(f"{name} {type(error).__name__}")
            continue
        codes.append(code)
        got.append(f"{name} {code}")
        if code != 401:
            wrong.append(f"{name} answered {code}")
    missing = [role for role, url in (("speech worker", speech), ("vLLM", lm)) if not url]
    message = "; ".join(got) + (f" ({', '.join(missing)} not given)" if missing else "")
    status = ", ".join(str(code) for code in codes) or "no answer"
    return Outcome(status, message, "; ".join(wrong) or None, codes)


async def websocket_foreign_origin(probe: Probe) -> Outcome:
    """WS /v1/realtime from a foreign web page (Origin header), with a valid key: refused."""
    headers = {**probe.target.headers(), "Origin": FOREIGN_ORIGIN}
    try:
        async with connect(probe.target.ws_url("/v1/realtime"), additional_headers=headers,
                           open_timeout=30) as ws:  # fmt: skip
            await _no_exception(asyncio.wait_for(ws.recv(), 5))
            return Outcome("101", "accepted", f"a WebSocket from {FOREIGN_ORIGIN} was accepted")
    except InvalidStatus as error:
        code = error.response.status_code
        problem = None if code == 403 else f"expected 403, got {code}"
        return Outcome(str(code), f"handshake refused for Origin {FOREIGN_ORIGIN}", problem, [code])
    except ConnectionClosed as error:
        return Outcome(f"closed {error.rcvd.code if error.rcvd else '-'}", "refused by a close")


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open_slow_body(host: str, port: int, head: bytes) -> Connection | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (OSError, TimeoutError):
        return None
    writer.write(head + b'{"inputs": [')  # and never the rest
    await writer.drain()
    return reader, writer


async def slow_bodies(probe: Probe) -> Outcome:
    """Connections that send headers and a body's start, never the rest; then a normal request
    must be served (not 429), and the server should drop the slow ones (a body read timeout)."""
    parts = urlsplit(probe.target.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    auth = "".join(f"{name}: {value}\r\n" for name, value in probe.target.headers().items())
    head = (
        f"POST /v1/generate HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}"
        "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    ).encode()
    count = probe.config.slow_connections
    opened = await asyncio.gather(*(_open_slow_body(host, port, head) for _ in range(count)))
    connections = [connection for connection in opened if connection is not None]
    try:
        await asyncio.sleep(1.0)
        body = {**probe.target.model_field(), "inputs": [{"type": "text", "text": "Hello."}],
                "output_modality": "text", "max_tokens": 4}  # fmt: skip
        normal = await probe.http.post("/v1/generate", json=body, timeout=60)
        outcome = answered(normal, expect=(200,))
        outcome.status = f"{normal.status_code} (normal request)"
        dropped, answers = await _dropped(connections, probe.config.slow_hold_seconds)
        heard = ", ".join(f"{line} x{n}" for line, n in answers.items())
        outcome.message = (
            f"{outcome.message + '; ' if outcome.message else ''}{len(connections)}/{count} slow "
            f"connections opened, {dropped} closed by the server within "
            f"{probe.config.slow_hold_seconds:g} s{f' ({heard})' if heard else ''}"
        )
        return outcome
    finally:
        for _, writer in connections:
            writer.close()


async def _dropped(connections: list[Connection], hold: float) -> tuple[int, Counter[str]]:
    """How many slow connections the server closes within `hold` s, and the status lines sent."""
    deadline = time.monotonic() + hold
    closed: set[int] = set()
    answers: Counter[str] = Counter()
    while len(closed) < len(connections) and time.monotonic() < deadline:
        for index, (reader, _) in enumerate(connections):
            if index in closed:
                continue
            try:
                data = await asyncio.wait_for(reader.read(65536), 0.001)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if data.startswith(b"HTTP/"):
                answers[data.split(b"\r\n", 1)[0].decode(errors="replace")] += 1
            if not data or reader.at_eof():
                closed.add(index)
        await asyncio.sleep(0.5)
    return len(closed), answers


async def generate_24mb_prompt(probe: Probe) -> Outcome:
    """A 24 MB JSON prompt to /v1/generate: refused by a bound, the loop staying responsive."""
    text = "hello world " * (24 * MB // 12)
    body = json.dumps({**probe.target.model_field(), "prompt": text, "output_modality": "text",
                       "max_tokens": 4}).encode()  # fmt: skip
    response = await probe.http.post("/v1/generate", content=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    return refusal(response, f"a {len(text) / MB:.0f} MB prompt")


async def disconnect_non_streamed(probe: Probe, max_tokens: int = 2000) -> Outcome:
    """A long non-streamed /v1/generate, then the client goes away: vLLM must stop the work."""
    before = await probe.vllm_counts()
    if before is None:
        return Outcome("skipped", "vLLM's /metrics not reachable (--lm-url)")
    body = {**probe.target.model_field(), "inputs": [{"type": "text", "text": "Talk for a long "
            "time about the sea."}], "output_modality": "text", "max_tokens": max_tokens,
            "temperature": 1.0}  # fmt: skip
    request = asyncio.create_task(probe.http.post("/v1/generate", json=body))
    seen = False
    deadline = time.monotonic() + 30
    while not request.done() and time.monotonic() < deadline:
        now = await probe.vllm_counts()
        if now and now["running"] >= 1:
            seen = True
            break
        await asyncio.sleep(0.05)
    if request.done():
        response = request.result()
        outcome = answered(response)
        outcome.status += " (finished before the disconnect)"
        outcome.message = outcome.message or "inconclusive: the generation ended by itself"
        return outcome
    # In the middle of the generation: the tiny LM on a quiet machine makes 2000 tokens in
    # well under a second, so leave soon after it starts.
    await asyncio.sleep(0.1)
    request.cancel()
    await _no_exception(request)
    closed = time.monotonic()
    idle_after = None
    while time.monotonic() - closed < 15:
        now = await probe.vllm_counts()
        if now and now["running"] == 0:
            idle_after = time.monotonic() - closed
            break
        await asyncio.sleep(0.1)
    after = await probe.vllm_counts() or before
    generated = after["generated"] - before["generated"]
    finished = after["finished"] - before["finished"]
    outcome = Outcome(
        "disconnected",
        f"vLLM {'running seen, ' if seen else ''}idle "
        f"{'never (15 s)' if idle_after is None else f'{idle_after:.1f} s'} after the disconnect; "
        f"{generated:g} of {max_tokens} tokens generated, {finished:g} finished",
    )
    if idle_after is None or idle_after > 5:
        outcome.problem = "the LM kept generating after the client left"
    elif finished > 0 and generated >= max_tokens / 2:
        outcome.problem = "the generation ran to its end after the client left"
    return outcome


async def tokenize_192khz_flac(probe: Probe) -> Outcome:
    """599 s of silence at 192 kHz as FLAC (360 KB) to /v1/speech/tokenize."""
    response = await probe.http.post(
        "/v1/speech/tokenize",
        content=probe.payloads.flac_192k_599s,
        params=probe.target.model_field(),
        headers={"Content-Type": "application/octet-stream"},
    )
    outcome = answered(response)
    if response.status_code == 200:
        encoded = response.json()
        hubert = len(str(encoded.get("units", {}).get("hubert", "")).split())
        outcome.message = (
            f"served: {encoded.get('seconds', 0):.0f} s encoded, {hubert} HuBERT units"
        )
    return outcome


async def detokenize_100k_units(probe: Probe) -> Outcome:
    """/v1/speech/detokenize with 100,000 HuBERT units (about 1 MB of JSON)."""
    units = " ".join(str(index % 100) for index in range(100_000))
    body = {**probe.target.model_field(), "units": {"hubert": units}, "response_format": "wav"}
    response = await probe.http.post("/v1/speech/detokenize", json=body)
    return refusal(response, "100,000 units in one request")


def _many_audio_inputs(probe: Probe, count: int) -> list[str]:
    return [probe.payloads.flac_16k_300s_b64] * count


async def generate_many_audio(probe: Probe, count: int = 16) -> Outcome:
    """/v1/generate with 16 speech inputs of 300 s each (80 min of audio in one request)."""
    inputs = [{"type": "speech", "audio": audio} for audio in _many_audio_inputs(probe, count)]
    body = {**probe.target.model_field(), "inputs": inputs, "output_modality": "text",
            "max_tokens": 4}  # fmt: skip
    response = await probe.http.post("/v1/generate", json=body)
    return refusal(response, f"{count} x 300 s of audio in one request")


async def chat_many_audio(probe: Probe, count: int = 16) -> Outcome:
    """Chat with 16 input_audio parts of 300 s each (80 min of audio in one request)."""
    parts = [{"type": "input_audio", "input_audio": {"data": audio, "format": "flac"}}
             for audio in _many_audio_inputs(probe, count)]  # fmt: skip
    body = {**probe.target.model_field(), "messages": [{"role": "user", "content": parts}],
            "max_tokens": 4}  # fmt: skip
    response = await probe.http.post("/v1/chat/completions", json=body)
    return refusal(response, f"{count} x 300 s of audio in one request")


async def _normal_generate(probe: Probe) -> httpx.Response:
    body = {**probe.target.model_field(), "inputs": [{"type": "text", "text": "Hello."}],
            "output_modality": "text", "max_tokens": 4}  # fmt: skip
    return await probe.http.post("/v1/generate", json=body, timeout=60)


async def declared_bodies(probe: Probe) -> Outcome:
    """Bodies that declare the whole reading budget (256 MiB) and stall, one of them to /health
    without a key: a normal request must be served (not 429)."""
    parts = urlsplit(probe.target.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    auth = "".join(f"{name}: {value}\r\n" for name, value in probe.target.headers().items())
    heads = [
        f"POST /health HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {256 * 2**20}\r\n\r\n".encode(),
        *[f"POST /v1/generate HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}Content-Type: "
          f"application/json\r\nContent-Length: {25 * 2**20}\r\n\r\n".encode()] * 11,
    ]  # fmt: skip
    opened = await asyncio.gather(*(_open_slow_body(host, port, head) for head in heads))
    connections = [connection for connection in opened if connection is not None]
    try:
        await asyncio.sleep(1.0)
        normal = await _normal_generate(probe)
        outcome = answered(normal, expect=(200,))
        outcome.status = f"{normal.status_code} (normal request)"
        outcome.message = (
            f"{outcome.message + '; ' if outcome.message else ''}{len(connections)} stalled "
            "bodies declaring 256 MiB in all held open"
        )
        return outcome
    finally:
        for _, writer in connections:
            writer.close()


async def huge_top_k(probe: Probe, count: int = 10) -> Outcome:
    """/v1/generate with top_k 2**64, ten times (vLLM's serializer overflows on it): each must
    be refused, and a normal request served after them (the LM worker not ejected)."""
    body = {**probe.target.model_field(), "prompt": "hi", "max_tokens": 3, "top_k": 2**64}
    codes = [(await probe.http.post("/v1/generate", json=body)).status_code for _ in range(count)]
    last = await probe.http.post("/v1/generate", json=body)
    outcome = refusal(last, "top_k 2**64")
    normal = await _normal_generate(probe)
    outcome.codes = [*codes, last.status_code, normal.status_code]
    outcome.status = f"{last.status_code} x{count + 1}, then {normal.status_code} (normal request)"
    if normal.status_code != 200 and outcome.problem is None:
        outcome.problem = f"the normal request after them got {normal.status_code}"
    return outcome


LONE_SURROGATE = "\\ud800"  # as JSON spells it: half a UTF-16 surrogate pair, not Unicode


async def lone_surrogates(probe: Probe) -> Outcome:
    """Text holding a lone UTF-16 surrogate (JSON \\ud800) in a prompt, a chat message and a
    detokenize token string: each refused by name, before any tokenizer sees it."""
    model = json.dumps(probe.target.model_field())[1:-1]
    model = model + ", " if model else ""
    bodies = {
        "/v1/generate": "{" + model + '"prompt": "hi ' + LONE_SURROGATE + '", "max_tokens": 2}',
        "/v1/chat/completions": "{"
        + model
        + '"messages": [{"role": "user", "content": "'
        + LONE_SURROGATE
        + '"}], "max_tokens": 2}',
        "/v1/speech/detokenize": "{" + model + '"tokens": "[Hu1]' + LONE_SURROGATE + '[Hu2]"}',
    }
    headers = {"Content-Type": "application/json"}
    responses = [await probe.http.post(path, content=body.encode(), headers=headers)
                 for path, body in bodies.items()]  # fmt: skip
    outcome = refusal(responses[0], "a lone surrogate")
    outcome.codes = [response.status_code for response in responses]
    outcome.status = ", ".join(str(code) for code in outcome.codes)
    outcome.message = "; ".join(error_message(response) for response in responses)
    accepted = [path for path, r in zip(bodies, responses, strict=True) if r.status_code < 400]
    if accepted:
        outcome.problem = f"accepted by {', '.join(accepted)}"
    return outcome


def _item(text: str) -> str:
    return json.dumps({
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text",
                                                                 "text": text}]},
    })  # fmt: skip


@contextlib.asynccontextmanager
async def _realtime(probe: Probe, **options: Any) -> Any:
    url = probe.target.ws_url("/v1/realtime")
    async with connect(url, additional_headers=probe.target.headers() or None, max_size=None,
                       open_timeout=30, close_timeout=5, **options) as ws:  # fmt: skip
        yield ws


def _close_text(error: ConnectionClosed) -> str:
    frame = error.rcvd
    return f"closed {frame.code} {frame.reason}".strip() if frame else "connection lost"


class _Events:
    """Reads a realtime session's events in the background; keeps what the report needs."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.types: Counter[str] = Counter()
        self.errors: list[dict[str, Any]] = []
        self.closed: str | None = None
        self.done: dict[str, Any] | None = None
        self.user_items = 0
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                event = json.loads(frame)
                kind = event.get("type", "?")
                self.types[kind] += 1
                if kind == "error":
                    self.errors.append(event.get("error", {}))
                elif kind in ("conversation.item.created", "conversation.item.added"):
                    self.user_items += event.get("item", {}).get("role") == "user"
                elif kind == "response.done":
                    self.done = event.get("response", {})
        except ConnectionClosed as error:
            self.closed = _close_text(error)
        else:
            self.closed = _close_text(ConnectionClosed(self.ws.close_rcvd, None))


def _realtime_outcome(events: _Events) -> Outcome:
    parts = []
    if events.errors:
        first = events.errors[0]
        parts.append(f"error event ({first.get('code') or first.get('type')})")
    if events.done is not None:
        parts.append(f"response.done {events.done.get('status')}")
    if events.closed:
        parts.append(events.closed)
    message = events.errors[0].get("message", "") if events.errors else ""
    return Outcome(", ".join(parts) or "no answer", message)


async def _flood(probe: Probe, count: int, chars: int) -> Outcome:
    """`count` user text items of `chars` characters in one session, then response.create."""
    item = _item("a" * chars)
    sent = 0
    async with _realtime(probe) as ws:
        events = _Events(ws)
        try:
            for _ in range(count):
                if events.closed:
                    break
                await ws.send(item)
                sent += 1
            if not events.closed:
                await ws.send(json.dumps({"type": "response.create"}))
            deadline = time.monotonic() + probe.config.attack_timeout / 2
            while events.done is None and not events.closed and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        except ConnectionClosed:
            pass
        await asyncio.sleep(0.2)
        events.task.cancel()
        await _no_exception(events.task)
    outcome = _realtime_outcome(events)
    total = sent * chars / MB
    outcome.message = (
        f"{sent} items sent ({total:.0f} MB), {events.user_items} accepted, "
        f"{len(events.errors)} error events{'; ' + outcome.message if outcome.message else ''}"
    )
    if not events.errors and not events.closed and events.user_items >= count:
        outcome.problem = f"no session budget: {total:.0f} MB of history accepted"
    return outcome


async def realtime_history_flood(probe: Probe) -> Outcome:
    """60 text items of 4 MB in one realtime session (240 MB of history), then response.create."""
    return await _flood(probe, probe.config.realtime_items, probe.config.realtime_item_chars)


async def realtime_many_items(probe: Probe) -> Outcome:
    """600 text items of 150,000 characters (each under the prompt bound, 90 MB together) in
    one realtime session, then response.create: a per-session budget must refuse."""
    config = probe.config
    return await _flood(probe, config.realtime_small_items, config.realtime_small_item_chars)


async def realtime_never_reads(
    probe: Probe, items: int = 40, item_bytes: int = 1_000_000
) -> Outcome:
    """A realtime client that sends and never reads: the gateway's outbox must stay bounded."""
    async with _realtime(probe, max_queue=1) as ws:
        # The client library reads one frame ahead at most, then TCP backpressure builds.
        item = _item("b" * item_bytes)
        sent = 0
        closed = None
        try:
            for _ in range(items):
                await asyncio.wait_for(ws.send(item), 10)
                sent += 1
            await ws.send(json.dumps({"type": "response.create"}))
            await asyncio.sleep(10.0)  # not reading, while memory is sampled
        except (ConnectionClosed, TimeoutError) as error:
            closed = _close_text(error) if isinstance(error, ConnectionClosed) else "send blocked"
        got = 0
        drain_until = time.monotonic() + 5
        with contextlib.suppress(TimeoutError):
            while closed is None and time.monotonic() < drain_until:
                try:
                    await asyncio.wait_for(ws.recv(), max(0.01, drain_until - time.monotonic()))
                    got += 1
                except ConnectionClosed as error:
                    closed = _close_text(error)
    message = f"{sent} items of {item_bytes / MB:g} MB sent unread; {got} events drained after"
    return Outcome(closed or "open", message)


@dataclass(frozen=True)
class Attack:
    name: str
    run: Callable[[Probe], Awaitable[Outcome]]

    @property
    def summary(self) -> str:
        return " ".join((self.run.__doc__ or "").split("\n\n")[0].split())


# Cheap ones first; those that threatened a process on earlier trees last.
ATTACKS = {
    attack.name: attack
    for attack in (
        Attack("generate-opus-44100", generate_opus_44100),
        Attack("cors-preflight", cors_preflight),
        Attack("metrics-method-names", metrics_method_names),
        Attack("worker-ports-no-credential", worker_ports_without_credential),
        Attack("websocket-foreign-origin", websocket_foreign_origin),
        Attack("slow-bodies", slow_bodies),
        Attack("declared-bodies", declared_bodies),
        Attack("huge-top-k", huge_top_k),
        Attack("lone-surrogates", lone_surrogates),
        Attack("generate-24mb-prompt", generate_24mb_prompt),
        Attack("disconnect-non-streamed", disconnect_non_streamed),
        Attack("tokenize-192khz-flac", tokenize_192khz_flac),
        Attack("generate-many-audio", generate_many_audio),
        Attack("chat-many-audio", chat_many_audio),
        Attack("detokenize-100k-units", detokenize_100k_units),
        Attack("realtime-never-reads", realtime_never_reads),
        Attack("realtime-history-flood", realtime_history_flood),
        Attack("realtime-many-items", realtime_many_items),
    )
}


def select(names: str | None) -> list[Attack]:
    """The attacks named in a comma list (all when None), in the run order."""
    if not names:
        return list(ATTACKS.values())
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; known: {', '.join(ATTACKS)}")
    return [attack for name, attack in ATTACKS.items() if name in wanted]


# ---- watching the stack ---------------------------------------------------------------------


def group_of(role: str) -> str | None:
    if "vLLM" in role:
        return "vLLM"
    return role if role in GROUPS else None


class MemoryWatch(threading.Thread):
    """Samples the summed RSS of each group of processes; trips the guard on runaway growth."""

    def __init__(self, processes: list[psutil.Process], config: HostileConfig, kill: bool) -> None:
        super().__init__(daemon=True)
        self.config = config
        self.kill = kill
        self.groups: dict[str, list[psutil.Process]] = {}
        # Taken now: a process that dies during the attack has no command line to read after.
        self.roles = {process.pid: role_of(process) for process in processes}
        for process in processes:
            group = group_of(self.roles[process.pid])
            if group is not None:
                self.groups.setdefault(group, []).append(process)
        self.before = self._sizes()
        self.peak = dict(self.before)
        self.tripped = threading.Event()
        self.trip_note: str | None = None
        self.killed: set[int] = set()
        self._halt = threading.Event()

    def _sizes(self) -> dict[str, int]:
        return {group: sum(rss(process.pid) or 0 for process in members)
                for group, members in self.groups.items()}  # fmt: skip

    def run(self) -> None:
        guard = self.config.guard_rss_growth_mb * MB
        while not self._halt.wait(self.config.sample_interval):
            for group, size in self._sizes().items():
                self.peak[group] = max(self.peak[group], size)
                if size - self.before[group] >= guard and not self.tripped.is_set():
                    self._trip(group, size - self.before[group])

    def _trip(self, group: str, growth: int) -> None:
        note = f"{group} grew by {growth / MB:.0f} MB (guard {self.config.guard_rss_growth_mb:g})"
        if self.kill:
            for process in self.groups[group]:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    process.kill()
                    self.killed.add(process.pid)
            note += f": the bench killed the {group}"
        self.trip_note = note
        self.tripped.set()

    def growth(self) -> dict[str, int]:
        return {group: self.peak[group] - self.before[group] for group in self.groups}

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


class HealthWatch(threading.Thread):
    """Polls the gateway's /health; keeps the slowest answer (a failed poll counts in full)."""

    def __init__(self, url: str, config: HostileConfig) -> None:
        super().__init__(daemon=True)
        self.url = url.rstrip("/") + "/health"
        self.config = config
        self.slowest: float | None = None
        self.failures = 0
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=self.config.health_timeout) as http:
            while not self._halt.is_set():
                started = time.perf_counter()
                try:
                    ok = http.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                took = time.perf_counter() - started
                self.failures += not ok
                self.slowest = max(self.slowest or 0.0, took)
                self._halt.wait(max(0.0, self.config.health_interval - took))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=self.config.health_timeout + 5)


@contextlib.contextmanager
def watching(
    target: Target, config: HostileConfig
) -> Iterator[tuple[MemoryWatch, HealthWatch, list[psutil.Process]]]:
    processes = tree(target.pids)
    memory = MemoryWatch(processes, config, kill=target.owned)
    health = HealthWatch(target.url, config)
    memory.start()
    health.start()
    try:
        yield memory, health, processes
    finally:
        health.stop()
        memory.stop()


async def run_guarded(attack: Attack, probe: Probe, tripped: threading.Event) -> Outcome:
    """The attack, cut off at its timeout or when the memory guard trips; never raises."""
    try:
        return await _cut_off(asyncio.create_task(attack.run(probe)), probe, tripped)
    except httpx.TimeoutException as error:
        return Outcome("hang", f"{type(error).__name__}: no answer in time", "hang")
    except (httpx.HTTPError, OSError, ConnectionClosed, InvalidStatus) as error:
        return Outcome("connection error", f"{type(error).__name__}: {error}"[:200],
                       "no answer: the connection failed")  # fmt: skip
    except Exception as error:  # an answer the attack could not read: reported, the run goes on
        return Outcome("unreadable answer", f"{type(error).__name__}: {error}"[:200],
                       "the answer could not be read")  # fmt: skip
    finally:
        await probe.close()


async def _cut_off(task: asyncio.Task[Outcome], probe: Probe, tripped: threading.Event) -> Outcome:
    deadline = time.monotonic() + probe.config.attack_timeout
    while not task.done():
        await asyncio.wait({task}, timeout=0.1)
        if task.done():
            break
        if tripped.is_set() or time.monotonic() > deadline:
            task.cancel()
            await _no_exception(task)
            if tripped.is_set():
                return Outcome("aborted", "stopped by the memory guard", "runaway memory")
            return Outcome("hang", f"no answer within {probe.config.attack_timeout:g} s",
                           "hang")  # fmt: skip
    return task.result()


async def _quiet(probe: Probe, processes: list[psutil.Process]) -> bool:
    """No LM request running, no speech stream, no request in flight, workers' CPUs idle."""
    counts = await probe.vllm_counts()
    if counts and counts["running"] > 0:
        return False
    with contextlib.suppress(httpx.HTTPError):
        text = (await probe.http.get("/metrics", timeout=10)).text
        in_flight = metric_sum(text, "spiritlm_requests_in_flight")
        if in_flight is not None and in_flight > 1:  # the scrape itself counts
            return False
    busy = [p for p in processes if group_of(role_of(p)) in ("gateway", "speech worker")]
    for process in busy:
        with contextlib.suppress(psutil.Error):
            process.cpu_percent(None)
    await asyncio.sleep(0.5)
    for process in busy:
        with contextlib.suppress(psutil.Error):
            if process.cpu_percent(None) > 30:
                return False
    return True


async def _settle(
    target: Target, config: HostileConfig, processes: list[psutil.Process], payloads: Payloads
) -> float | None:
    """Seconds until the stack went quiet after the attack; None if it did not within
    `settle_seconds` (work that goes on after the client got its answer or left)."""
    probe = Probe(target, config, payloads)
    started = time.monotonic()
    try:
        while time.monotonic() - started < config.settle_seconds:
            if not any(alive(process) for process in processes):
                break
            if await _quiet(probe, processes):
                break
            await asyncio.sleep(0.5)
        else:
            return None
        return time.monotonic() - started
    finally:
        await probe.close()


def run_attack(
    attack: Attack, target: Target, config: HostileConfig, payloads: Payloads | None = None
) -> Row:
    """One attack with the stack watched: a report row, judged."""
    payloads = payloads or Payloads()
    with watching(target, config) as (memory, health, processes):
        started = time.monotonic()
        outcome = asyncio.run(run_guarded(attack, Probe(target, config, payloads), memory.tripped))
        seconds = time.monotonic() - started
        quiet = asyncio.run(_settle(target, config, processes, payloads))
    died = [
        f"{memory.roles[process.pid]} (pid {process.pid}"
        f"{', killed by the guard' if process.pid in memory.killed else ''})"
        for process in processes
        if not alive(process)
    ]
    row = Row(attack.name, outcome, seconds, health.slowest, health.failures, memory.growth(),
              died)  # fmt: skip
    if memory.trip_note:
        row.notes.append(memory.trip_note)
    if quiet is None:
        row.notes.append(f"the stack was still busy {config.settle_seconds:g} s after the attack")
    elif quiet > 5:
        row.notes.append(f"the stack was busy for {quiet:.0f} s after the attack")
    judge(row, config)
    return row


def judge(row: Row, config: HostileConfig) -> None:
    """Fill `row.failures`: the targets of docs/security.md's hostile-input table."""
    outcome = row.outcome
    failures = row.failures
    server_errors = sorted({code for code in outcome.codes if code >= 500})
    if server_errors:
        failures.append("5xx: " + ", ".join(map(str, server_errors)))
    if outcome.problem:
        failures.append(outcome.problem)
    if row.died:
        failures.append("died: " + ", ".join(row.died))
    for group, growth in row.rss_growth.items():
        if growth >= config.max_rss_growth_mb * MB:
            failures.append(f"{group} RSS +{growth / MB:.0f} MB")
    if row.health_max is not None and row.health_max >= config.max_health_seconds:
        failures.append(f"/health {row.health_max:.2f} s")
    if row.health_failures:
        failures.append(f"/health failed {row.health_failures}x")


def run_attacks(
    attacks: list[Attack],
    target: Target,
    config: HostileConfig,
    *,
    progress: Progress = print,
    restart: Callable[[], Target] | None = None,
) -> list[Row]:
    """Every attack in turn, a row printed as each ends. `restart` gives a fresh stack after an
    attack that left a process of this one dead (without it, the next attacks meet the wreck)."""
    payloads = Payloads()
    progress("building the attack payloads")
    for name in ("flac_192k_599s", "flac_16k_300s_b64", "short_wav"):
        getattr(payloads, name)
    progress(HEADER)
    progress(RULE)
    rows = []
    for attack in attacks:
        row = run_attack(attack, target, config, payloads)
        rows.append(row)
        progress(markdown_row(row))
        if restart is not None and row.died and attack is not attacks[-1]:
            progress(f"{attack.name} left the stack broken: starting a fresh one")
            try:
                target = restart()
            except Exception as error:  # reported; the rows so far still make the report
                progress(f"the stack did not come back ({error}); the remaining attacks not run")
                break
    return rows


def alive(process: psutil.Process) -> bool:
    """Running, and not a zombie waiting for its parent to reap it."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ---- the report -----------------------------------------------------------------------------

HEADER = (
    "| attack | status | limit hit / what happened | s | max /health (s) | gateway ΔRSS (MB) "
    "| speech worker ΔRSS (MB) | vLLM ΔRSS (MB) | verdict |"
)
RULE = "|---|---|---|---:|---:|---:|---:|---:|---|"


def _cell(text: str, limit: int = 220) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown_row(row: Row) -> str:
    growth = [
        "-" if group not in row.rss_growth else f"{row.rss_growth[group] / MB:+.0f}"
        for group in GROUPS
    ]
    health = "-" if row.health_max is None else f"{row.health_max:.3f}"
    message = "; ".join(filter(None, [row.outcome.message, *row.notes]))
    verdict = "ok" if row.ok else "**FAIL**: " + "; ".join(row.failures)
    return (
        f"| {row.attack} | {_cell(row.outcome.status, 100)} | {_cell(message)} | "
        f"{row.seconds:.1f} | {health} | {' | '.join(growth)} | {_cell(verdict)} |"
    )


def markdown(rows: list[Row], config: HostileConfig, preamble: list[str] | None = None) -> str:
    failed = sum(1 for row in rows if not row.ok)
    lines = [
        *(preamble or []),
        f"{len(rows)} attacks, **{failed} failed**. Targets: no 5xx, no process dies, RSS "
        f"growth under {config.max_rss_growth_mb:g} MB per process, /health under "
        f"{config.max_health_seconds:g} s, and each attack's own expectation.",
        "",
        HEADER,
        RULE,
        *(markdown_row(row) for row in rows),
        "",
        "Attacks:",
        "",
        *(
            f"- `{name}`: {attack.summary}"
            for name, attack in ATTACKS.items()
            if name in {row.attack for row in rows}
        ),  # fmt: skip
    ]
    return "\n".join(lines) + "\n"
