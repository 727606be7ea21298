"""G.711 u-law and A-law (service/audio/g711.py) and the realtime wire formats built on it.

Known codes and the segment boundaries come from the companding rules (ITU-T G.711, in the
16-bit scaling of the classic reference implementation); where CPython still has its C
`audioop` module (before 3.13), every int16 value and every code is also checked against it.
"""

from __future__ import annotations

import base64
import importlib
import warnings

import numpy as np
import pytest

from service.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from service.gateway.realtime import audio_format
from service.gateway.realtime.protocol import ItemCreate, ProtocolError, parse_client_event

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


def codes(encode, *samples: int) -> list[int]:  # noqa: ANN001
    return list(encode(np.array(samples, dtype=np.int16)))


def test_ulaw_known_codes() -> None:
    # Zero is all ones; the loudest codes are 0x80 (positive) and 0x00 (negative).
    assert codes(ulaw_encode, 0, 32767, -32768, -1) == [0xFF, 0x80, 0x00, 0x7E]
    assert list(ulaw_decode(bytes([0xFF, 0x7F, 0x80, 0x00]))) == [0, 0, 32124, -32124]
    # Segment 0 has steps of 8 (16-bit scale); its levels are the steps themselves.
    assert list(ulaw_decode(bytes([0xFE, 0xF0]))) == [8, 120]


def test_alaw_known_codes() -> None:
    # Zero is 0xD5 (0x80 with the even bits inverted); the smallest levels are +-8.
    assert codes(alaw_encode, 0, 32767, -32768, -1) == [0xD5, 0xAA, 0x2A, 0x55]
    assert list(alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A]))) == [8, -8, 32256, -32256]


@pytest.mark.parametrize("segment", range(7))
def test_ulaw_segment_boundaries(segment: int) -> None:
    # 14-bit magnitude plus the bias 33 reaches the next segment at 64 << segment.
    last = 4 * ((64 << segment) - 34) + 3
    assert codes(ulaw_encode, last, last + 1) == [
        (segment << 4 | 0x0F) ^ 0xFF,
        ((segment + 1) << 4) ^ 0xFF,
    ]
    # Negative samples are floored to 14 bits: -(last - 3) is the last one in `segment`.
    assert codes(ulaw_encode, -(last - 3), -(last - 2)) == [
        (segment << 4 | 0x0F) ^ 0x7F,
        ((segment + 1) << 4) ^ 0x7F,
    ]


@pytest.mark.parametrize("segment", range(7))
def test_alaw_segment_boundaries(segment: int) -> None:
    # 13-bit segments end at 31, 63, 127, ... 4095; segments 0 and 1 share the step 2.
    end = (32 << segment) - 1
    last, first = 8 * end + 7, 8 * (end + 1)
    assert codes(alaw_encode, last, first) == [
        (segment << 4 | 0x0F) ^ 0xD5,
        ((segment + 1) << 4) ^ 0xD5,
    ]
    # Negative samples: magnitude minus one, so -8 * (end + 1) is still in `segment`.
    assert codes(alaw_encode, -8 * (end + 1), -8 * (end + 1) - 1) == [
        (segment << 4 | 0x0F) ^ 0x55,
        ((segment + 1) << 4) ^ 0x55,
    ]


@pytest.mark.parametrize(
    ("encode", "decode"), [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)]
)
def test_round_trip_and_error_bound(encode, decode) -> None:  # noqa: ANN001
    levels = decode(ALL_CODES)
    again = np.frombuffer(encode(levels), dtype=np.uint8)
    # Every code survives decode -> encode, except u-law's negative zero (0x7F), which is +0.
    changed = [code for code in range(256) if again[code] != code]
    assert changed == ([0x7F] if encode is ulaw_encode else [])
    # Decoding is monotonic in the sample and never further than one step from it: at most
    # 1/16 of the sample's magnitude (the segments' relative step) or 16 near zero.
    decoded = decode(encode(ALL_INT16)).astype(np.int64)
    assert np.all(np.diff(decoded) >= 0)
    error = np.abs(decoded - ALL_INT16.astype(np.int64))
    inside = np.abs(ALL_INT16.astype(np.int64)) <= 32000
    assert np.all(error[inside] <= np.maximum(16, np.abs(ALL_INT16[inside]) // 16))


def test_matches_cpython_audioop_where_it_exists() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            audioop = importlib.import_module("audioop")
        except ImportError:
            pytest.skip("audioop was removed in Python 3.13")
    pcm = ALL_INT16.astype("<i2").tobytes()
    assert ulaw_encode(ALL_INT16) == audioop.lin2ulaw(pcm, 2)
    assert alaw_encode(ALL_INT16) == audioop.lin2alaw(pcm, 2)
    assert ulaw_decode(ALL_CODES).astype("<i2").tobytes() == audioop.ulaw2lin(ALL_CODES, 2)
    assert alaw_decode(ALL_CODES).astype("<i2").tobytes() == audioop.alaw2lin(ALL_CODES, 2)


def test_encode_needs_int16() -> None:
    with pytest.raises(TypeError, match="int16"):
        ulaw_encode(np.zeros(4, dtype=np.float32))


# ---- the realtime wire formats


def test_wire_formats_convert_both_ways() -> None:
    tone = (np.sin(np.arange(800) * 2 * np.pi * 440 / 8000) * 12000).astype("<i2")
    for name in (audio_format.ULAW, audio_format.ALAW):
        wire = audio_format.from_pcm16(name, tone.tobytes())
        assert len(wire) == tone.size  # one byte per sample
        back = np.frombuffer(audio_format.to_pcm16(name, wire), dtype="<i2")
        assert np.max(np.abs(back.astype(int) - tone.astype(int))) <= 12000 // 16
    assert audio_format.to_pcm16(audio_format.PCM16, b"\x01\x02") == b"\x01\x02"


def test_ga_format_names_and_rate() -> None:
    assert audio_format.from_ga("audio/pcmu") == audio_format.ULAW
    assert audio_format.from_ga("audio/pcma") == audio_format.ALAW
    assert audio_format.render_ga(audio_format.ULAW, 8000) == {"type": "audio/pcmu"}
    assert audio_format.render_ga(audio_format.PCM16, 16000) == {"type": "audio/pcm", "rate": 16000}
    assert audio_format.g711_rate(audio_format.ULAW, None, "rate") == 8000
    with pytest.raises(ProtocolError) as refused:
        audio_format.g711_rate(audio_format.ALAW, 16000, "session.audio.input.format.rate")
    assert refused.value.param == "session.audio.input.format.rate"
    assert "8000" in refused.value.message


def test_item_audio_is_expanded_from_g711() -> None:
    wire = bytes([0xFF, 0x80, 0x00, 0xF0])
    event = parse_client_event(
        '{"type": "conversation.item.create", "item": {"role": "user", "content": '
        f'[{{"type": "input_audio", "audio": "{base64.b64encode(wire).decode()}"}}]}}}}'
    )
    assert isinstance(event, ItemCreate)
    audio_format.item_audio_to_pcm16(audio_format.ULAW, event)
    pcm = np.frombuffer(base64.b64decode(event.item.content[0].audio or ""), dtype="<i2")
    assert list(pcm) == [0, 32124, -32124, 120]
