"""Helpers for the routes: SSE framing, base64 audio, collecting a generation's outputs."""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.audio.encode import encode_audio
from service.gateway.engine import (
    AudioOut,
    Finished,
    Output,
    SegmentStart,
    SpeechTokensOut,
    TextOut,
)
from service.gateway.errors import APIError
from service.gateway.metrics import GatewayMetrics


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def b64decode_field(value: str, param: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise APIError(400, f"{param} is not valid base64: {error}", param=param) from error


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


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


class Timings:
    """Records time to first token / first audio and the real-time factor of one request."""

    def __init__(self, metrics: GatewayMetrics, route: str, sample_rate: int) -> None:
        self.metrics = metrics
        self.route = route
        self.sample_rate = sample_rate
        self.started = time.perf_counter()
        self._token_seen = False
        self._audio_seen = False
        self.audio_samples = 0

    def observe(self, item: Output) -> None:
        now = time.perf_counter() - self.started
        if isinstance(item, TextOut | SpeechTokensOut) and not self._token_seen:
            self._token_seen = True
            self.metrics.time_to_first_token.labels(self.route).observe(now)
        if isinstance(item, AudioOut):
            if not self._audio_seen:
                self._audio_seen = True
                self.metrics.time_to_first_audio.labels(self.route).observe(now)
            self.audio_samples += len(item.pcm16) // 2

    def finish(self) -> None:
        if self.audio_samples:
            seconds = self.audio_samples / self.sample_rate
            elapsed = time.perf_counter() - self.started
            self.metrics.real_time_factor.labels(self.route).observe(elapsed / seconds)


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


class Primed:
    """An output stream read ahead until `ready(item)` holds, then replayed in full.

    Routes that stream call `await primed.start()` before returning the response, so a problem
    that shows up before the first useful output (an LM error, a refused voice) still becomes a
    proper HTTP error instead of an event in an already-started 200 stream.
    """

    def __init__(self, outputs: AsyncIterator[Output], ready: Callable[[Output], bool]) -> None:
        self._outputs = outputs
        self._ready = ready
        self._buffer: list[Output] = []

    async def start(self) -> None:
        try:
            async for item in self._outputs:
                self._buffer.append(item)
                if self._ready(item) or isinstance(item, Finished):
                    return
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        await self._outputs.aclose()  # type: ignore[attr-defined]

    async def items(self) -> AsyncIterator[Output]:
        """The read-ahead outputs, then the rest; closing this closes the generation."""
        try:
            while self._buffer:
                yield self._buffer.pop(0)
            async for item in self._outputs:
                yield item
        finally:
            await self.aclose()
