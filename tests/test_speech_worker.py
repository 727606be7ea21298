"""The speech worker as a real process, driven through SpeechClient.

One worker serves both variants for the whole module (embedded tiny checkpoints generated in a
session tmp dir). Its answers are compared with the same SpeechStack run in this process, so a
wrong route, a lost chunk or a mis-placed context cut shows up as different audio. A second
worker, started with the internal credential, checks that every route but the probes and
metrics refuses calls without it (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import random
import re
import shutil
import subprocess
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.audio.decode import F32LE_CONTENT_TYPE, decode_to_f32le, load_audio_file
from service.audio.encode import encode_audio
from service.checkpoints.layout import BASE, EXPRESSIVE, CheckpointLayout
from service.checkpoints.make import embedded_checkpoints
from service.process import ChildProcess, free_port, python_module_argv
from service.speech.pipeline import (
    ROOM_TONE_LEVEL,
    ROOM_TONE_SEED,
    SILENCE_SECONDS,
    SpeechStack,
)
from service.speech.vocoder import shape_bucket
from service.speech_worker.client import (
    EncodeResult,
    SpeechClient,
    SpeechStream,
    SpeechWorkerError,
    SpeechWorkerUnavailable,
)
from service.units.tokens import Units, string_to_units, units_to_string
from tests.support.servers import INTERNAL_API_KEY, with_internal_key
from tests.support.threads import torch_threads

SPEECH_FILE = Path("/work/shared/data/7143-88743-0029.flac")
TOKEN = re.compile(r"\[(?:Hu|Pi|St)[0-9]+\]")
MAX_STREAMS = 2
MAX_TOKENS = 3000
MAX_BODY = 1_000_000
FIRST_CHUNK_UNITS = 4
CHUNK_UNITS = 8
T = TypeVar("T")

pytestmark = pytest.mark.skipif(not SPEECH_FILE.is_file(), reason="speech sample missing")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Same thread count as the worker (OMP_NUM_THREADS=1), so float results match exactly."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spiritlm-cache")


@pytest.fixture(scope="module")
def layout(cache_dir: Path) -> CheckpointLayout:
    return embedded_checkpoints(cache_dir, progress=lambda _: None)


def worker_env(cache_dir: Path) -> dict[str, str]:
    return {**os.environ, "SPIRITLM_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def worker(layout: CheckpointLayout, cache_dir: Path, tmp_path_factory) -> Iterator[str]:
    port = free_port()
    argv = python_module_argv(
        "service",
        "speech-worker",
        "--models",
        f"{BASE},{EXPRESSIVE}",
        "--port",
        str(port),
        "--max-streams",
        str(MAX_STREAMS),
        "--max-tokens",
        str(MAX_TOKENS),
        "--speech-max-body-bytes",
        str(MAX_BODY),
        "--first-chunk-units",
        str(FIRST_CHUNK_UNITS),
        "--chunk-units",
        str(CHUNK_UNITS),
        # Batched rendering across streams (1 by default on a CPU), so the streaming tests
        # check the scheduler's batched path against one-shot synthesis too.
        "--vocoder-batch-size",
        "4",
        # Streams ahead of their listener hold back (off by default), so the streaming tests
        # check that path too.
        "--stream-lead-seconds",
        "1",
    )
    log_dir = tmp_path_factory.mktemp("speech-worker")
    yield from running_worker("speech worker", argv, port, worker_env(cache_dir), log_dir)


def running_worker(
    name: str, argv: list[str], port: int, env: dict[str, str], log_dir: Path
) -> Iterator[str]:
    """Start a speech worker, give its URL once it is ready, stop it afterwards."""
    url = f"http://127.0.0.1:{port}"
    log_path = str(log_dir / "worker.log")
    child = ChildProcess(name, argv, f"{url}/ready", env=env, log_path=log_path)
    child.start()
    try:
        child.wait_healthy(timeout=300)
        yield url
    finally:
        child.stop()


@pytest.fixture(scope="module")
def stacks(layout: CheckpointLayout) -> dict[str, SpeechStack]:
    out = {name: SpeechStack(layout, name) for name in (BASE, EXPRESSIVE)}
    for stack in out.values():
        stack.load()
    return out


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio_file(SPEECH_FILE)


@pytest.fixture(scope="module")
def token_lists(stacks: dict[str, SpeechStack], speech: np.ndarray) -> dict[str, list[str]]:
    """Token strings of the first ~3 s of the sample, as a list per variant."""
    clip = speech[: 3 * 16000]
    return {name: TOKEN.findall(stack.encode_string(clip)) for name, stack in stacks.items()}


def run(coroutine: Awaitable[T], timeout: float = 120) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def pcm16(wav: np.ndarray) -> np.ndarray:
    return np.frombuffer(encode_audio(wav, 16000, "pcm"), dtype="<i2").astype(np.int32)


def as_samples(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.int32)


def assert_pcm_close(got: np.ndarray, want: np.ndarray, lsb: int = 1) -> None:
    assert len(got) == len(want)
    assert len(want) > 0
    assert np.abs(got - want).max() <= lsb


def hubert_count(tokens: list[str]) -> int:
    return sum(1 for token in tokens if token.startswith("[Hu"))


async def metric(url: str, name: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{url}/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def ready(url: str) -> bool:
    async with SpeechClient(url) as client:
        return await client.ready()


async def wait_no_streams(url: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while await metric(url, "spiritlm_speech_active_streams") != 0:
        assert asyncio.get_running_loop().time() < deadline, "streams were not freed"
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------- status, encode


def test_health_ready_metrics(worker: str) -> None:
    async def check() -> tuple[bool, bool, dict, str]:
        async with SpeechClient(worker) as client, httpx.AsyncClient() as http:
            ready = (await http.get(f"{worker}/ready")).json()
            metrics = (await http.get(f"{worker}/metrics")).text
            return await client.health(), await client.ready(), ready, metrics

    health, ready, body, metrics = run(check())
    assert health and ready
    assert body["models"] == [BASE, EXPRESSIVE]
    assert "spiritlm_speech_active_streams" in metrics
    assert 'spiritlm_speech_requests_total{route="/ready",status="200"}' in metrics


@pytest.mark.parametrize("model", [BASE, EXPRESSIVE])
def test_encode_equals_in_process(
    worker: str, stacks: dict[str, SpeechStack], speech: np.ndarray, model: str
) -> None:
    async def encode() -> EncodeResult:
        async with SpeechClient(worker) as client:
            return await client.encode(SPEECH_FILE.read_bytes(), model)

    result = run(encode())
    units = stacks[model].encode_units(speech)
    assert result.model == model
    assert result.units == units.to_dict()
    assert result.tokens == units_to_string(units, expressive=model == EXPRESSIVE)
    assert result.seconds == pytest.approx(len(speech) / 16000)
    assert set(result.units) == ({"hubert"} if model == BASE else {"hubert", "pitch", "style"})


# ---------------------------------------------------------------------------- silence units


def test_silence_units_are_the_units_of_the_silence_signal(layout: CheckpointLayout) -> None:
    samples = int(SILENCE_SECONDS * 16000)
    noise = np.random.default_rng(ROOM_TONE_SEED).standard_normal(samples) * ROOM_TONE_LEVEL
    stack = SpeechStack(layout, BASE)
    want: set[int] = set()
    for signal in (np.zeros(samples), noise):
        want |= set(stack.encode_units(signal.astype(np.float32)).hubert)
    got = stack.silence_units()
    assert isinstance(got, frozenset)
    assert got == want
    assert stack.silence_units() is got  # computed once per stack


def test_silence_units_route_equals_in_process(worker: str, stacks: dict[str, SpeechStack]) -> None:
    async def get() -> tuple[httpx.Response, frozenset[int]]:
        async with SpeechClient(worker) as client, httpx.AsyncClient() as http:
            response = await http.get(f"{worker}/v1/models/{BASE}/silence")
            return response, await client.silence_units(BASE)

    response, from_client = run(get())
    want = stacks[BASE].silence_units()
    assert response.status_code == 200
    body = response.json()
    assert body == {"model": BASE, "silence_units": sorted(want)}
    assert want and max(want) < stacks[BASE].quantizer.vocab_size and min(want) >= 0
    assert from_client == want


def test_silence_units_of_unknown_model_is_404(worker: str) -> None:
    async def get() -> tuple[httpx.Response, SpeechWorkerError]:
        async with SpeechClient(worker) as client, httpx.AsyncClient() as http:
            response = await http.get(f"{worker}/v1/models/nope/silence")
            with pytest.raises(SpeechWorkerError) as error:
                await client.silence_units("nope")
            return response, error.value

    response, error = run(get())
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert error.status == 404 and "'nope'" in error.message


@pytest.mark.parametrize(
    "answer",
    [
        b"not json",
        b'{"model": "spirit-lm-base-7b"}',
        b'{"model": "spirit-lm-base-7b", "silence_units": [1, -2]}',
        b'{"model": "spirit-lm-base-7b", "silence_units": [1, 2.5]}',
        b'{"model": "spirit-lm-base-7b", "silence_units": ["3"]}',
        b'{"model": "spirit-lm-base-7b", "silence_units": [true]}',
        b'{"model": "spirit-lm-base-7b", "silence_units": 3}',
        b'{"model": "spirit-lm-expressive-7b", "silence_units": [3]}',
    ],
)
def test_bad_silence_units_answer_is_unavailable(answer: bytes) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/v1/models/{BASE}/silence"
        return httpx.Response(200, content=answer)

    async def get() -> frozenset[int]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await SpeechClient("http://worker", http=http).silence_units(BASE)

    with pytest.raises(SpeechWorkerUnavailable):
        run(get())


def test_good_silence_units_answer() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"model": BASE, "silence_units": [0, 7, 7]})

    async def get() -> frozenset[int]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await SpeechClient("http://worker", http=http).silence_units(BASE)

    assert run(get()) == frozenset({0, 7})


# ---------------------------------------------------------------------------- decode


@pytest.mark.parametrize("model", [BASE, EXPRESSIVE])
def test_decode_equals_in_process(
    worker: str, stacks: dict[str, SpeechStack], token_lists: dict[str, list[str]], model: str
) -> None:
    tokens = "".join(token_lists[model])

    async def decode() -> tuple[bytes, bytes]:
        async with SpeechClient(worker) as client:
            pcm = await client.decode(model=model, tokens=tokens, speaker=1, format="pcm")
            wav = await client.decode(model=model, tokens=tokens, speaker=1, format="wav")
            return pcm, wav

    pcm, wav = run(decode())
    want = pcm16(stacks[model].decode(tokens, speaker=1))
    assert_pcm_close(as_samples(pcm), want)
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    assert_pcm_close(as_samples(wav[44:]), want)


def test_decode_raw_expressive_units(
    worker: str, stacks: dict[str, SpeechStack], speech: np.ndarray
) -> None:
    """Raw encoder units take the no-duration-prediction path (pitch count != unit count)."""
    units = stacks[EXPRESSIVE].encode_units(speech[: 2 * 16000])
    assert units.pitch is not None and len(units.pitch) != len(units.hubert)

    async def decode() -> bytes:
        async with SpeechClient(worker) as client:
            return await client.decode(model=EXPRESSIVE, units=units.to_dict(), format="pcm")

    want = pcm16(stacks[EXPRESSIVE].decode(units))
    assert_pcm_close(as_samples(run(decode())), want)


def test_decode_sample_rate(
    worker: str, stacks: dict[str, SpeechStack], token_lists: dict[str, list[str]]
) -> None:
    tokens = "".join(token_lists[BASE][:40])

    async def decode() -> bytes:
        async with SpeechClient(worker) as client:
            return await client.decode(model=BASE, tokens=tokens, format="pcm", sample_rate=24000)

    wav = stacks[BASE].decode(tokens)
    want = np.frombuffer(encode_audio(wav, 16000, "pcm", output_rate=24000), dtype="<i2")
    assert_pcm_close(as_samples(run(decode())), want.astype(np.int32))


# ---------------------------------------------------------------------------- streaming


async def stream_tokens(
    url: str,
    model: str,
    pieces: list[tuple[list[str], bool]],
    *,
    sample_rate: int = 16000,
    speaker: int = 2,
) -> tuple[bytes, int | None, int]:
    """Send the pieces, await one audio chunk before `end`, then collect the rest.

    Returns the audio, the `done` sample count and the chunks received before `end` was sent.
    """
    async with SpeechClient(url) as client, client.stream(model, speaker, sample_rate) as stream:
        chunks = aiter(stream)
        for tokens, context in pieces:
            await stream.send_tokens(tokens, context=context)
        received = [await asyncio.wait_for(anext(chunks), 60)]
        before_end = len(received)
        await stream.end()
        received += [chunk async for chunk in chunks]
        return b"".join(received), stream.samples, before_end


def in_pieces(tokens: list[str], size: int, context: bool = False) -> list[tuple[list[str], bool]]:
    return [(tokens[i : i + size], context) for i in range(0, len(tokens), size)]


@pytest.mark.parametrize("model", [BASE, EXPRESSIVE])
def test_stream_equals_one_shot_and_starts_early(
    worker: str, stacks: dict[str, SpeechStack], token_lists: dict[str, list[str]], model: str
) -> None:
    tokens = token_lists[model]
    assert hubert_count(tokens) > FIRST_CHUNK_UNITS + 7 + 2  # enough for audio before `end`
    audio, samples, before_end = run(stream_tokens(worker, model, in_pieces(tokens, 7)))
    assert before_end >= 1
    assert samples == len(audio) // 2
    want = pcm16(stacks[model].decode("".join(tokens)))
    assert_pcm_close(as_samples(audio), want)


def test_a_burst_of_tokens_gives_a_small_first_chunk_then_large_ones(
    worker: str, stacks: dict[str, SpeechStack], token_lists: dict[str, list[str]]
) -> None:
    # All tokens in one message, as when a stream fell behind: the first audio is the first
    # chunk alone (its units, and the ready ones that fit in its pass's padded length), the
    # rest comes in chunks of up to max_chunk_units (default 100), not CHUNK_UNITS; the audio
    # is the same as one-shot.
    tokens = token_lists[BASE]
    stack = stacks[BASE]

    async def frames() -> list[bytes]:
        async with SpeechClient(worker) as client, client.stream(BASE, 2, 16000) as stream:
            await stream.send_tokens(tokens)
            await stream.end()
            return [chunk async for chunk in stream]

    received = run(frames())
    units = stack.decode_units("".join(tokens)).hubert
    durations = stack.vocoder.durations(units)
    first_frames = len(received[0]) // 2 // 640
    smallest = sum(durations[:FIRST_CHUNK_UNITS])
    right = stack.vocoder.frame_context[1]
    assert smallest <= first_frames <= shape_bucket(smallest + right) - right
    assert first_frames in np.cumsum(durations)  # whole units
    assert len(received) < (len(units) - FIRST_CHUNK_UNITS) // CHUNK_UNITS
    want = pcm16(stack.decode("".join(tokens)))
    assert_pcm_close(as_samples(b"".join(received)), want)


def test_a_stream_ahead_of_its_listener_renders_larger_chunks(
    worker: str, stacks: dict[str, SpeechStack], token_lists: dict[str, list[str]]
) -> None:
    # Units arriving at about 4x real time, 5 at a time: once the listener has more than
    # stream_lead_seconds (1 s here) of audio, the stream waits and renders what queued in
    # chunks of up to max_chunk_units, not one CHUNK_UNITS chunk at a time; same audio.
    tokens = token_lists[BASE]
    stack = stacks[BASE]
    pieces = in_pieces(tokens, 5)

    async def frames() -> list[bytes]:
        async with SpeechClient(worker) as client, client.stream(BASE, 2, 16000) as stream:
            for piece, _ in pieces:
                await stream.send_tokens(piece)
                await asyncio.sleep(0.05)
            await stream.end()
            return [chunk async for chunk in stream]

    received = run(frames())
    units = stack.decode_units("".join(tokens)).hubert
    assert len(received) < (len(units) - FIRST_CHUNK_UNITS) // CHUNK_UNITS
    want = pcm16(stack.decode("".join(tokens)))
    assert_pcm_close(as_samples(b"".join(received)), want)


def test_concurrent_streams_share_forward_passes_and_keep_their_audio(
    worker: str, stacks: dict[str, SpeechStack], token_lists: dict[str, list[str]]
) -> None:
    # Two streams with different speakers at once: the scheduler renders their chunks in shared
    # forward passes (batch size 4 here), and each stream still gets its own one-shot audio.
    tokens = token_lists[BASE]
    stack = stacks[BASE]

    async def one(speaker: int) -> bytes:
        async with SpeechClient(worker) as client, client.stream(BASE, speaker, 16000) as stream:
            for piece, _ in in_pieces(tokens, 9):
                await stream.send_tokens(piece)
            await stream.end()
            return b"".join([chunk async for chunk in stream])

    async def both() -> tuple[list[bytes], float]:
        before = await metric(worker, "spiritlm_speech_vocoder_batch_size_count")
        audio = await asyncio.gather(one(0), one(3))
        after = await metric(worker, "spiritlm_speech_vocoder_batch_size_count")
        return list(audio), after - before

    audio, passes = run(both())
    for speaker, data in zip((0, 3), audio, strict=True):
        assert_pcm_close(as_samples(data), pcm16(stack.decode("".join(tokens), speaker=speaker)))
    assert passes > 0  # the streams' chunks went through the scheduler


def test_stream_resamples_like_one_shot(
    worker: str, stacks: dict[str, SpeechStack], token_lists: dict[str, list[str]]
) -> None:
    tokens = token_lists[EXPRESSIVE]
    audio, samples, _ = run(
        stream_tokens(worker, EXPRESSIVE, in_pieces(tokens, 11), sample_rate=24000)
    )
    wav = stacks[EXPRESSIVE].decode("".join(tokens))
    want = np.frombuffer(encode_audio(wav, 16000, "pcm", output_rate=24000), dtype="<i2")
    assert samples == len(audio) // 2
    assert_pcm_close(as_samples(audio), want.astype(np.int32))


@pytest.mark.parametrize("model", [BASE, EXPRESSIVE])
def test_stream_leaves_out_context_audio_exactly(
    worker: str, stacks: dict[str, SpeechStack], token_lists: dict[str, list[str]], model: str
) -> None:
    tokens = token_lists[model]
    split = len(tokens) // 3
    context, generated = tokens[:split], tokens[split:]
    pieces = in_pieces(context, 5, context=True) + in_pieces(generated, 5)
    audio, samples, _ = run(stream_tokens(worker, model, pieces))
    # The reference cut: the samples of the context units, from the same duration predictor.
    stack = stacks[model]
    code = "".join(tokens)
    durations = stack.vocoder.durations(string_to_units(code).hubert)
    cut = sum(durations[: hubert_count(context)]) * stack.vocoder.hop_length
    full = pcm16(stack.decode(code))
    assert 0 < cut < len(full)
    assert samples == len(audio) // 2
    assert_pcm_close(as_samples(audio), full[cut:])


def test_stream_of_context_only_sends_no_audio(
    worker: str, token_lists: dict[str, list[str]]
) -> None:
    async def stream() -> tuple[list[bytes], int | None]:
        async with SpeechClient(worker) as client, client.stream(BASE) as stream:
            await stream.send_tokens(token_lists[BASE], context=True)
            await stream.end()
            return [chunk async for chunk in stream], stream.samples

    chunks, samples = run(stream())
    assert chunks == [] and samples == 0


def test_cancel_and_disconnect_free_the_session(
    worker: str, token_lists: dict[str, list[str]]
) -> None:
    # Long enough that the worker is still vocoding when the cancel arrives.
    tokens = (token_lists[EXPRESSIVE] * 6)[:MAX_TOKENS]

    async def cancel_midway() -> tuple[int | None, float]:
        async with SpeechClient(worker) as client, client.stream(EXPRESSIVE) as stream:
            await stream.send_tokens(tokens)
            chunks = aiter(stream)
            await asyncio.wait_for(anext(chunks), 60)
            await stream.cancel()
            rest = [chunk async for chunk in chunks]
            assert len(rest) < 50
            await wait_no_streams(worker)
            return stream.samples, await metric(worker, "spiritlm_speech_streams_total")

    async def disconnect_midway() -> None:
        async with SpeechClient(worker) as client, client.stream(BASE) as stream:
            await stream.send_tokens(token_lists[BASE])
            await asyncio.wait_for(anext(aiter(stream)), 60)
        await wait_no_streams(worker)

    samples, _ = run(cancel_midway())
    assert samples is None  # no `done`: the stream stopped
    run(disconnect_midway())

    async def outcomes() -> tuple[float, float]:
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"{worker}/metrics")).text
        found = re.findall(r'spiritlm_speech_streams_total\{model="[^"]+",outcome="(\w+)"\}', text)
        return float("cancelled" in found), float("disconnected" in found)

    assert run(outcomes()) == (1.0, 1.0)
    assert run(ready(worker))


def test_too_many_streams_is_429(worker: str, token_lists: dict[str, list[str]]) -> None:
    async def overflow() -> SpeechWorkerError:
        await wait_no_streams(worker)
        client = SpeechClient(worker)
        first, second = client.stream(BASE), client.stream(BASE)
        async with first, second:
            with pytest.raises(SpeechWorkerError) as refused:
                async with client.stream(BASE):
                    pass
        # Closing the two frees their places.
        await wait_no_streams(worker)
        audio, _, _ = await stream_tokens(worker, BASE, [(token_lists[BASE], False)])
        assert audio
        await client.aclose()
        return refused.value

    error = run(overflow())
    assert error.status == 429
    assert "too many synthesis streams" in error.message


# ---------------------------------------------------------------------------- bad input


BAD_HTTP = [
    ("encode", {"audio": b"this is not audio at all", "model": BASE}, 400, "could not decode"),
    ("encode", {"audio": b"", "model": BASE}, 400, "audio is empty"),
    ("encode", {"audio": b"RIFF" + bytes(MAX_BODY), "model": BASE}, 413, "exceeds"),
    ("encode", {"audio": b"x", "model": "spirit-lm-huge"}, 404, "'spirit-lm-huge'"),
    ("decode", {"model": "nope", "tokens": "[Hu1]"}, 404, "'nope'"),
    ("decode", {"model": BASE, "tokens": "[Hu1][Hu1x]"}, 400, "malformed speech token"),
    ("decode", {"model": BASE, "tokens": "[Hu1][Hu100000]"}, 400, "out of range"),
    ("decode", {"model": BASE, "tokens": "hello"}, 400, "no HuBERT units"),
    ("decode", {"model": BASE, "tokens": "[Hu1][Hu2]", "speaker": 99}, 400, "speaker 99"),
    ("decode", {"model": BASE, "units": {"hubert": "1 x"}}, 400, "'x' is not an integer"),
    ("decode", {"model": BASE, "units": {"hubert": "-1 -2"}}, 400, "no HuBERT units"),
    ("decode", {"model": BASE}, 422, "exactly one of 'tokens' and 'units'"),
    ("decode", {"model": BASE, "tokens": "[Hu1]", "format": "ogg"}, 422, "format"),
    ("decode", {"model": BASE, "tokens": "[Hu1]", "sample_rate": 12345}, 400, "sample_rate"),
    ("decode", {"model": EXPRESSIVE, "tokens": "[Hu1][Hu2]"}, 400, "pitch"),
    ("decode", {"model": BASE, "tokens": "[Hu1][Pi3][Hu2]"}, 400, "need the expressive model"),
    (
        "decode",
        {"model": BASE, "units": {"hubert": "1 2", "style": "3"}},
        400,
        "units: pitch and style units",
    ),
    ("decode", {"model": BASE, "tokens": "[Hu1]" * (MAX_TOKENS + 1)}, 400, "limit"),
]


@pytest.mark.parametrize(("route", "request_args", "status", "text"), BAD_HTTP)
def test_bad_http_requests(
    worker: str, route: str, request_args: dict, status: int, text: str
) -> None:
    async def call() -> SpeechWorkerError:
        async with SpeechClient(worker) as client:
            with pytest.raises(SpeechWorkerError) as error:
                await getattr(client, route)(**request_args)
            assert await client.health()
            return error.value

    error = run(call())
    assert error.status == status
    assert text in error.message


def test_unknown_fields_and_types_are_named(worker: str) -> None:
    async def post(body: dict) -> httpx.Response:
        async with httpx.AsyncClient() as http:
            return await http.post(f"{worker}/v1/decode", json=body)

    response = run(post({"model": BASE, "tokens": "[Hu1]", "speaker": "two"}))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "speaker" and error["type"] == "invalid_request_error"
    response = run(post({"model": BASE, "tokens": "[Hu1]", "voice": "x"}))
    assert response.status_code == 422 and response.json()["error"]["param"] == "voice"


BAD_HANDSHAKES = [
    ({"model": "nope"}, 404, "'nope'"),
    ({"model": BASE, "speaker": 99}, 400, "speaker 99"),
    ({"model": BASE, "sample_rate": 11111}, 400, "sample_rate 11111"),
]


@pytest.mark.parametrize(("args", "status", "text"), BAD_HANDSHAKES)
def test_bad_stream_handshakes(worker: str, args: dict, status: int, text: str) -> None:
    async def connect() -> SpeechWorkerError:
        async with SpeechClient(worker) as client:
            with pytest.raises(SpeechWorkerError) as error:
                async with client.stream(**args):
                    pass
            return error.value

    error = run(connect())
    assert error.status == status
    assert text in error.message


BAD_MESSAGES = [
    (BASE, [{"type": "tokens", "tokens": ["[Hu1]", "[Hu2"]}], "tokens[1]"),
    (
        BASE,
        [{"type": "tokens", "tokens": ["[Hu1]"]}, {"type": "tokens", "tokens": ["[Hu9999]"]}],
        "tokens[1]: [Hu9999] is out of range",
    ),
    (EXPRESSIVE, [{"type": "tokens", "tokens": ["[Pi999]"]}], "valid pitch values"),
    (BASE, [{"type": "tokens", "tokens": [3]}], "tokens.0"),
    (BASE, [{"type": "hello"}], "invalid stream message"),
    (BASE, [{"type": "tokens", "tokens": ["[Hu1]"] * (MAX_TOKENS + 1)}], "limit"),
    (
        BASE,
        [
            {"type": "tokens", "tokens": ["[Hu1]"]},
            {"type": "tokens", "tokens": ["[Hu2]"], "context": True},
        ],
        "context tokens must come before",
    ),
    (
        EXPRESSIVE,
        [{"type": "tokens", "tokens": ["[Hu1]", "[Hu2]"]}, {"type": "end"}],
        "needs pitch tokens",
    ),
]


async def send_raw(stream: SpeechStream, message: dict) -> None:
    """Any JSON, even what the client's methods would not produce."""
    # If the worker already refused an earlier message, iterating the stream reports why.
    with contextlib.suppress(ConnectionClosed):
        await stream.connection.send(json.dumps(message))


@pytest.mark.parametrize(("model", "messages", "text"), BAD_MESSAGES)
def test_bad_stream_messages(worker: str, model: str, messages: list[dict], text: str) -> None:
    async def send() -> SpeechWorkerError:
        async with SpeechClient(worker) as client, client.stream(model) as stream:
            with pytest.raises(SpeechWorkerError) as error:
                for message in messages:
                    await send_raw(stream, message)
                async for _ in stream:
                    pass
            await wait_no_streams(worker)
            assert await client.ready()
            return error.value

    error = run(send())
    assert error.status == 400
    assert text in error.message


# ---------------------------------------------------------------------------- the command


def test_missing_checkpoint_files_stop_the_command(tmp_path: Path, cache_dir: Path) -> None:
    empty = tmp_path / "checkpoints"
    empty.mkdir()
    done = subprocess.run(
        python_module_argv("service", "speech-worker", "--checkpoints", str(empty)),
        env=worker_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "mhubert_base_25hz.pt" in done.stderr


def test_models_that_fail_to_load_stop_the_worker(
    tmp_path: Path, layout: CheckpointLayout, cache_dir: Path
) -> None:
    """Files present but unreadable: the server starts, loading fails, the process exits 1."""
    root = tmp_path / "checkpoints"
    shutil.copytree(layout.speech_dir, CheckpointLayout(root).speech_dir)
    broken = CheckpointLayout(root).hubert
    broken.write_bytes(b"not a torch checkpoint")
    argv = ["speech-worker", "--checkpoints", str(root), "--port", str(free_port())]
    done = subprocess.run(
        python_module_argv("service", *argv),
        env=worker_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert "mhubert_base_25hz.pt" in done.stderr and "loading speech models failed" in done.stderr


def test_unreachable_worker_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    async def calls() -> list[Exception]:
        errors: list[Exception] = []
        async with SpeechClient(url) as client:
            for call in (client.health(), client.encode(b"x", BASE)):
                try:
                    await call
                except Exception as error:
                    errors.append(error)
            try:
                async with client.stream(BASE):
                    pass
            except Exception as error:
                errors.append(error)
        return errors

    errors = run(calls())
    assert len(errors) == 3
    assert all(isinstance(error, SpeechWorkerUnavailable) for error in errors)


def test_seeded_style_fallback_is_reproducible(worker: str, stacks: dict[str, SpeechStack]) -> None:
    """Without style tokens the fallback draws a style (docs/format.md#token-string-to-units);
    `seed` makes decode reproducible."""
    code = "[Pi3][Hu5][Hu9][Pi7][Hu11][Hu12][Hu40][Hu41][Hu42]"

    async def decode() -> bytes:
        async with SpeechClient(worker) as client:
            return await client.decode(model=EXPRESSIVE, tokens=code, seed=5, format="pcm")

    units: Units = string_to_units(code, rng=random.Random(5))
    want = pcm16(stacks[EXPRESSIVE].decode(units))
    assert_pcm_close(as_samples(run(decode())), want)


# ---------------------------------------------------------------------------- internal credential


@pytest.fixture(scope="module")
def keyed_worker(layout: CheckpointLayout, cache_dir: Path, tmp_path_factory) -> Iterator[str]:
    """A worker started with the internal credential (in its environment, as `up` gives it)."""
    port = free_port()
    argv = python_module_argv("service", "speech-worker", "--models", BASE, "--port", str(port))
    env = with_internal_key(worker_env(cache_dir))
    log_dir = tmp_path_factory.mktemp("keyed-speech-worker")
    yield from running_worker("keyed speech worker", argv, port, env, log_dir)


async def guarded_calls(url: str, api_key: str, tokens: str, audio: bytes) -> list[object]:
    """Encode, decode, silence units and a stream, each an answer or the error it raised."""
    outcomes: list[object] = []
    async with SpeechClient(url, api_key=api_key) as client:
        calls = (
            client.encode(audio, BASE),
            client.decode(model=BASE, tokens=tokens, format="pcm"),
            client.silence_units(BASE),
        )
        for call in calls:
            try:
                outcomes.append(await call)
            except Exception as error:
                outcomes.append(error)
        try:
            async with client.stream(BASE) as stream:
                await stream.send_tokens(TOKEN.findall(tokens))
                await stream.end()
                outcomes.append(b"".join([chunk async for chunk in stream]))
        except Exception as error:
            outcomes.append(error)
    return outcomes


def test_internal_credential_guards_all_but_probes_and_metrics(
    keyed_worker: str, token_lists: dict[str, list[str]]
) -> None:
    tokens = "".join(token_lists[BASE][:40])
    audio = SPEECH_FILE.read_bytes()
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(keyed_worker + path, timeout=10).status_code == 200, path

    refused = httpx.post(f"{keyed_worker}/v1/encode", content=audio, timeout=30)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{keyed_worker}/docs", timeout=10).status_code == 401  # unlisted: guarded

    # Without the credential, or with another one, every call is refused; the gateway's client
    # reports it as an unavailable worker (the caller's request was fine).
    for api_key in ("", "another-credential"):
        outcomes = run(guarded_calls(keyed_worker, api_key, tokens, audio))
        assert len(outcomes) == 4
        for outcome in outcomes:
            assert isinstance(outcome, SpeechWorkerUnavailable), outcome
            assert "internal credential" in str(outcome)

    async def raw_handshake() -> int:
        with pytest.raises(InvalidStatus) as refusal:
            async with connect(keyed_worker.replace("http", "ws") + "/v1/stream"):
                pass
        return refusal.value.response.status_code

    assert run(raw_handshake()) == 401

    encoded, audio_out, silence, streamed = run(
        guarded_calls(keyed_worker, INTERNAL_API_KEY, tokens, audio)
    )
    assert isinstance(encoded, EncodeResult) and encoded.units["hubert"]
    assert isinstance(audio_out, bytes) and len(audio_out) > 0
    assert isinstance(silence, frozenset) and silence
    assert isinstance(streamed, bytes) and len(streamed) > 0


# ---------------------------------------------------------------------------- raw samples
# The gateway decodes an upload once and sends its 16 kHz float32 samples (F32LE_CONTENT_TYPE);
# the worker encodes them without decoding (docs/architecture.md, "Audio on the wire").


def encode_input_count(url: str, kind: str) -> float:
    """The worker's count of encoded inputs of one kind (file or f32le), all models."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    pattern = rf'^spiritlm_speech_encode_inputs_total\{{[^}}]*kind="{kind}"[^}}]*\}} ([0-9.e+]+)$'
    return sum(float(count) for count in re.findall(pattern, text, re.M))


@pytest.mark.parametrize("model", [BASE, EXPRESSIVE])
def test_encode_of_raw_samples_equals_encode_of_the_file(
    worker: str, stacks: dict[str, SpeechStack], speech: np.ndarray, model: str
) -> None:
    data = SPEECH_FILE.read_bytes()
    decoded = decode_to_f32le(data)

    async def encode() -> tuple[EncodeResult, EncodeResult]:
        async with SpeechClient(worker) as client:
            return await client.encode(decoded, model), await client.encode(data, model)

    raw, files = encode_input_count(worker, "f32le"), encode_input_count(worker, "file")
    from_samples, from_file = run(encode())
    assert encode_input_count(worker, "f32le") == raw + 1
    assert encode_input_count(worker, "file") == files + 1
    assert from_samples == from_file
    assert from_samples.units == stacks[model].encode_units(speech).to_dict()
    assert from_samples.seconds == len(speech) / 16000


def post_raw(url: str, body: bytes, content_type: str = F32LE_CONTENT_TYPE) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/encode",
        params={"model": BASE},
        content=body,
        headers={"content-type": content_type},
        timeout=60,
    )


BAD_RAW = [
    (b"\0" * (4 * 4000 + 2), F32LE_CONTENT_TYPE, "invalid_audio", "4-byte float32 samples"),
    (np.full(4000, np.nan, "<f4").tobytes(), F32LE_CONTENT_TYPE, "invalid_audio", "NaN"),
    (np.array([0.0] * 3999 + [-np.inf], "<f4").tobytes(), F32LE_CONTENT_TYPE, "", "infinite"),
    (np.zeros(1000, "<f4").tobytes(), F32LE_CONTENT_TYPE, "invalid_audio", "too short"),
    (b"", F32LE_CONTENT_TYPE, "invalid_audio", "audio is empty"),
    (np.zeros(4000, "<f4").tobytes(), "audio/x-spiritlm-f32le; rate=48000", "", "rate=16000"),
    (np.zeros(4000, "<f4").tobytes(), "audio/x-spiritlm-f32le", "invalid_value", "rate=16000"),
]


@pytest.mark.parametrize(("body", "content_type", "code", "text"), BAD_RAW)
def test_bad_raw_samples_are_refused(
    worker: str, body: bytes, content_type: str, code: str, text: str
) -> None:
    raw = encode_input_count(worker, "f32le")
    response = post_raw(worker, body, content_type)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert text in error["message"], error
    assert not code or error["code"] == code, error
    assert encode_input_count(worker, "f32le") == raw


def test_raw_samples_over_max_audio_seconds_are_refused_before_the_body_is_read(
    worker: str,
) -> None:
    """601 s of samples (the worker's max_audio_seconds is 600) are refused on the declared
    length alone: the body is never sent, yet the answer comes."""
    host, port = worker.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("POST", f"/v1/encode?model={BASE}")
        connection.putheader("Content-Type", F32LE_CONTENT_TYPE)
        connection.putheader("Content-Length", str(4 * 16000 * 601))
        connection.endheaders()
        response = connection.getresponse()
        status, body = response.status, json.loads(response.read())
    finally:
        connection.close()
    assert status == 400, body
    assert body["error"]["code"] == "audio_too_long"
    assert body["error"]["param"] == "file"
    assert "max_audio_seconds" in body["error"]["message"]
    assert "limit 600 s" in body["error"]["message"]
    assert httpx.get(f"{worker}/health", timeout=10).status_code == 200
