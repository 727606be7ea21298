"""An upload is decoded once: by the gateway, which sends the speech worker its samples.

The gateway decodes each upload with the worker's own function (service/audio/decode.py
`decode_audio`) and sends the 16 kHz float32 samples raw (`F32LE_CONTENT_TYPE`); the worker
encodes them without decoding again. The units must be those of the original file given to the
worker's /v1/encode, and the worker's `spiritlm_speech_encode_inputs` counter shows which kind
of input each encode got. The pure checks of the raw format come first; the server tests use the
session's real gateway, LM and speech worker (tests/support/servers.py).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from service.audio.decode import (
    F32LE_CONTENT_TYPE,
    AudioLimits,
    AudioTooLong,
    check_f32le_size,
    decode_audio,
    decode_f32le,
    decode_to_f32le,
)
from service.audio.resample import resample
from service.checkpoints.layout import BASE
from service.errors import AudioError
from service.speech_worker.app import is_f32le
from service.speech_worker.protocol import WorkerRequestError
from tests.support.servers import Servers

# ---- the raw format, in process --------------------------------------------------------------


def test_decoded_upload_is_the_samples_decode_audio_gives(speech_file: Path) -> None:
    data = speech_file.read_bytes()
    decoded = decode_to_f32le(data)
    want = decode_audio(data)
    assert np.array_equal(decoded.samples, want)
    assert decoded.seconds == want.size / 16000
    body = b"".join(decoded.f32le_chunks(size=1000))
    assert len(body) == decoded.nbytes == 4 * want.size
    back = decode_f32le(bytearray(body))
    assert back.dtype == np.float32 and back.flags.writeable  # used in place by the worker
    assert np.array_equal(back, want)
    # One buffer: the chunks that go on the wire are views of the samples, not copies.
    chunk = next(decoded.f32le_chunks())
    assert np.shares_memory(np.frombuffer(chunk, dtype="<f4"), decoded.samples)
    assert not decoded.samples.flags.writeable


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b"\0" * (4 * 2000 + 1), "not a whole number of 4-byte float32 samples"),
        (np.full(2000, np.nan, dtype="<f4").tobytes(), "NaN or infinite"),
        (np.array([0.0] * 1999 + [np.inf], dtype="<f4").tobytes(), "NaN or infinite"),
        (b"", "audio is empty"),
        (np.zeros(100, dtype="<f4").tobytes(), "too short"),
    ],
)
def test_bad_raw_samples_are_refused(body: bytes, text: str) -> None:
    with pytest.raises(AudioError, match=text):
        decode_f32le(bytearray(body))


def test_raw_samples_over_the_limit_are_refused_from_the_length_alone() -> None:
    limits = AudioLimits(max_seconds=2.0)
    check_f32le_size(4 * 32000, limits)
    with pytest.raises(AudioTooLong, match=r"2\.00 s > limit 1\.5 s") as caught:
        check_f32le_size(4 * 32000, AudioLimits(max_seconds=1.5))
    assert caught.value.limit == 1.5
    with pytest.raises(AudioTooLong):
        decode_f32le(bytearray(4 * 32001), limits=limits)


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        (F32LE_CONTENT_TYPE, True),
        ("Audio/X-SpiritLM-F32LE ;Rate=16000", True),
        ("application/octet-stream", False),
        ("audio/flac", False),
        ("", False),
    ],
)
def test_content_type_of_raw_samples(content_type: str, raw: bool) -> None:
    assert is_f32le(content_type) is raw


@pytest.mark.parametrize(
    "content_type", ["audio/x-spiritlm-f32le", "audio/x-spiritlm-f32le; rate=48000"]
)
def test_raw_samples_at_another_rate_are_refused(content_type: str) -> None:
    with pytest.raises(WorkerRequestError) as caught:
        is_f32le(content_type)
    assert caught.value.status == 400
    assert "rate=16000" in caught.value.body()["error"]["message"]


# ---- through the gateway ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(servers: Servers) -> str:
    return servers.gateway(BASE)


@pytest.fixture(scope="module")
def speech(servers: Servers, gateway: str) -> str:
    return servers.speech()


def encode_inputs(speech: str, kind: str) -> float:
    """The speech worker's count of encoded inputs of one kind (file or f32le), all models."""
    text = httpx.get(f"{speech}/metrics", timeout=10).text
    pattern = rf'^spiritlm_speech_encode_inputs_total\{{[^}}]*kind="{kind}"[^}}]*\}} ([0-9.e+]+)$'
    return sum(float(count) for count in re.findall(pattern, text, re.M))


def stereo_44k(speech_file: Path) -> bytes:
    """The speech file as 44.1 kHz stereo 16-bit WAV: decoding resamples and downmixes."""
    samples = resample(decode_audio(speech_file.read_bytes()), 16000, 44100)
    stereo = np.stack([samples, 0.5 * samples], axis=1)
    buffer = io.BytesIO()
    soundfile.write(buffer, stereo, 44100, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.mark.parametrize("upload", ["flac", "wav-44k-stereo"])
def test_gateway_units_equal_the_worker_encode_of_the_file(
    gateway: str, speech: str, speech_file: Path, upload: str
) -> None:
    data = speech_file.read_bytes() if upload == "flac" else stereo_44k(speech_file)
    raw, files = encode_inputs(speech, "f32le"), encode_inputs(speech, "file")
    response = httpx.post(
        f"{gateway}/v1/speech/tokenize",
        files={"file": (f"speech.{upload}", data)},
        data={"model": BASE},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    # The gateway's upload reached the worker as samples: nothing was decoded there.
    assert (encode_inputs(speech, "f32le"), encode_inputs(speech, "file")) == (raw + 1, files)
    direct = httpx.post(
        f"{speech}/v1/encode",
        params={"model": BASE},
        content=data,
        headers={"content-type": "application/octet-stream"},
        timeout=300,
    )
    assert direct.status_code == 200, direct.text
    assert encode_inputs(speech, "file") == files + 1
    got, want = response.json(), direct.json()
    assert got["units"] == want["units"]
    assert got["tokens"] == want["tokens"]
    assert got["seconds"] == want["seconds"]


def test_a_transcription_upload_is_decoded_once(
    gateway: str, speech: str, speech_file: Path
) -> None:
    def transcribe() -> httpx.Response:
        return httpx.post(
            f"{gateway}/v1/audio/transcriptions",
            files={"file": ("speech.flac", speech_file.read_bytes())},
            data={"model": BASE, "response_format": "verbose_json"},
            timeout=300,
        )

    # The first transcription also encodes the exemplar bank's files (once per model).
    assert transcribe().status_code == 200
    raw, files = encode_inputs(speech, "f32le"), encode_inputs(speech, "file")
    response = transcribe()
    assert response.status_code == 200, response.text
    seconds = decode_audio(speech_file.read_bytes()).size / 16000
    assert response.json()["duration"] == round(seconds, 3)
    assert (encode_inputs(speech, "f32le"), encode_inputs(speech, "file")) == (raw + 1, files)
