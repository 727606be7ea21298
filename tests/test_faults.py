"""Fault injection against real processes: workers killed mid-stream, slow and vanishing clients.

One dedicated stack for the module (its own vLLM, speech worker and gateway, started with
`servers.spawn`), so that killing its workers leaves the session's shared servers alone:

- kill -9 of the speech worker in the middle of a streamed /v1/generate speech response
  (`FAULT_ROUNDS` times) and in the middle of a realtime response: the client gets an error
  event and the end of the stream, never a hang; once the worker is back on the same port,
  requests succeed again without touching the gateway; in-flight gauges return to 0 and the
  gateway's open file descriptors do not grow from one fault to the next;
- kill -9 of the vLLM server (its whole process group) mid-stream: the same, and the speech
  worker's vocoder stream of that request is closed;
- a client that stops reading a long streamed speech response: the gateway's memory stays flat
  while it holds the stream, and closing it releases everything at once;
- a client that disconnects: vLLM aborts the request at once.

Every wait is bounded: a hang fails the test with a message instead of blocking the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import psutil
import pytest
from websockets.asyncio.client import connect

from service.checkpoints.layout import BASE
from service.lm.worker import vllm_argv
from service.process import ChildProcess, free_port
from tests.support.scaleout import fast_health_env, gateway_argv, wait_for, worker_states
from tests.support.servers import Servers

pytestmark = pytest.mark.slow

STREAM_TIMEOUT = httpx.Timeout(30.0, read=60.0)
STREAM_DEADLINE = 120.0  # a stream that is still open after this long counts as a hang
EVENT_TIMEOUT = 60.0
MAX_TOKENS_LIMIT = 4000
FAULT_ROUNDS = 3


# ---- the dedicated stack -----------------------------------------------------------------


@dataclass
class FaultStack:
    servers: Servers
    lm_port: int
    speech_port: int
    gateway_url: str
    lm: ChildProcess
    speech: ChildProcess
    gateway: ChildProcess

    @property
    def lm_url(self) -> str:
        return f"http://127.0.0.1:{self.lm_port}"

    @property
    def speech_url(self) -> str:
        return f"http://127.0.0.1:{self.speech_port}"

    @property
    def gateway_pid(self) -> int:
        assert self.gateway.popen is not None
        return self.gateway.popen.pid

    def kill_speech(self) -> None:
        kill_group(self.speech)

    def kill_lm(self) -> None:
        kill_group(self.lm)  # the API server and its engine process

    def restart_speech(self) -> None:
        self.speech = start_speech(self.servers, self.speech_port)
        wait_for(lambda: worker_states(self.gateway_url, "speech") == {self.speech_url: True})

    def restart_lm(self) -> None:
        self.lm = start_lm(self.servers, self.lm_port)
        wait_for(lambda: worker_states(self.gateway_url, "lm") == {self.lm_url: True})


def kill_group(child: ChildProcess) -> None:
    assert child.popen is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.popen.pid, signal.SIGKILL)
    child.popen.wait(10)
    wait_for(lambda: port_free(child.health_url), timeout=30)


def port_free(health_url: str) -> bool:
    port = int(re.search(r":(\d+)/", health_url).group(1))  # type: ignore[union-attr]
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def start_speech(servers: Servers, port: int) -> ChildProcess:
    url = f"http://127.0.0.1:{port}"
    return servers.spawn(f"faults-speech-{port}", servers.speech_argv(port), url, "/ready", 300)


def start_lm(servers: Servers, port: int) -> ChildProcess:
    argv = vllm_argv(servers.layout.lm_dir(BASE), BASE, host="127.0.0.1", port=port)
    return servers.spawn_lm(f"faults-lm-{port}", argv, f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def stack(servers: Servers) -> FaultStack:
    lm_port, speech_port, gateway_port = free_port(), free_port(), free_port()
    lm = start_lm(servers, lm_port)
    speech = start_speech(servers, speech_port)
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    lm_url, speech_url = f"http://127.0.0.1:{lm_port}", f"http://127.0.0.1:{speech_port}"
    limits = ("--max-tokens-limit", str(MAX_TOKENS_LIMIT), "--drain-seconds", "1")
    argv = gateway_argv(gateway_port, [lm_url], [speech_url], *limits)
    env = fast_health_env(servers)
    gateway = servers.spawn("faults-gateway", argv, gateway_url, "/ready", 120, env=env)
    return FaultStack(servers, lm_port, speech_port, gateway_url, lm, speech, gateway)


# ---- observing the processes ---------------------------------------------------------------


def metric(url: str, name: str, labels: str = "") -> float:
    """Sum of a Prometheus metric's samples whose labels contain `labels`."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    pattern = rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+([0-9.eE+-]+)$"
    return sum(
        float(match.group(2))
        for match in re.finditer(pattern, text, re.M)
        if labels in (match.group(1) or "")
    )


def gateway_in_flight(gateway: str) -> float:
    # The gauge counts the /metrics request that reads it.
    return metric(gateway, "spiritlm_requests_in_flight") - 1


def quiet(stack: FaultStack) -> bool:
    """Nothing left in flight anywhere: gateway requests, vocoder streams, vLLM requests."""
    return (
        gateway_in_flight(stack.gateway_url) == 0
        and metric(stack.speech_url, "spiritlm_speech_active_streams") == 0
        and metric(stack.lm_url, "vllm:num_requests_running") == 0
    )


def all_healthy(stack: FaultStack) -> None:
    for url in (stack.gateway_url, stack.speech_url, stack.lm_url):
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200, url


# ---- the client side -----------------------------------------------------------------------


def speech_body(max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"type": "text", "text": "Tell me a long story"}],
        "output_modality": "speech",
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        **extra,
    }


def read_stream(
    gateway: str, body: dict[str, Any], on_event: Callable[[dict[str, Any]], None]
) -> list[dict[str, Any]]:
    """SSE events of a streamed /v1/generate to the end (`[DONE]` included), within a deadline."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + STREAM_DEADLINE
    with httpx.stream("POST", f"{gateway}/v1/generate", json=body, timeout=STREAM_TIMEOUT) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            assert time.monotonic() < deadline, f"stream still open after {STREAM_DEADLINE} s"
            if not line.startswith("data: "):
                continue
            payload = line[len("data: ") :]
            event = {"type": "[DONE]"} if payload == "[DONE]" else json.loads(payload)
            events.append(event)
            on_event(event)
    return events


def kill_at_first_audio(kill: Callable[[], None]) -> Callable[[dict[str, Any]], None]:
    done = {"killed": False}

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "audio.delta" and not done["killed"]:
            done["killed"] = True
            kill()

    return on_event


def assert_clean_error(events: list[dict[str, Any]], words: str) -> None:
    types = [event["type"] for event in events]
    assert "audio.delta" in types, "the fault should come after the first audio"
    assert types[-2:] == ["error", "[DONE]"], types[-5:]
    assert "done" not in types
    error = events[-2]["error"]
    assert error["code"] == 503, error
    assert words in error["message"], error


def generate_speech_ok(gateway: str) -> None:
    body = {**speech_body(30), "stream": False}
    response = httpx.post(f"{gateway}/v1/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    speech = [s for s in response.json()["segments"] if s["type"] == "speech"]
    assert speech and speech[0]["seconds"] > 0


# ---- speech worker faults ------------------------------------------------------------------


def test_speech_worker_killed_mid_stream_then_back(stack: FaultStack) -> None:
    """Rounds of kill -9 mid-stream and restart; nothing leaks from one round to the next."""
    descriptors: list[int] = []
    for _ in range(FAULT_ROUNDS):
        try:
            events = read_stream(stack.gateway_url, speech_body(1000), kill_at_first_audio(
                stack.kill_speech))  # fmt: skip
            assert_clean_error(events, "speech worker")
            wait_for(lambda: gateway_in_flight(stack.gateway_url) == 0, 10, "gateway in flight 0")
        finally:
            if not stack.speech.running():
                stack.restart_speech()  # the other tests of the module need it, pass or fail
        generate_speech_ok(stack.gateway_url)
        wait_for(lambda: quiet(stack), 10, "no request, stream or generation left")
        descriptors.append(psutil.Process(stack.gateway_pid).num_fds())
    # The first round opens the connection pools that every later request reuses.
    assert descriptors[-1] <= descriptors[0] + 2, descriptors
    all_healthy(stack)


class RealtimeClient:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    async def send(self, **event: Any) -> None:
        await self.ws.send(json.dumps(event))

    async def until(self, *types: str) -> dict[str, Any]:
        """Events up to the first of `types`; each wait is bounded."""
        while True:
            event = json.loads(await asyncio.wait_for(self.ws.recv(), EVENT_TIMEOUT))
            kind = event["type"].replace("response.audio.", "response.output_audio.")
            event["type"] = kind
            self.seen.append(event)
            if kind in types:
                return event

    async def respond(self) -> None:
        await self.send(
            type="conversation.item.create",
            item={"type": "message", "role": "user",
                  "content": [{"type": "input_text", "text": "Tell me a story"}]},
        )  # fmt: skip
        await self.send(type="response.create")


def test_speech_worker_killed_mid_realtime_response(stack: FaultStack) -> None:
    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        url = stack.gateway_url.replace("http://", "ws://") + f"/v1/realtime?model={BASE}"
        async with connect(url, max_size=None, open_timeout=30) as ws:
            client = RealtimeClient(ws)
            await client.until("session.created")
            # Greedy: a sampled reply of the random test LM may end after a few units, before
            # the kill lands; the greedy one runs to its budget.
            session = {"output_modalities": ["audio"], "max_output_tokens": 1000,
                       "temperature": 0.0,
                       "audio": {"input": {"turn_detection": None}}}  # fmt: skip
            await client.send(type="session.update", session=session)
            await client.until("session.updated")
            await client.respond()
            await client.until("response.output_audio.delta")
            await asyncio.to_thread(stack.kill_speech)
            failed = await client.until("response.done")
            errors = [event for event in client.seen if event["type"] == "error"]
            # The session survives the fault: once the worker is back, the next turn works.
            await asyncio.to_thread(stack.restart_speech)
            await client.send(type="session.update", session={"max_output_tokens": 40})
            await client.until("session.updated")
            await client.respond()
            recovered = await client.until("response.done")
            return failed, errors, recovered

    failed, errors, recovered = asyncio.run(scenario())
    assert failed["response"]["status"] == "failed", failed
    assert any("speech worker" in event["error"]["message"] for event in errors), errors
    assert recovered["response"]["status"] in ("completed", "incomplete"), recovered
    wait_for(lambda: quiet(stack), 10, "no request, stream or generation left")
    assert metric(stack.gateway_url, "spiritlm_realtime_sessions_active") == 0
    all_healthy(stack)


# ---- LM worker faults ----------------------------------------------------------------------


def test_lm_worker_killed_mid_stream_then_back(stack: FaultStack) -> None:
    streams_before = metric(stack.speech_url, "spiritlm_speech_streams_total")
    generating: list[float] = []

    def kill_lm_while_generating() -> None:
        # On a fast machine vLLM can finish a short generation before the first audio is out.
        generating.append(metric(stack.lm_url, "vllm:num_requests_running"))
        stack.kill_lm()

    try:
        body = speech_body(MAX_TOKENS_LIMIT - 100)
        events = read_stream(stack.gateway_url, body, kill_at_first_audio(kill_lm_while_generating))
        assert generating == [1], f"vLLM was not generating at the first audio: {generating}"
        assert_clean_error(events, "LM worker")
    finally:
        if not stack.lm.running():
            stack.restart_lm()  # the other tests of the module need it, pass or fail
    # The request's vocoder stream was closed, not left open on the speech worker.
    wait_for(lambda: metric(stack.speech_url, "spiritlm_speech_active_streams") == 0, 10)
    assert metric(stack.speech_url, "spiritlm_speech_streams_total") == streams_before + 1
    wait_for(lambda: gateway_in_flight(stack.gateway_url) == 0, 10, "gateway in flight 0")
    generate_speech_ok(stack.gateway_url)
    wait_for(lambda: quiet(stack), 10, "no request, stream or generation left")
    all_healthy(stack)


# ---- misbehaving clients -------------------------------------------------------------------


def raw_stream_request(gateway: str, body: dict[str, Any]) -> socket.socket:
    """A streamed POST on a socket with a small receive buffer that the test reads at will."""
    host, port = gateway.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.settimeout(EVENT_TIMEOUT)
    sock.connect((host, int(port)))
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def read_for(sock: socket.socket, seconds: float) -> int:
    """Read whatever arrives for `seconds`; the number of bytes."""
    received = 0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            part = sock.recv(1 << 16)
        except TimeoutError:
            break
        if not part:
            break
        received += len(part)
    return received


def read_until(sock: socket.socket, marker: bytes, timeout: float = EVENT_TIMEOUT) -> None:
    seen = b""
    until = time.monotonic() + timeout
    while marker not in seen:
        assert time.monotonic() < until, f"no {marker!r} within {timeout:.0f} s"
        sock.settimeout(max(0.01, until - time.monotonic()))
        part = sock.recv(1 << 16)
        assert part, f"the stream ended before {marker!r}"
        seen = seen[-len(marker) :] + part


def test_unread_stream_is_held_back_not_buffered(stack: FaultStack) -> None:
    """A client that stops reading: the gateway's RSS stays flat while the stream waits.

    The stream is read normally for a moment to measure how fast the stack produces it, then
    left unread: a gateway that kept pulling from vLLM and the vocoder would buffer about
    rate x hold bytes (48 kHz speech is about 130 kB of SSE per second of audio). Where the
    vocoder is slow (the 2-core CPU machines make about 0.05 MiB/s), that is little, and only
    gross buffering shows; the growth allowed is a quarter of it plus 4 MiB of noise.
    """
    body = speech_body(MAX_TOKENS_LIMIT - 100, sample_rate=48000)
    gateway = psutil.Process(stack.gateway_pid)
    sock = raw_stream_request(stack.gateway_url, body)
    hold = 15.0
    try:
        head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        read_until(sock, b'"audio.delta"')  # vLLM and the vocoder are under way
        rate = read_for(sock, 5.0) / 5.0
        baseline = peak = gateway.memory_info().rss
        until = time.monotonic() + hold
        while time.monotonic() < until:
            peak = max(peak, gateway.memory_info().rss)
            time.sleep(0.25)
    finally:
        sock.close()  # and leave: a held-back stream must be released at once
    would_buffer = rate * hold
    growth = peak - baseline
    print(f"unread stream: RSS growth {growth / 2**20:.2f} MiB; stream rate {rate / 2**20:.2f} "
          f"MiB/s, {would_buffer / 2**20:.1f} MiB over the hold")  # fmt: skip
    assert growth < 4 * 2**20 + would_buffer / 4, (
        f"gateway RSS grew by {growth / 2**20:.1f} MiB while the client did not read "
        f"(the stream ran at {rate / 2**20:.2f} MiB/s: {would_buffer / 2**20:.0f} MiB in {hold} s)"
    )
    wait_for(lambda: quiet(stack), 15, "no request, stream or generation left")


def vllm_counts(lm_url: str) -> dict[str, float]:
    # vLLM 0.32 counts only engine-side finishes in request_success_total (stop, length, ...):
    # a request the client aborted leaves every finish reason, "abort" included, unchanged.
    return {
        "finished": metric(lm_url, "vllm:request_success_total"),
        "generated": metric(lm_url, "vllm:generation_tokens_total"),
        "running": metric(lm_url, "vllm:num_requests_running"),
    }


def test_client_disconnect_aborts_the_generation(stack: FaultStack) -> None:
    before = vllm_counts(stack.lm_url)
    max_tokens = MAX_TOKENS_LIMIT - 100
    body = {**speech_body(max_tokens), "output_modality": "text"}
    with httpx.stream("POST", f"{stack.gateway_url}/v1/generate", json=body,
                      timeout=STREAM_TIMEOUT) as response:  # fmt: skip
        for line in response.iter_lines():
            if '"text.delta"' in line:
                break  # the client goes away in the middle of the generation
    closed = time.monotonic()
    wait_for(lambda: metric(stack.lm_url, "vllm:num_requests_running") == 0, 10, "vLLM idle")
    assert time.monotonic() - closed < 5
    after = vllm_counts(stack.lm_url)
    # Stopped early (fewer tokens than asked) without finishing: aborted.
    assert after["generated"] - before["generated"] < max_tokens / 2, (before, after)
    assert after["finished"] == before["finished"], (before, after)
    wait_for(lambda: quiet(stack), 10, "no request, stream or generation left")


# ---- workers that hang rather than die -----------------------------------------------------


@contextlib.contextmanager
def stopped(child: ChildProcess) -> Any:
    """The worker's processes frozen (SIGSTOP): its port still accepts, nothing answers."""
    assert child.popen is not None
    os.killpg(child.popen.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(child.popen.pid, signal.SIGCONT)


@pytest.mark.parametrize("kind", ["speech", "lm"])
def test_a_hung_worker_is_ejected_and_requests_get_a_prompt_503(
    stack: FaultStack, kind: str
) -> None:
    child, url = (stack.speech, stack.speech_url) if kind == "speech" else (stack.lm, stack.lm_url)
    role = "speech worker" if kind == "speech" else "lm worker"
    with stopped(child):
        # The health checks time out and take it out of the pool.
        wait_for(lambda: worker_states(stack.gateway_url, kind) == {url: False}, 30, "ejected")
        started = time.monotonic()
        health = httpx.get(f"{stack.gateway_url}/health", timeout=10)
        assert health.status_code == 200 and time.monotonic() - started < 1.0
        started = time.monotonic()
        body = {**speech_body(30), "stream": False}
        refused = httpx.post(f"{stack.gateway_url}/v1/generate", json=body, timeout=60)
        assert refused.status_code == 503, refused.text
        assert role in refused.json()["error"]["message"].lower()
        assert time.monotonic() - started < 5.0  # refused at once, not after a timeout
    wait_for(lambda: worker_states(stack.gateway_url, kind) == {url: True}, 60, "re-admitted")
    generate_speech_ok(stack.gateway_url)
    wait_for(lambda: quiet(stack), 10, "no request, stream or generation left")
    all_healthy(stack)
