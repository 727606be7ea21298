"""Hostile input: fuzzed parsers, fuzzed API requests, bad WebSocket frames, auth and path tricks.

Pure parts (no processes): hypothesis drives the audio decoder with structurally valid but lying
WAV headers and hostile filenames (tests/test_audio.py already covers random and damaged bytes),
the unit-string parsers and the realtime / speech-worker event parsers with arbitrary input. Each
may raise only its documented error type. Key settings with empty entries are refused, running
without keys is logged, metric labels stay bounded, and every output format x rate either
encodes or is refused up front.

Against the real processes: schemathesis fuzzes every operation of the gateway's OpenAPI schema
(no 5xx allowed); oversized, binary, non-UTF-8 and malformed frames hit WS /v1/realtime and the
speech worker's WS /v1/stream; a gateway with API keys is probed with header variants, keys in
the query string and path tricks; every path-like parameter (model, voice, speaker, upload file
names, static files, few-shot manifest entries) gets traversal attempts; CORS preflights and
foreign WebSocket origins meet a gateway with keys and allowed origins, and failing workers must
leave no internal URL or exception text in client bodies. After every test, every process
started in this session must still answer /health.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import http.server
import io
import json
import logging
import os
import random
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.audio.decode import AudioLimits, decode_audio, decode_pcm16
from service.audio.encode import (
    SAMPLE_RATES,
    SUPPORTED_FORMATS,
    OutputFormatError,
    StreamEncoder,
    check_output_format,
    encode_audio,
)
from service.checkpoints.layout import BASE
from service.errors import AudioError, CheckpointError, SpiritError, UnitFormatError
from service.gateway.fewshot import read_manifest
from service.gateway.metrics import GatewayMetrics
from service.gateway.middleware import AccessLogMiddleware
from service.gateway.realtime.protocol import ProtocolError, parse_client_event
from service.gateway.server import log_auth_posture
from service.gateway.settings import GatewaySettings
from service.process import free_port
from service.speech_worker.protocol import WorkerRequestError
from service.speech_worker.session import parse_tokens
from service.speech_worker.stream_route import parse_message
from service.units.tokens import Units, UnitStreamParser, iter_speech_tokens, string_to_units
from tests.support.paths import REPO
from tests.support.servers import Servers

PASSWD_MARK = "root:x:0:0"
API_KEY = "sk-hostile-test-key"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- every process survives every test -----------------------------------------------------


# Every process of the session must survive every test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("processes_stay_healthy")


# ---- audio decoding: lying headers, hostile file names ---------------------------------------


def wav_bytes(
    *, tag: int, channels: int, rate: int, bits: int, data_size: int, riff_size: int, body: bytes
) -> bytes:
    # Derived fields wrap like a careless writer's would; they lie as much as the others.
    block = (channels * max(1, bits // 8)) & 0xFFFF
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", data_size)
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + chunks + body


U32 = st.integers(0, 2**32 - 1)


@FUZZ
@given(
    tag=st.sampled_from([0, 1, 2, 3, 6, 7, 0xFFFE, 0xFFFF]),
    channels=st.sampled_from([0, 1, 2, 3, 255, 65535]),
    rate=st.one_of(st.sampled_from([0, 1, 7999, 8000, 16000, 44100, 384000, 2**31]), U32),
    bits=st.sampled_from([0, 1, 7, 8, 12, 16, 24, 32, 64, 65535]),
    data_size=st.one_of(st.sampled_from([0, 1, 2**31, 2**32 - 1]), U32),
    riff_size=st.one_of(st.just(0), U32),
    body=st.binary(max_size=4000),
)
def test_lying_wav_headers_only_raise_audio_error(**fields: Any) -> None:
    limits = AudioLimits(max_seconds=2.0, max_bytes=1 << 20)
    try:
        out = decode_audio(wav_bytes(**fields), limits=limits)
    except AudioError:
        return
    assert out.dtype == np.float32 and out.ndim == 1 and np.isfinite(out).all()
    assert limits.min_samples <= len(out) <= 2.0 * 16000


HOSTILE_NAMES = st.sampled_from(
    ["../../../../etc/passwd", "/etc/passwd", "..\\..\\windows\\win.ini", "a/../../b.wav",
     "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "file:///etc/passwd", "\x00.wav", "x" * 5000]
)  # fmt: skip


def tone_wav(seconds: float = 0.3) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.3 * np.sin(2 * np.pi * 220 * t), 16000, format="WAV")
    return buffer.getvalue()


@settings(max_examples=30, deadline=None)
@given(name=HOSTILE_NAMES, garbage=st.binary(min_size=1, max_size=64))
def test_file_names_are_never_opened(name: str, garbage: bytes) -> None:
    """The name only labels messages: the bytes decide, the named file is never read."""
    valid = tone_wav()
    assert np.array_equal(decode_audio(valid, filename=name), decode_audio(valid))
    with pytest.raises(AudioError) as caught:
        decode_audio(b"\x00garbage" + garbage, filename=name)
    assert PASSWD_MARK not in str(caught.value)


@FUZZ
@given(data=st.binary(max_size=2000), rate=st.integers(-10, 400000))
def test_pcm16_only_raises_audio_error(data: bytes, rate: int) -> None:
    try:
        out = decode_pcm16(data, rate)
    except AudioError:
        return
    assert out.dtype == np.float32 and np.isfinite(out).all()


# ---- unit strings ----------------------------------------------------------------------------

PIECES = st.one_of(
    st.sampled_from(["[Hu", "[Pi", "[St", "]", "[", "[Hu12]", "[Pi3]", "[St71]", "[Text]",
                     "[Speech]", "[Hu-1]", "[Hu1x]", "[HU2]", " ", "\n", "[[Hu1]]"]),
    st.integers(0, 10**30).map(str),
    st.integers(4000, 6000).map(lambda n: "[Hu" + "7" * n + "]"),  # beyond int()'s digit limit
    st.text(max_size=8),
)  # fmt: skip
TOKEN_TEXT = st.lists(PIECES, max_size=40).map("".join)


@FUZZ
@given(text=TOKEN_TEXT, strict=st.booleans(), duplicate=st.booleans())
def test_string_to_units_only_raises_unit_format_error(
    text: str, strict: bool, duplicate: bool
) -> None:
    try:
        units = string_to_units(
            text, strict=strict, duplicate_hubert_for_multiple_pitch=duplicate,
            rng=random.Random(0),
        )  # fmt: skip
    except UnitFormatError:
        return
    assert all(isinstance(value, int) for value in units.hubert)
    assert len(units.hubert) <= sum(1 for kind, _ in iter_speech_tokens(text) if kind == "hubert")


@FUZZ
@given(text=TOKEN_TEXT, cuts=st.lists(st.integers(0, 10**6), max_size=6), expressive=st.booleans())
def test_stream_parser_on_garbage_matches_the_batch_parser(
    text: str, cuts: list[int], expressive: bool
) -> None:
    try:
        expected = string_to_units(text, rng=random.Random(1))
    except UnitFormatError:
        expected = None
    parser = UnitStreamParser(expressive=expressive, rng=random.Random(1))
    bounds = sorted({0, len(text), *(cut % (len(text) + 1) for cut in cuts)})
    entries = []
    try:
        for start, end in zip(bounds, bounds[1:], strict=False):
            entries += parser.feed(text[start:end])
        entries += parser.finish()
    except UnitFormatError:
        assert expected is None
        return
    assert expected is not None
    assert [entry.hubert for entry in entries] == expected.hubert


@FUZZ
@given(
    data=st.dictionaries(
        st.sampled_from(["hubert", "pitch", "style", "audio", "other"]),
        st.one_of(TOKEN_TEXT, st.integers(), st.none(), st.lists(st.integers(), max_size=3)),
        max_size=4,
    )
)
def test_units_dict_only_raises_unit_format_error(data: dict[str, Any]) -> None:
    try:
        units = Units.from_dict(data)
    except UnitFormatError:
        return
    assert isinstance(data.get("hubert"), str) and len(units.hubert) == len(data["hubert"].split())


@FUZZ
@given(tokens=st.lists(st.one_of(PIECES, st.integers(), st.none(), st.floats()), max_size=20))
def test_stream_tokens_only_raise_request_errors(tokens: list[Any]) -> None:
    limits = {"hubert": 501, "pitch": 64, "style": 100}
    try:
        parsed = parse_tokens(tokens, limits)  # type: ignore[arg-type]
    except WorkerRequestError as error:
        assert error.status == 400
        return
    assert all(0 <= value < limits[kind] for kind, value in parsed)


# ---- event parsers ---------------------------------------------------------------------------

JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
    st.text(max_size=20), st.sampled_from(["inf", "NaN", "", "audio", "text", "server_vad"]),
)  # fmt: skip
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                  max_size=4),
    max_leaves=20,
)  # fmt: skip
REALTIME_TYPES = ["session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                  "input_audio_buffer.clear", "conversation.item.create",
                  "conversation.item.delete", "conversation.item.truncate", "response.create",
                  "response.cancel", "unknown.event"]  # fmt: skip
FIELDS = ["session", "audio", "item", "item_id", "content_index", "audio_end_ms", "response",
          "event_id", "previous_item_id", "response_id"]  # fmt: skip


@st.composite
def realtime_frames(draw: st.DrawFn) -> str:
    shape = draw(st.sampled_from(["event", "json", "text", "deep", "bignum"]))
    if shape == "event":
        event = {"type": draw(st.sampled_from(REALTIME_TYPES))}
        event.update(draw(st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=4)))
        return json.dumps(event)
    if shape == "json":
        return json.dumps(draw(JSON_VALUES))
    if shape == "deep":
        depth = draw(st.integers(1, 200000))
        return '{"type":"session.update","session":' + "[" * depth + "]" * depth + "}"
    if shape == "bignum":
        return (
            '{"type":"conversation.item.truncate","item_id":"x","content_index":0,'
            f'"audio_end_ms":{"9" * draw(st.integers(4000, 6000))}}}'
        )
    return draw(st.text(max_size=200))


@FUZZ
@given(frame=realtime_frames())
def test_realtime_parser_raises_only_protocol_errors(frame: str) -> None:
    try:
        event = parse_client_event(frame)
    except ProtocolError as error:
        assert error.code and error.message
        return
    assert event.type in REALTIME_TYPES


@FUZZ
@given(
    frame=st.one_of(
        st.text(max_size=200),
        JSON_VALUES.map(json.dumps),
        st.builds(
            lambda kind, rest: json.dumps({"type": kind, **rest}),
            st.sampled_from(["tokens", "end", "cancel", "other"]),
            st.dictionaries(st.sampled_from(["tokens", "context"]), JSON_VALUES, max_size=2),
        ),
    )
)
def test_stream_messages_only_raise_request_errors(frame: str) -> None:  # fmt: skip
    try:
        parse_message(frame)
    except WorkerRequestError as error:
        assert error.status == 400


# ---- few-shot manifests cannot point outside their bank ------------------------------------


@pytest.mark.parametrize(
    "entry", ["../outside.wav", "sub/../../outside.wav", "/etc/passwd", "../../../../etc/passwd"]
)
def test_fewshot_manifest_entries_stay_in_the_bank(tmp_path: Path, entry: str) -> None:
    bank = tmp_path / "bank"
    bank.mkdir()
    (bank / "sub").mkdir()
    (tmp_path / "outside.wav").write_bytes(tone_wav())  # a real audio file, outside the bank
    line = json.dumps({"audio": entry, "text": "hello"})
    (bank / "manifest.jsonl").write_text(line + "\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="line 1"):
        read_manifest(bank)


# ---- the running gateway ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(servers: Servers) -> str:
    return servers.gateway(BASE)


@pytest.fixture(scope="module")
def fuzz_gateway(servers: Servers) -> str:
    # A small max_tokens limit keeps fuzzed generations short; everything else is as deployed.
    return servers.gateway(BASE, "--max-tokens-limit", "48", name="fuzz")


@pytest.fixture(scope="module")
def auth_gateway(servers: Servers) -> str:
    return servers.gateway(BASE, "--api-keys", f"{API_KEY},second-key", name="auth")


def schemathesis_bin() -> Path:
    script = REPO / "scripts" / "install_schemathesis.sh"
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.skip(f"schemathesis could not be installed: {done.stderr[-500:]}")
    return REPO / done.stdout.strip().splitlines()[-1]


def test_schemathesis_finds_no_server_errors(fuzz_gateway: str, tmp_path: Path) -> None:
    binary = schemathesis_bin()
    argv = [
        str(binary), "run", f"{fuzz_gateway}/openapi.json",
        "--checks", "not_a_server_error",
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", "25", "--max-time", "60", "--seed", "7",
        "--workers", "1", "--request-timeout", "60", "--no-shrink",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"}
    # cwd: schemathesis keeps a cache directory (.schemathesis) where it runs.
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    # One JUnit test case per API operation: every route of the schema was exercised.
    [report] = tmp_path.glob("junit*.xml")  # the name carries a timestamp
    cases = ElementTree.parse(report).getroot().iter("testcase")
    operations = {case.get("name", "") for case in cases}
    for route in ("/v1/generate", "/v1/audio/speech", "/v1/audio/transcriptions",
                  "/v1/audio/classifications",
                  "/v1/speech/tokenize", "/v1/speech/detokenize", "/v1/chat/completions",
                  "/v1/models"):  # fmt: skip
        assert any(route in name for name in operations), (route, operations)


def test_huge_unit_values_are_client_errors(gateway: str) -> None:
    """Speech token values with thousands of digits are refused as bad input (not 500)."""
    huge = "[Hu" + "9" * 5000 + "]"
    for body in ({"tokens": huge}, {"units": {"hubert": "9" * 5000}}):
        response = httpx.post(f"{gateway}/v1/speech/detokenize", json=body, timeout=60)
        assert response.status_code in (400, 422), response.text
    body = {"inputs": [{"type": "speech", "tokens": huge}], "max_tokens": 4, "temperature": 0}
    response = httpx.post(f"{gateway}/v1/generate", json=body, timeout=60)
    assert response.status_code < 500, response.text


# ---- WebSocket frames ------------------------------------------------------------------------


def ws(url: str) -> str:
    return url.replace("http://", "ws://")


async def recv_json(connection: Any, timeout: float = 30.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(connection.recv(), timeout))


async def error_code(connection: Any) -> str:
    """The code of the next error event (other events are skipped)."""
    while True:
        event = await recv_json(connection)
        if event["type"] == "error":
            return event["error"]["code"]


async def session_still_works(connection: Any) -> None:
    await connection.send(json.dumps({"type": "session.update", "session": {"instructions": "x"}}))
    while (await recv_json(connection))["type"] != "session.updated":
        pass


async def close_code(connection: Any, timeout: float = 30.0) -> int:
    try:
        while True:
            await asyncio.wait_for(connection.recv(), timeout)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else 1006


async def send_then_close_code(connection: Any, frame: Any, text: bool | None = None) -> int:
    """The close code the server answers `frame` with (it may close while we still send)."""
    try:
        await connection.send(frame, text=text)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else 1006
    return await close_code(connection)


def test_realtime_survives_bad_frames(gateway: str) -> None:
    async def scenario() -> list[Any]:
        seen = []
        url = ws(gateway) + f"/v1/realtime?model={BASE}"
        async with connect(url, max_size=None, open_timeout=30, compression=None) as conn:
            await recv_json(conn)  # session.created
            await conn.send(b"\x00\xff binary")
            seen.append(await error_code(conn))
            await conn.send("x" * (5 * 2**20))  # over the 4 MiB event limit, under the frame one
            seen.append(await error_code(conn))
            await conn.send('{"type":"session.update","session":' + "[" * 100000 + "]" * 100000)
            seen.append(await error_code(conn))
            huge_append = {"type": "input_audio_buffer.append", "audio": "!!notbase64!!"}
            await conn.send(json.dumps(huge_append))
            seen.append(await error_code(conn))
            await session_still_works(conn)
        for compression in (None, "deflate"):  # deflate: 17 MiB that travel as a few KiB
            async with connect(url, max_size=None, open_timeout=30,
                               compression=compression) as conn:  # fmt: skip
                await recv_json(conn)
                # Over the 16 MiB frame limit: closed.
                seen.append(await send_then_close_code(conn, "y" * (17 * 2**20)))
        async with connect(url, max_size=None, open_timeout=30) as conn:
            await recv_json(conn)
            # Not UTF-8 in a text frame.
            seen.append(await send_then_close_code(conn, b'{"type":"\xff\xfe"}', text=True))
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] == "invalid_event"
    assert seen[1] == "message_too_large"
    assert seen[2] in ("invalid_json", "invalid_value")
    assert seen[3] in ("invalid_value", "invalid_audio")
    assert seen[4:] == [1009, 1009, 1007]


def test_speech_worker_stream_survives_bad_frames(servers: Servers) -> None:
    base = ws(servers.speech()) + f"/v1/stream?model={BASE}"

    async def outcome(*frames: Any, text: bool | None = None) -> tuple[str | None, int]:
        async with connect(base, max_size=None, open_timeout=30, compression=None) as conn:
            message = None
            try:
                for frame in frames:
                    await conn.send(frame, text=text)
                while True:
                    got = await asyncio.wait_for(conn.recv(), 30)
                    if isinstance(got, str):
                        message = json.loads(got).get("type")
            except ConnectionClosed as closed:
                return message, closed.rcvd.code if closed.rcvd else 1006

    async def scenario() -> list[tuple[str | None, int]]:
        huge = json.dumps({"type": "tokens", "tokens": ["[Hu1" + "0" * 5000 + "]"]})
        many = json.dumps({"type": "tokens", "tokens": ["[Hu1]"] * 100_001})
        return [
            await outcome(b"\x01\x02"),
            await outcome("{not json"),
            await outcome(json.dumps({"type": "tokens", "tokens": "[Hu1]"})),
            await outcome(huge),
            await outcome(many),
            await outcome("z" * (17 * 2**20)),
            await outcome(b'{"type":"end\xff"}', text=True),
            await outcome(
                json.dumps({"type": "tokens", "tokens": ["[Hu1]", "[Hu2]"]}),
                json.dumps({"type": "end"}),
            ),  # fmt: skip
        ]

    results = asyncio.run(scenario())
    for message, code in results[:5]:
        assert (message, code) == ("error", 1008), results
    assert results[5][1] == 1009
    assert results[6][1] == 1007
    assert results[7] == ("done", 1000)


# ---- authentication --------------------------------------------------------------------------


def raw_get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """GET with the path sent exactly as given (httpx would normalise dot segments)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": API_KEY},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": f"Token {API_KEY}"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": f"Bearer {API_KEY[:-1]}"},
        {"Authorization": f"Bearer {API_KEY}x"},
        {"Authorization": f"Bearer {API_KEY},second-key"},
        {"Authorization": f"Bearer{API_KEY}"},
        {"X-API-Key": API_KEY},
        {"Api-Key": API_KEY},
        {"Cookie": f"api_key={API_KEY}"},
    ],
    ids=lambda headers: ",".join(f"{k}:{v[:14]}" for k, v in headers.items()) or "none",
)
def test_auth_refuses_without_a_valid_bearer_key(auth_gateway: str, headers: dict) -> None:
    status, body = raw_get(auth_gateway, "/v1/models", headers)
    assert status == 401, body
    assert BASE not in body


def test_auth_accepts_both_keys_and_any_scheme_case(auth_gateway: str) -> None:
    for value in (f"Bearer {API_KEY}", f"bearer {API_KEY}", f"BEARER {API_KEY}",
                  "Bearer second-key", f"Bearer  {API_KEY} "):  # fmt: skip
        status, body = raw_get(auth_gateway, "/v1/models", {"Authorization": value})
        assert status == 200 and BASE in body, (value, status, body)


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/models?api_key={API_KEY}",
        f"/v1/models?key={API_KEY}",
        f"/v1/models?authorization=Bearer%20{API_KEY}",
        "//v1/models",
        "/v1//models",
        "/v1/models/",
        "/V1/MODELS",
        "/./v1/models",
        "/v1/./models",
        "/health/../v1/models",
        "/v1/models/../../health",
        "/static/../v1/models",
        "/static/voice/../../v1/models",
        "/static/voice/..%2F..%2Fv1%2Fmodels",
        "/docs/../v1/models",
        "/metrics/../v1/models",
        "/%2e%2e/v1/models",
        "/v1%2Fmodels",
        "/v1/models%00",
        "/v1/models#",
        "/ready/..%2f..%2fv1/models",
    ],
)
def test_auth_path_tricks_reach_nothing_protected(auth_gateway: str, path: str) -> None:
    status, body = raw_get(auth_gateway, path)
    assert status in (400, 401, 404, 405), (status, body)
    assert BASE not in body and "spirit-lm" not in body


def test_auth_protects_every_api_route_and_method(auth_gateway: str) -> None:
    with httpx.Client(base_url=auth_gateway, timeout=30) as client:
        for method, path in (("POST", "/v1/generate"), ("POST", "/v1/audio/speech"),
                             ("POST", "/v1/audio/transcriptions"), ("GET", "/v1/audio/voices"),
                             ("POST", "/v1/audio/classifications"),
                             ("POST", "/v1/speech/tokenize"), ("POST", "/v1/speech/detokenize"),
                             ("POST", "/v1/chat/completions"), ("HEAD", "/v1/models"),
                             ("OPTIONS", "/v1/models"), ("GET", f"/v1/models/{BASE}")):  # fmt: skip
            response = client.request(method, path, json={})
            assert response.status_code == 401, (method, path, response.status_code)


def test_auth_on_the_realtime_websocket(auth_gateway: str) -> None:
    url = ws(auth_gateway) + f"/v1/realtime?model={BASE}"

    async def attempt(target: str, **options: Any) -> str:
        try:
            async with connect(target, open_timeout=30, **options) as conn:
                event = await recv_json(conn)
                return event["type"]
        except ConnectionClosed as closed:
            return f"closed {closed.rcvd.code if closed.rcvd else 1006}"
        except Exception as error:  # a refused handshake
            return f"refused {type(error).__name__}"

    async def scenario() -> list[str]:
        return [
            await attempt(url),
            await attempt(url + f"&api_key={API_KEY}"),
            await attempt(url, additional_headers={"Authorization": "Bearer wrong"}),
            await attempt(url, subprotocols=["openai-insecure-api-key.wrong"]),
            await attempt(url, subprotocols=["openai-insecure-api-key."]),
            await attempt(url, additional_headers={"Authorization": f"Bearer {API_KEY}"}),
            await attempt(url, subprotocols=["realtime", f"openai-insecure-api-key.{API_KEY}"]),
        ]

    results = asyncio.run(scenario())
    assert all(not result.startswith("session") for result in results[:5]), results
    assert results[5:] == ["session.created", "session.created"], results


# ---- path traversal in parameters ------------------------------------------------------------

TRAVERSALS = ["../../../../etc/passwd", "/etc/passwd", "..%2f..%2fetc%2fpasswd",
              "spirit-lm-base-7b/../../../../etc/passwd", "spirit-lm-../../etc/passwd"]  # fmt: skip


def assert_no_leak(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    assert PASSWD_MARK not in response.text


@pytest.mark.parametrize("name", TRAVERSALS)
def test_model_names_are_not_paths(gateway: str, name: str) -> None:
    with httpx.Client(base_url=gateway, timeout=120) as client:
        responses = [
            client.get(f"/v1/models/{name}"),
            client.get("/v1/audio/voices", params={"model": name}),
            client.post(
                "/v1/generate",
                json={"model": name, "prompt": "Hi", "max_tokens": 2, "output_modality": "text"},
            ),  # fmt: skip
            client.post("/v1/speech/detokenize", json={"model": name, "tokens": "[Hu1][Hu2]"}),
        ]
    for response in responses:
        assert_no_leak(response)
    if name.startswith("spirit-lm"):
        assert all(r.status_code in (400, 404) for r in responses), [r.text for r in responses]


@pytest.mark.parametrize("name", TRAVERSALS + ["..", ".", ""])
def test_voice_and_speaker_names_are_not_paths(gateway: str, name: str) -> None:
    with httpx.Client(base_url=gateway, timeout=120) as client:
        speech = client.post("/v1/audio/speech", json={"input": "hi", "voice": name,
                                                       "max_tokens": 4})  # fmt: skip
        detokenize = client.post("/v1/speech/detokenize", json={"tokens": "[Hu1][Hu2]",
                                                                "speaker": name})  # fmt: skip
    for response in (speech, detokenize):
        assert_no_leak(response)
        assert response.status_code in (400, 404, 422), response.text


@pytest.mark.parametrize("name", TRAVERSALS + ["..", "%2e%2e", ".env", "..%5c..%5capi_router.py"])
def test_static_file_names_are_not_paths(gateway: str, name: str) -> None:
    status, body = raw_get(gateway, f"/static/voice/{name}")
    assert status == 404, body
    assert PASSWD_MARK not in body and "APIRouter" not in body


def test_upload_file_names_are_not_paths(gateway: str, speech_file: Path) -> None:
    audio = speech_file.read_bytes()
    with httpx.Client(base_url=gateway, timeout=120) as client:
        for name in TRAVERSALS:
            for content, good in ((audio, True), (b"\x00not audio", False)):
                files = {"file": (name, content, "audio/flac")}
                responses = [
                    client.post("/v1/speech/tokenize", files=files),
                    client.post(
                        "/v1/audio/transcriptions", files=files, data={"max_tokens": "2"}
                    ),  # fmt: skip
                ]
                for response in responses:
                    assert_no_leak(response)
                    assert (response.status_code == 200) == good, response.text


def test_realtime_voice_is_not_a_path(gateway: str) -> None:
    async def scenario() -> list[str]:
        codes = []
        async with connect(ws(gateway) + f"/v1/realtime?model={BASE}", open_timeout=30) as conn:
            await recv_json(conn)
            for name in TRAVERSALS:
                update = {"type": "session.update", "session": {"voice": name}}
                await conn.send(json.dumps(update))
                codes.append(await error_code(conn))
        return codes

    codes = asyncio.run(scenario())
    assert len(codes) == len(TRAVERSALS) and all(codes), codes


STALLED_SEND_SECONDS = 5.0


def test_flood_of_bad_events_from_a_client_that_never_reads(gateway: str) -> None:
    """Each bad event queues an error event; a client that never reads must not pile them up."""
    import psutil

    from service.bench.processes import listening_pid

    pid = listening_pid(gateway)
    if pid is None:
        pytest.skip("cannot see the gateway process")
    gateway_process = psutil.Process(pid)

    async def scenario() -> int:
        conn = await connect(
            ws(gateway) + f"/v1/realtime?model={BASE}",
            open_timeout=30,
            max_queue=1,
            compression=None,
            close_timeout=1,
        )
        try:
            await recv_json(conn)
            before = gateway_process.memory_info().rss
            frame = json.dumps({"type": "no.such.event", "event_id": "e" * 400})
            started = time.monotonic()
            for _ in range(60_000):
                remaining = 60 - (time.monotonic() - started)
                if remaining <= 0:
                    break
                try:
                    # A send blocked this long means the gateway stopped reading: backpressure.
                    # Without it all 60 000 sends complete and the RSS check below decides.
                    await asyncio.wait_for(conn.send(frame), min(remaining, STALLED_SEND_SECONDS))
                except TimeoutError:
                    break
            await asyncio.sleep(1.0)
            return gateway_process.memory_info().rss - before
        finally:
            # A send cut short by the timeout leaves no clean close handshake possible.
            conn.transport.abort()

    growth = asyncio.run(scenario())
    # 60 000 error events of about 800 bytes each would be about 50 MB if they piled up.
    assert growth < 24 * 2**20, f"gateway RSS grew by {growth / 2**20:.0f} MiB"
    # The aborted session ends now, not at its idle timeout.
    deadline = time.monotonic() + 15
    while realtime_sessions(gateway) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert realtime_sessions(gateway) == 0, "the aborted session is still open"


def realtime_sessions(gateway: str) -> float:
    text = httpx.get(f"{gateway}/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("spiritlm_realtime_sessions_active "))
    return float(line.split()[1])


def test_base64_and_json_bombs_are_refused(gateway: str) -> None:
    with httpx.Client(base_url=gateway, timeout=60) as client:
        responses = [
            client.post(
                "/v1/generate", content=b"[" * 200_000, headers={"Content-Type": "application/json"}
            ),  # fmt: skip
            client.post("/v1/generate", json={"inputs": [{"type": "speech", "audio": "@@@"}]}),
            client.post(
                "/v1/generate",
                json={
                    "inputs": [
                        {"type": "speech", "audio": base64.b64encode(b"\x00" * 1000).decode()}
                    ],
                    "max_tokens": 2,
                },
            ),  # fmt: skip
            client.post(
                "/v1/generate",
                content=b"x" * (26 * 2**20),
                headers={"Content-Type": "application/json"},
            ),  # fmt: skip
            client.post("/v1/generate", json={"prompt": "a", "max_tokens": 10**30}),
            client.post(
                "/v1/generate",
                content=b'{"prompt":"a","max_tokens":' + b"9" * 5000 + b"}",
                headers={"Content-Type": "application/json"},
            ),  # fmt: skip
        ]
    statuses = [response.status_code for response in responses]
    assert all(400 <= status < 500 for status in statuses), [
        (r.status_code, r.text[:200]) for r in responses
    ]
    assert statuses[3] == 413


LONE = "\\ud800"  # a JSON escape of half a surrogate pair: not Unicode text once parsed


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/generate", '{"prompt": "hi LONE there", "max_tokens": 2}', "prompt"),
        ("/v1/generate", '{"inputs": [{"type": "text", "text": "LONE"}], "stream": true}',
         "inputs.0.text"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi LONE"}]}',
         "messages.0.content"),
        ("/v1/chat/completions",
         '{"messages": [{"role": "user", "content": [{"type": "text", "text": "LONE"}]}]}',
         "messages.0.content.0.text"),
        ("/v1/speech/detokenize", '{"tokens": "[Hu1]LONE[Hu2]"}', "tokens"),
        ("/v1/generate", '{"prompt": "hi", "LONE": 1}', "\\ud800"),
    ],
    ids=["prompt", "inputs-text", "chat-string", "chat-part", "detokenize", "key"],
)  # fmt: skip
def test_text_that_is_not_unicode_is_refused_by_name(
    gateway: str, path: str, body: str, param: str
) -> None:
    content = body.replace("LONE", LONE).encode()
    headers = {"Content-Type": "application/json"}
    response = httpx.post(f"{gateway}{path}", content=content, headers=headers, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and "lone UTF-16 surrogate" in error["message"], error


def test_a_surrogate_pair_and_an_escaped_backslash_are_text(gateway: str) -> None:
    # An emoji spelt ASCII-only (two escapes), and the six characters \ud800 spelt literally.
    text = "[Text]hi \\ud83d\\ude00 \\\\ud800"
    body = '{"prompt": "' + text + '", "output_modality": "text", "max_tokens": 2}'
    headers = {"Content-Type": "application/json"}
    response = httpx.post(f"{gateway}/v1/generate", content=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": [{"type": ["text"]}]}]},
         "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": [{"type": {"a": 1}, "text": "x"}]}]},
         "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_k": 2**64}, "top_k"),
    ],
    ids=["type-list", "type-object", "top-k"],
)  # fmt: skip
def test_odd_chat_values_are_refused_by_name(gateway: str, body: dict, param: str) -> None:
    response = httpx.post(f"{gateway}/v1/chat/completions", json=body, timeout=60)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["param"] == param, response.text


def test_realtime_text_that_is_not_unicode_is_refused_and_the_session_goes_on(
    gateway: str,
) -> None:
    item = (
        '{"type": "conversation.item.create", "event_id": "evt-lone", "item": {"role": "user", '
        '"content": [{"type": "input_text", "text": "hi ' + LONE + '"}]}}'
    )

    async def scenario() -> tuple[dict[str, Any], list[str]]:
        url = ws(gateway) + f"/v1/realtime?model={BASE}"
        async with connect(url, max_size=None, open_timeout=30) as conn:
            await recv_json(conn)  # session.created
            await conn.send(item)
            while (event := await recv_json(conn))["type"] != "error":
                pass
            update = {"output_modalities": ["text"], "max_output_tokens": 2}
            await conn.send(json.dumps({"type": "session.update", "session": update}))
            await conn.send(json.dumps({"type": "response.create"}))
            seen = []
            while (done := await recv_json(conn))["type"] != "response.done":
                seen.append(done["type"] + ":" + done.get("item", {}).get("role", ""))
            return event["error"], [*seen, done["response"]["status"]]

    error, after = asyncio.run(scenario())
    assert error["param"] == "item.content.0.text" and error["event_id"] == "evt-lone", error
    assert "lone UTF-16 surrogate" in error["message"]
    # The item was not added, so the next response runs.
    assert "conversation.item.added:user" not in after and "error:" not in after, after
    assert after[-1] in ("completed", "incomplete"), after


# ---- fail closed: key settings, start-up posture, bounded metric labels ----------------------


@pytest.mark.parametrize("value", [",", " , sk-secret", "sk-secret,", "sk-secret,,other"])
def test_empty_api_key_entries_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SPIRITLM_API_KEYS", value)
    with pytest.raises(SpiritError, match="^api_keys has an empty entry") as refused:
        GatewaySettings()
    assert "sk-secret" not in str(refused.value)  # the keys are never echoed


def test_an_empty_api_keys_value_means_no_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("", "  "):
        monkeypatch.setenv("SPIRITLM_API_KEYS", value)
        assert GatewaySettings().api_keys == []
    monkeypatch.setenv("SPIRITLM_API_KEYS", " a , b ")
    assert GatewaySettings().api_keys == ["a", "b"]


def test_running_without_keys_is_never_silent(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("SPIRITLM_API_KEYS", raising=False)
    seen: dict[str, list[tuple[int, str]]] = {}
    for host in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "::", "10.1.2.3", "gateway.local"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="spiritlm.gateway"):
            log_auth_posture(GatewaySettings(host=host))
        seen[host] = [(record.levelno, record.getMessage()) for record in caplog.records]
    for host in ("127.0.0.1", "::1", "localhost"):
        [(level, message)] = seen[host]
        assert level == logging.WARNING and "no API keys" in message, (host, seen[host])
    for host in ("0.0.0.0", "::", "10.1.2.3", "gateway.local"):
        [(level, message)] = seen[host]
        assert level == logging.ERROR and "beyond loopback" in message, (host, seen[host])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="spiritlm.gateway"):
        log_auth_posture(GatewaySettings(host="0.0.0.0", api_keys="k"))
    assert not caplog.records


def test_metric_labels_stay_bounded_whatever_the_client_sends() -> None:
    metrics = GatewayMetrics()

    async def not_found(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=AccessLogMiddleware(not_found, metrics=metrics))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            for index in range(200):
                await client.request(f"M{index}X", f"/probe/{index}")
            await client.request("GET", "/probe/get")

    asyncio.run(scenario())
    text = generate_latest(metrics.registry).decode()
    assert "M1X" not in text and "/probe" not in text
    requests = [line for line in text.splitlines() if line.startswith("spiritlm_requests_total{")]
    assert len(requests) == 2, requests  # GET and "other", both on the route "unmatched"
    assert 'method="other"' in text and 'route="unmatched"' in text


# ---- format checks: every format x rate either encodes or is refused up front ----------------


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_every_format_and_rate_the_check_allows_encodes(fmt: str) -> None:
    source_rate = 16000
    tone = (0.2 * np.sin(np.arange(source_rate // 5) * 2 * np.pi * 440 / source_rate)).astype(
        np.float32
    )
    refused = []
    for rate in SAMPLE_RATES:
        try:
            check_output_format(fmt, rate)
        except OutputFormatError as error:
            assert error.param == "sample_rate" and "sample_rate must be one of" in str(error)
            refused.append(rate)
            continue
        assert encode_audio(tone, source_rate, fmt, output_rate=rate), (fmt, rate)
        stream = StreamEncoder(fmt, rate, input_rate=source_rate)
        assert stream.write(tone) + stream.close(), (fmt, rate)
    assert refused == ([22050, 32000, 44100] if fmt == "opus" else [])


def test_the_format_check_names_the_field_at_fault() -> None:
    with pytest.raises(OutputFormatError, match="sample_rate 11025 is not supported") as refused:
        check_output_format("wav", 11025)
    assert refused.value.param == "sample_rate"
    with pytest.raises(OutputFormatError, match="unsupported audio format") as refused:
        check_output_format("ogg", 16000, format_param="audio.format")
    assert refused.value.param == "audio.format"
    with pytest.raises(OutputFormatError, match="opus cannot be encoded at 44100 Hz") as refused:
        check_output_format("opus", 44100, rate_param="session.rate")
    assert refused.value.param == "session.rate"


# ---- fail closed against the running gateway: CORS, origins, internals ----------------------

ALLOWED_ORIGIN = "https://app.example"
EVIL_ORIGIN = "https://evil.example"


@pytest.fixture(scope="module")
def cors_gateway(servers: Servers) -> str:
    return servers.gateway(
        BASE, "--api-keys", API_KEY, "--cors-origins", ALLOWED_ORIGIN,
        "--metrics-require-auth", "true", name="cors",
    )  # fmt: skip


def test_cors_preflight_is_answered_before_auth(cors_gateway: str) -> None:
    preflight = {
        "Origin": ALLOWED_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    for path in ("/v1/chat/completions", "/v1/generate", "/v1/models"):
        response = httpx.options(cors_gateway + path, headers=preflight, timeout=30)
        assert response.status_code == 200, (path, response.status_code, response.text)
        assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert "POST" in response.headers["access-control-allow-methods"]
        assert "authorization" in response.headers["access-control-allow-headers"].lower()
    evil = httpx.options(
        cors_gateway + "/v1/generate", headers={**preflight, "Origin": EVIL_ORIGIN}, timeout=30
    )
    assert evil.status_code >= 400 and "access-control-allow-origin" not in evil.headers
    # Not a preflight (no Access-Control-Request-Method): an OPTIONS request like any other.
    plain = httpx.options(cors_gateway + "/v1/models", headers={"Origin": ALLOWED_ORIGIN})
    assert plain.status_code == 401


def test_refusals_carry_cors_headers_a_browser_can_read(cors_gateway: str) -> None:
    refused = httpx.get(cors_gateway + "/v1/models", headers={"Origin": ALLOWED_ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "x-request-id" in refused.headers["access-control-expose-headers"].lower()
    accepted = httpx.get(
        cors_gateway + "/v1/models",
        headers={"Origin": ALLOWED_ORIGIN, "Authorization": f"Bearer {API_KEY}"},
    )
    assert accepted.status_code == 200 and BASE in accepted.text
    assert accepted.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    other = httpx.get(cors_gateway + "/v1/models", headers={"Origin": EVIL_ORIGIN})
    assert other.status_code == 401 and "access-control-allow-origin" not in other.headers


def test_metrics_can_require_a_key(cors_gateway: str, auth_gateway: str) -> None:
    assert httpx.get(cors_gateway + "/metrics", timeout=30).status_code == 401
    keyed = httpx.get(
        cors_gateway + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    )
    assert keyed.status_code == 200 and "spiritlm_worker_healthy" in keyed.text
    assert httpx.get(cors_gateway + "/health", timeout=30).status_code == 200
    assert httpx.get(cors_gateway + "/ready", timeout=30).status_code == 200
    # The default: /metrics stays open to Prometheus without a key.
    assert httpx.get(auth_gateway + "/metrics", timeout=30).status_code == 200


def test_worker_urls_only_reach_authenticated_callers(servers: Servers, auth_gateway: str) -> None:
    internal = (servers.lm(BASE), servers.speech())
    ready = httpx.get(auth_gateway + "/ready", timeout=30)
    assert ready.status_code == 200
    assert ready.json()["lm_workers"] == {"lm-0": True}
    assert ready.json()["speech_workers"] == {"speech-0": True}
    metrics = httpx.get(auth_gateway + "/metrics", timeout=30).text
    assert 'spiritlm_worker_healthy{kind="lm",worker="lm-0"} 1.0' in metrics
    for text in (ready.text, metrics):
        assert not any(url in text for url in internal) and "127.0.0.1" not in text
    keyed = {"Authorization": f"Bearer {API_KEY}"}
    ready = httpx.get(auth_gateway + "/ready", headers=keyed, timeout=30).json()
    assert ready["lm_workers"] == {internal[0]: True}
    assert ready["speech_workers"] == {internal[1]: True}


def test_unknown_http_methods_do_not_grow_the_metrics(gateway: str) -> None:
    host, port = gateway.removeprefix("http://").split(":")
    for index in range(20):
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.request(f"BREW{index}X", f"/v1/models/probe{index}")
            status = connection.getresponse().status
        except (http.client.HTTPException, ConnectionError):
            status = None  # some HTTP parsers drop the connection on an unknown method
        finally:
            connection.close()
        assert status is None or 400 <= status < 500, status
    text = httpx.get(gateway + "/metrics", timeout=30).text
    assert "BREW" not in text and "probe" not in text


async def handshake(url: str, **options: Any) -> str:
    """'session.created', or how the handshake was refused ('http 403', 'closed 1008')."""
    try:
        async with connect(url, open_timeout=30, **options) as conn:
            return (await recv_json(conn))["type"]
    except InvalidStatus as refused:
        return f"http {refused.response.status_code}"
    except ConnectionClosed as closed:
        return f"closed {closed.rcvd.code if closed.rcvd else 1006}"


def test_websocket_origins_are_checked(gateway: str, cors_gateway: str) -> None:
    url = ws(gateway) + f"/v1/realtime?model={BASE}"
    keyed_url = ws(cors_gateway) + f"/v1/realtime?model={BASE}"
    key = {"subprotocols": ["realtime", f"openai-insecure-api-key.{API_KEY}"]}

    async def scenario() -> list[str]:
        return [
            # A keyless gateway: no page from another origin may drive it.
            await handshake(url, origin=EVIL_ORIGIN),
            await handshake(url, origin="null"),
            await handshake(url, origin=gateway),  # the gateway's own page at /
            await handshake(url),  # not a browser: no Origin
            # Keys and an allowed origin: the origin check comes on top of the key.
            await handshake(keyed_url, origin=EVIL_ORIGIN, **key),
            await handshake(keyed_url, origin=ALLOWED_ORIGIN, **key),
            await handshake(keyed_url, origin=ALLOWED_ORIGIN),
        ]

    results = asyncio.run(scenario())
    assert results[:2] == ["http 403", "http 403"], results
    assert results[2:4] == ["session.created", "session.created"], results
    assert results[4] == "http 403", results
    assert results[5] == "session.created", results
    assert results[6] == "http 403", results


class _DroppingWorker(http.server.BaseHTTPRequestHandler):
    """A worker that passes health checks, then drops every API call without an answer."""

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/v1/models"):
            cards = [{"id": BASE, "object": "model", "max_model_len": 4096}]
            self._json({"object": "list", "data": cards})
        elif self.path in ("/health", "/ready"):
            self._json({"status": "ok"})
        else:
            self.close_connection = True

    def do_POST(self) -> None:  # noqa: N802
        self.close_connection = True  # no status line: the client sees the connection drop

    def _json(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def gateway_of_failing_workers(servers: Servers) -> Iterator[tuple[str, str]]:
    """(gateway URL, worker URL): a keyed gateway whose LM and speech worker both fail."""
    worker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DroppingWorker)
    threading.Thread(target=worker.serve_forever, daemon=True).start()
    worker_url = f"http://127.0.0.1:{worker.server_address[1]}"
    port = free_port()
    argv = [sys.executable, "-m", "service", "gateway", "--port", str(port), "--model", BASE,
            "--lm-url", worker_url, "--speech-url", worker_url, "--api-keys", API_KEY]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    child = servers.spawn("gateway-failing-workers", argv, url, "/ready", 120)
    try:
        yield url, worker_url
    finally:
        child.stop()
        worker.shutdown()


def test_worker_failures_leave_no_internals_in_client_bodies(
    gateway_of_failing_workers: tuple[str, str],
) -> None:
    gateway, worker_url = gateway_of_failing_workers
    port = worker_url.rsplit(":", 1)[1]
    keyed = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=gateway, headers=keyed, timeout=60) as client:
        generated = client.post(
            "/v1/generate", json={"prompt": "[Text]hi", "output_modality": "text", "max_tokens": 4}
        )
        streamed = client.post(
            "/v1/generate",
            json={"prompt": "[Text]hi", "output_modality": "text", "max_tokens": 4, "stream": True},
        )
        detokenized = client.post("/v1/speech/detokenize", json={"tokens": "[Hu1][Hu2][Hu3]"})
    assert generated.status_code == 503, generated.text
    assert generated.json()["error"]["message"] == "LM worker unavailable"
    assert detokenized.status_code == 503, detokenized.text
    assert detokenized.json()["error"]["message"] == "speech worker unavailable"
    ready = httpx.get(gateway + "/ready", timeout=30)
    for response in (generated, streamed, detokenized, ready):
        body = response.text
        assert worker_url not in body and port not in body and "127.0.0.1" not in body, body
        assert "Error" not in body and "disconnected" not in body.lower(), body
