"""Hostile HTTP clients against the real processes: slow bodies and headers, clients that stop
reading, clients that leave, workers that answer nonsense, and JSON bodies made to stall the
event loop (docs/security.md, "Slow clients, disconnects and malformed answers").

A dedicated gateway runs with short timeouts (2 s) so that the refusals come within a test's
time; the LM work a client leaves behind is checked on vLLM's own /metrics. A fake worker
(http.server) is used only to send malformed answers, which the real workers never do.
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from service.checkpoints.layout import BASE
from service.process import free_port
from tests.support.servers import Servers

TIMEOUT_FLAGS = (
    "--body-read-timeout-seconds", "2",
    "--header-read-timeout-seconds", "2",
    "--write-timeout-seconds", "2",
)  # fmt: skip
# Greedy, speech only: the tiny LM then runs to max_tokens (2048, the gateway's limit).
LONG_SPEECH = {
    "inputs": [{"type": "text", "text": "Tell me a long story"}],
    "output_modality": "speech",
    "max_tokens": 2048,
    "temperature": 0,
}


# Every process of the session must survive every test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("processes_stay_healthy")


@pytest.fixture(scope="module")
def gateway(servers: Servers) -> str:
    """A gateway whose body, header and write timeouts are 2 s."""
    return servers.gateway(BASE, *TIMEOUT_FLAGS, name="hostile-http")


# ---- helpers ----------------------------------------------------------------------------------


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def open_request(
    url: str, head: str, body: bytes = b"", *, rcvbuf: int | None = None
) -> socket.socket:
    """A raw connection that has sent `head` (request line and headers) and `body`."""
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        # Set before connecting, so that the window the server sees is small from the start.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    connection.connect(address(url))
    connection.sendall(head.encode() + body)
    return connection


def post_head(path: str, length: int, content_type: str = "application/json") -> str:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )


def read_all(connection: socket.socket, deadline: float) -> tuple[bytes, str]:
    """Everything the server sends until it closes (`"eof"`), resets (`"reset"`) or `deadline`
    passes (`"timeout"`)."""
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, "timeout"
        connection.settimeout(left)
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            return data, "timeout"
        except ConnectionResetError:
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk


def metric(url: str, name: str) -> float:
    """The sum of a Prometheus metric's samples (all label values) at `url`/metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


def wait_for(condition: Any, timeout: float, what: str) -> float:
    """Seconds until `condition()` holds; fails after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - started


def running_on_lm(servers: Servers) -> float:
    return metric(servers.lm(BASE), "vllm:num_requests_running")


def wait_for_generation(
    servers: Servers, connection: socket.socket, speech: str | None = None
) -> None:
    """Until vLLM runs a request (or, given `speech`, the speech worker vocodes one); fails at
    once if the gateway answered with an error."""

    def running() -> bool:
        connection.setblocking(False)
        try:
            early = connection.recv(4096, socket.MSG_PEEK)
        except BlockingIOError:
            early = b""
        finally:
            connection.setblocking(True)
        if early and not early.startswith(b"HTTP/1.1 200"):
            pytest.fail(f"the gateway refused the request: {early[:500]!r}")
        if speech is not None and metric(speech, "spiritlm_speech_active_streams") >= 1:
            return True
        return running_on_lm(servers) >= 1

    wait_for(running, 60, "the generation starts")


def generated_on_lm(servers: Servers) -> float:
    return metric(servers.lm(BASE), "vllm:generation_tokens_total")


def stopped_streams(speech: str) -> float:
    """Synthesis streams the speech worker ended early (cancelled, or their client left)."""
    text = httpx.get(f"{speech}/metrics", timeout=10).text
    pattern = (
        r'^spiritlm_speech_streams_total{[^}]*outcome="(?:cancelled|disconnected)"[^}]*} (\S+)$'
    )
    return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))


# ---- slow bodies and headers ------------------------------------------------------------------


def test_slow_bodies_take_no_slots_and_get_408(gateway: str) -> None:
    """70 connections that send their headers and stall (more than the 64 concurrency slots),
    one that trickles its body and one that never finishes its headers: a normal request still
    gets through at once, the stalled ones get 408 in the OpenAI error shape after the body
    timeout, and the header-less one is closed."""
    stalled = [
        open_request(gateway, post_head("/v1/generate", 200), b'{"prompt": ') for _ in range(70)
    ]
    trickling = open_request(gateway, post_head("/v1/generate", 200))
    headless = open_request(gateway, "POST /v1/generate HTTP/1.1\r\nHost: test\r\n")
    started = time.monotonic()

    def trickle() -> None:  # a byte every 0.4 s: never idle, but too slow for the whole body
        for _ in range(4):
            trickling.sendall(b" ")
            time.sleep(0.4)

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        # /metrics is in flight itself; no stalled body holds a slot.
        assert metric(gateway, "spiritlm_requests_in_flight") <= 1
        normal = httpx.post(
            f"{gateway}/v1/generate",
            json={"prompt": "[Text]Hello", "output_modality": "text", "max_tokens": 2},
            timeout=60,
        )
        assert normal.status_code == 200, normal.text
        trickler.join()
        for connection in [*stalled, trickling]:
            data, end = read_all(connection, started + 30)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), (head, end)
            error = json.loads(body)["error"]
            assert "body_read_timeout_seconds" in error["message"], error
            assert error["type"] == "invalid_request_error"
        assert time.monotonic() - started < 30
        data, end = read_all(headless, started + 30)
        assert data == b"" and end in ("eof", "reset"), (data, end)
    finally:
        for connection in [*stalled, trickling, headless]:
            connection.close()


def test_only_bytes_that_arrived_count_against_the_reading_budget(servers: Servers) -> None:
    """Bodies that declare more than the whole budget and then stall (to a route, and to a
    public path, open to anyone) leave it to the others; bytes that really arrived do count."""
    budget = 1_000_000
    gateway = servers.gateway(
        BASE, *TIMEOUT_FLAGS, "--max-reading-body-bytes", str(budget), name="reading-budget"
    )
    declared = [
        open_request(gateway, post_head(path, budget), b'{"prompt": ')
        for path in ("/v1/generate", "/health", "/v1/generate")
    ]
    time.sleep(0.3)  # their headers are in
    started = time.monotonic()
    try:
        normal = httpx.post(
            f"{gateway}/v1/generate",
            json={"prompt": "[Text]Hello", "output_modality": "text", "max_tokens": 2},
            timeout=60,
        )
        assert normal.status_code == 200, normal.text
        # 700 kB that arrived and stall, then 400 kB more on another request: over the budget.
        holding = open_request(gateway, post_head("/v1/generate", 900_000), b" " * 700_000)
        time.sleep(0.3)
        over = open_request(gateway, post_head("/v1/generate", 400_000), b" " * 400_000)
        data, _ = read_all(over, started + 20)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 429"), data[:300]
        assert "max_reading_body_bytes" in json.loads(body)["error"]["message"]
        holding.close()
    finally:
        for connection in declared:
            connection.close()


def test_a_compressed_body_is_refused_not_read_as_plain(gateway: str) -> None:
    body = {"prompt": "[Text]Hello", "output_modality": "text", "max_tokens": 2}
    for encoding in ("gzip", "br, gzip"):
        headers = {"Content-Encoding": encoding}
        response = httpx.post(f"{gateway}/v1/generate", json=body, headers=headers, timeout=60)
        assert response.status_code == 415, response.text
        assert "Content-Encoding" in response.json()["error"]["message"]
    plain = {"Content-Encoding": "identity"}
    response = httpx.post(f"{gateway}/v1/generate", json=body, headers=plain, timeout=60)
    assert response.status_code == 200, response.text


def test_a_multipart_field_sent_twice_is_refused_by_name(gateway: str, speech_file: Path) -> None:
    audio = speech_file.read_bytes()
    twice = [("file", ("a.flac", audio)), ("file", ("b.flac", audio))]
    response = httpx.post(f"{gateway}/v1/audio/transcriptions", files=twice, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"
    one: list[tuple[str, Any]] = [("file", ("a.flac", audio))]
    labels = [("labels", (None, "yes")), ("labels", (None, "no"))]
    models = [("model", (None, BASE)), ("model", (None, "whisper-1"))]
    url = f"{gateway}/v1/audio/classifications"
    response = httpx.post(url, files=one + models + labels, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"
    # Repeating a list field is how it is sent.
    response = httpx.post(url, files=one + labels, timeout=60)
    assert response.status_code == 200, response.text


def test_multipart_uploads_pass_the_body_reader(gateway: str, speech_file: Path) -> None:
    with httpx.Client(base_url=gateway, timeout=120) as client, speech_file.open("rb") as audio:
        response = client.post("/v1/speech/tokenize", files={"file": ("speech.flac", audio)})
    assert response.status_code == 200, response.text


# ---- the event loop under big JSON bodies -----------------------------------------------------


def health_while(gateway: str, send: Any) -> tuple[httpx.Response, float]:
    """The response of `send()`, and the slowest /health answer while it ran."""
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: result.setdefault("response", send()))
    slowest = 0.0
    with httpx.Client(base_url=gateway, timeout=30) as client:
        thread.start()
        while thread.is_alive():
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.02)
    thread.join()
    return result["response"], slowest


def test_health_answers_within_a_second_during_huge_json_bodies(servers: Servers) -> None:
    gateway = servers.gateway(BASE)
    url = f"{gateway}/v1/generate"
    text = {"prompt": "[Text]" + "hello " * 4_000_000, "output_modality": "text", "max_tokens": 2}
    values = b'{"prompt": "[Text]a", "max_tokens": 2, "junk": [' + b"0," * 12_000_000 + b"0]}"
    assert 23e6 < len(values) < 25e6 and 23e6 < len(json.dumps(text)) < 25e6
    one_string, slowest_text = health_while(
        gateway, lambda: httpx.post(url, json=text, timeout=120)
    )
    many, slowest_values = health_while(
        gateway,
        lambda: httpx.post(
            url, content=values, headers={"content-type": "application/json"}, timeout=120
        ),
    )
    assert one_string.status_code == 400 and "max_prompt_chars" in one_string.text, one_string.text
    assert many.status_code == 413 and "max_json_values" in many.text, many.text
    assert slowest_text < 1.0 and slowest_values < 1.0, (slowest_text, slowest_values)


# ---- clients that stop reading or leave -------------------------------------------------------


def test_a_client_that_stops_reading_is_cut_and_its_work_cancelled(
    gateway: str, servers: Servers
) -> None:
    """A streamed speech generation (48 kHz pcm deltas, about 10 MB for 2048 tokens) to a client
    that reads nothing: once the server's buffers are full its `send` waits (uvicorn's flow
    control), and after the 2 s write timeout the connection is aborted, which frees the slot
    and ends the request's LM and vocoder work. (The tiny LM may have finished its tokens by
    then; that a disconnect aborts a running LM request is shown below.)"""
    body = json.dumps({**LONG_SPEECH, "stream": True, "audio": True, "sample_rate": 48000})
    speech = servers.speech()
    connection = open_request(
        gateway, post_head("/v1/generate", len(body)), body.encode(), rcvbuf=4096
    )
    try:
        wait_for_generation(servers, connection, speech)
        # Without the write timeout the response would wait for this client for ever.
        wait_for(lambda: metric(gateway, "spiritlm_requests_in_flight") <= 1, 120, "slot freed")
        wait_for(lambda: running_on_lm(servers) == 0, 10, "the LM request ends")
        wait_for(lambda: metric(speech, "spiritlm_speech_active_streams") == 0, 10, "vocoder")
        # What the kernel buffered for us, then the reset of the aborted connection.
        data, end = read_all(connection, time.monotonic() + 30)
        assert data.startswith(b"HTTP/1.1 200"), data[:100]
        assert b"[DONE]" not in data and end in ("reset", "eof"), (end, data[-200:])
    finally:
        connection.close()


def test_a_disconnect_cancels_a_non_streamed_request(gateway: str, servers: Servers) -> None:
    """A non-streamed speech generation with audio: the client leaves once vLLM runs it, and the
    LM request is aborted long before its 2048 tokens, and the vocoder stream with it."""
    body = json.dumps({**LONG_SPEECH, "audio": True}).encode()
    speech = servers.speech()
    generated, ended = generated_on_lm(servers), stopped_streams(speech)
    # vLLM counts only the requests it finished itself here; an aborted one leaves it unchanged.
    finished = metric(servers.lm(BASE), "vllm:request_success_total")
    connection = open_request(gateway, post_head("/v1/generate", len(body)), body)
    try:
        wait_for_generation(servers, connection)
        wait_for(lambda: metric(speech, "spiritlm_speech_active_streams") >= 1, 30, "vocoding")
    finally:
        connection.close()
    wait_for(lambda: running_on_lm(servers) == 0, 10, "the LM request is aborted")
    assert generated_on_lm(servers) - generated < 2048
    assert metric(servers.lm(BASE), "vllm:request_success_total") == finished
    wait_for(lambda: stopped_streams(speech) > ended, 10, "the vocoder stream is cancelled")
    wait_for(lambda: metric(gateway, "spiritlm_requests_in_flight") <= 1, 10, "slot freed")


# ---- malformed worker answers -----------------------------------------------------------------


class _MalformedWorker(http.server.BaseHTTPRequestHandler):
    """Passes the health checks as LM and speech worker, then answers API calls with what
    `answers[path]` holds: something that is not what the protocol says."""

    answers: ClassVar[dict[str, tuple[str, bytes]]] = {}

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/v1/models"):
            cards = [{"id": BASE, "object": "model", "max_model_len": 4096}]
            self._send("application/json", json.dumps({"object": "list", "data": cards}).encode())
        else:
            self._send("application/json", b'{"status": "ok"}')

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        content_type, body = self.answers.get(self.path.split("?")[0], ("text/plain", b"?"))
        self._send(content_type, body)

    def _send(self, content_type: str, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def gateway_of_malformed_workers(servers: Servers) -> Iterator[tuple[str, str]]:
    worker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MalformedWorker)
    threading.Thread(target=worker.serve_forever, daemon=True).start()
    worker_url = f"http://127.0.0.1:{worker.server_address[1]}"
    port = free_port()
    argv = [sys.executable, "-m", "service", "gateway", "--port", str(port), "--model", BASE,
            "--lm-url", worker_url, "--speech-url", worker_url]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    child = servers.spawn("gateway-malformed-workers", argv, url, "/ready", 120)
    try:
        yield url, worker_url
    finally:
        child.stop()
        worker.shutdown()


SSE = "text/event-stream"
LM_ANSWERS = {
    "not json": (SSE, b"data: {not json\n\ndata: [DONE]\n\n"),
    "json list": (SSE, b"data: [1, 2, 3]\n\ndata: [DONE]\n\n"),
    "token ids": (
        SSE,
        b'data: {"choices": [{"token_ids": ["a"], "finish_reason": null}]}\n\ndata: [DONE]\n\n',
    ),
    "plain json": ("application/json", b'{"id": "cmpl-1", "object": "text_completion"}'),
}


@pytest.mark.parametrize("answer", list(LM_ANSWERS), ids=list(LM_ANSWERS))
def test_a_malformed_lm_answer_is_a_502_naming_the_lm_worker(
    gateway_of_malformed_workers: tuple[str, str], answer: str
) -> None:
    gateway, worker_url = gateway_of_malformed_workers
    _MalformedWorker.answers = {"/v1/completions": LM_ANSWERS[answer]}
    response = httpx.post(
        f"{gateway}/v1/generate",
        json={"prompt": "[Text]hi", "output_modality": "text", "max_tokens": 4},
        timeout=60,
    )
    assert response.status_code == 502, response.text
    assert response.json()["error"]["message"] == "LM worker sent a malformed answer"
    assert worker_url not in response.text and "Error" not in response.text


def test_a_request_vllm_fails_in_its_stream_leaves_the_worker_in_the_pool(
    gateway_of_malformed_workers: tuple[str, str],
) -> None:
    """vLLM answered 200, then an error event (as when its serializer overflowed on a sampling
    value): this request fails with a 502, and the worker serves the next one; a failure of the
    worker itself would have ejected it, and the next request would get 503."""
    gateway, worker_url = gateway_of_malformed_workers
    error = {"error": {"object": "error", "message": "OverflowError: int too big", "code": 500}}
    failed = f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode()
    body = {"prompt": "[Text]hi", "output_modality": "text", "max_tokens": 4}
    for _ in range(2):
        _MalformedWorker.answers = {"/v1/completions": (SSE, failed)}
        response = httpx.post(f"{gateway}/v1/generate", json=body, timeout=60)
        assert response.status_code == 502, response.text
        assert response.json()["error"]["message"] == "the LM worker failed to run this request"
        assert worker_url not in response.text and "Overflow" not in response.text
    healthy = httpx.get(f"{gateway}/ready", timeout=10).json()
    assert healthy["status"] == "ready", healthy


@pytest.mark.parametrize(
    "answer",
    [b"not json", b"[1, 2]", b'{"units": "nope"}'],
    ids=["not json", "json list", "wrong shape"],
)
def test_a_malformed_speech_worker_answer_is_a_502_naming_the_speech_worker(
    gateway_of_malformed_workers: tuple[str, str], speech_file: Path, answer: bytes
) -> None:
    gateway, worker_url = gateway_of_malformed_workers
    _MalformedWorker.answers = {"/v1/encode": ("application/json", answer)}
    audio = base64.b64encode(speech_file.read_bytes()).decode()
    response = httpx.post(
        f"{gateway}/v1/generate",
        json={"inputs": [{"type": "speech", "audio": audio}], "max_tokens": 4},
        timeout=60,
    )
    assert response.status_code == 502, response.text
    assert response.json()["error"]["message"] == "speech worker sent a malformed answer"
    assert worker_url not in response.text and "Error" not in response.text
