"""A whole (non-streamed) generation gathered into its text and speech segments."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from service.audio.encode import encode_audio
from service.audio.pcm import pcm16_to_float
from service.gateway.engine import (
    AudioOut,
    Finished,
    Output,
    SegmentStart,
    SpeechTokensOut,
    TextOut,
)
from service.gateway.timings import Timings


@dataclass
class CollectedSegment:
    kind: str
    text: str = ""
    tokens: str = ""
    pcm: bytearray = field(default_factory=bytearray)

    def encoded_audio(self, fmt: str, sample_rate: int) -> bytes:
        return encode_audio(pcm16_to_float(bytes(self.pcm)), sample_rate, fmt)


@dataclass
class Collected:
    segments: list[CollectedSegment]
    finished: Finished


async def collect(outputs: AsyncIterator[Output], timings: Timings) -> Collected:
    segments: list[CollectedSegment] = []
    finished: Finished | None = None
    async for item in outputs:
        timings.observe(item)
        if isinstance(item, SegmentStart):
            segments.append(CollectedSegment(item.kind))
        elif isinstance(item, TextOut):
            segments[-1].text += item.text
        elif isinstance(item, SpeechTokensOut):
            segments[-1].tokens += item.tokens
        elif isinstance(item, AudioOut):
            segments[-1].pcm += item.pcm16
        elif isinstance(item, Finished):
            finished = item
    timings.finish()
    assert finished is not None
    kept = [s for s in segments if s.kind == "text" and s.text or s.kind == "speech" and s.tokens]
    return Collected(kept, finished)
