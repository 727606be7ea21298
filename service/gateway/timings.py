"""Time to first token, time to first audio and real-time factor of one request, as metrics."""

from __future__ import annotations

import time

from service.gateway.engine import AudioOut, Output, SpeechTokensOut, TextOut
from service.gateway.metrics import GatewayMetrics


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
