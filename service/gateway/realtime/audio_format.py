"""The realtime session's audio wire formats: pcm16 at a chosen rate, or G.711 at 8 kHz.

Formats are named as the beta names them (``pcm16``, ``g711_ulaw``, ``g711_alaw``); the GA's
``{"type": "audio/pcm" | "audio/pcmu" | "audio/pcma", "rate": ...}`` maps onto them here, and
back when a session is rendered. Inside the session, audio is always pcm16 at the format's rate:
G.711 input is expanded to pcm16 at 8 kHz as it is appended (the VAD and the speech worker then
resample it like any 8 kHz input, service/audio/resample.py), and output is asked of the vocoder
at 8 kHz and companded per audio delta (service/audio/g711.py).
"""

from __future__ import annotations

import base64

import numpy as np

from service.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from service.gateway.realtime.protocol import ItemCreate, ProtocolError
from service.gateway.uploads import b64decode_field

PCM16 = "pcm16"
ULAW = "g711_ulaw"
ALAW = "g711_alaw"
G711_RATE = 8000
_GA_TYPES = {PCM16: "audio/pcm", ULAW: "audio/pcmu", ALAW: "audio/pcma"}
_FROM_GA = {ga: name for name, ga in _GA_TYPES.items()}


def from_ga(ga_type: str) -> str:
    """``audio/pcm`` | ``audio/pcmu`` | ``audio/pcma`` -> the format's name."""
    return _FROM_GA[ga_type]


def g711_rate(fmt: str, rate: int | None, param: str) -> int:
    """The rate of a G.711 format: 8 kHz, the only one G.711 has."""
    if rate not in (None, G711_RATE):
        raise ProtocolError(
            "invalid_value",
            f"{param}: {_GA_TYPES[fmt]} is {G711_RATE} Hz audio, not {rate}",
            param=param,
        )
    return G711_RATE


def render_ga(fmt: str, rate: int) -> dict[str, object]:
    if fmt == PCM16:
        return {"type": "audio/pcm", "rate": rate}
    return {"type": _GA_TYPES[fmt]}


def bytes_per_sample(fmt: str) -> int:
    return 2 if fmt == PCM16 else 1


def to_pcm16(fmt: str, data: bytes) -> bytes:
    """Input audio in `fmt` -> little-endian pcm16 at the same rate."""
    if fmt == ULAW:
        return ulaw_decode(data).astype("<i2").tobytes()
    if fmt == ALAW:
        return alaw_decode(data).astype("<i2").tobytes()
    return data


def from_pcm16(fmt: str, pcm16: bytes) -> bytes:
    """Output pcm16 -> `fmt` (G.711 one byte per sample)."""
    if fmt == PCM16:
        return pcm16
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.int16)
    return ulaw_encode(samples) if fmt == ULAW else alaw_encode(samples)


def item_audio_to_pcm16(fmt: str, event: ItemCreate) -> None:
    """Expand the G.711 ``input_audio`` of a conversation.item.create to pcm16, in place (the
    items code reads pcm16 at the input rate)."""
    if fmt == PCM16:
        return
    for index, content in enumerate(event.item.content):
        if content.type == "input_audio" and content.audio:
            data = b64decode_field(content.audio, f"item.content[{index}].audio")
            content.audio = base64.b64encode(to_pcm16(fmt, data)).decode()
