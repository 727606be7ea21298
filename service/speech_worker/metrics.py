"""Prometheus metrics of the speech worker, and the ASGI middleware that counts requests."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as METRICS_MEDIA_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RTF_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class WorkerMetrics:
    """One registry per app, so several apps (tests) in one process do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "spiritlm_speech_requests",
            "HTTP requests and WebSocket handshakes by route and status.",
            ["route", "status"],
            registry=registry,
        )
        self.encode_seconds = Histogram(
            "spiritlm_speech_encode_seconds",
            "Time to decode an upload and encode it to units.",
            ["model"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.decode_seconds = Histogram(
            "spiritlm_speech_decode_seconds",
            "Vocoder compute time per one-shot decode or per stream.",
            ["model", "mode"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.real_time_factor = Histogram(
            "spiritlm_speech_real_time_factor",
            "Compute seconds per second of audio (below 1 = faster than real time).",
            ["model", "operation"],
            buckets=RTF_BUCKETS,
            registry=registry,
        )
        self.first_audio_seconds = Histogram(
            "spiritlm_speech_stream_first_audio_seconds",
            "From a stream's first tokens to its first audio frame.",
            ["model"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.vocoder_batch_size = Histogram(
            "spiritlm_speech_vocoder_batch_size",
            "Stream chunks rendered in one vocoder forward pass.",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=registry,
        )
        self.vocoder_batch_seconds = Histogram(
            "spiritlm_speech_vocoder_batch_seconds",
            "Time of one vocoder forward pass over stream chunks.",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.steps_aside = Counter(
            "spiritlm_speech_steps_aside",
            "Times a long model call (an encode, a one-shot synthesis) handed its inference "
            "thread, between two layers, to a stream chunk whose listener was about to run out "
            "of audio.",
            registry=registry,
        )
        self.active_streams = Gauge(
            "spiritlm_speech_active_streams", "Open synthesis streams.", registry=registry
        )
        self.streams = Counter(
            "spiritlm_speech_streams",
            "Finished synthesis streams by outcome (done, cancelled, disconnected, error).",
            ["model", "outcome"],
            registry=registry,
        )

    def observe_vocoder_batch(self, size: int, seconds: float) -> None:
        self.vocoder_batch_size.observe(size)
        self.vocoder_batch_seconds.observe(seconds)

    def observe_compute(
        self, model: str, operation: str, seconds: float, audio_seconds: float
    ) -> None:
        if audio_seconds > 0:
            self.real_time_factor.labels(model, operation).observe(seconds / audio_seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """Counts every HTTP request and WebSocket handshake by route template and status."""

    def __init__(self, app: Any, metrics: WorkerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        status = {"code": 500 if scope["type"] == "http" else 403}

        async def record(message: dict) -> None:
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                status["code"] = message["status"]
            elif kind == "websocket.accept":
                status["code"] = 101
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            # The router records the matched route in the scope; unmatched paths share a label
            # so that random URLs cannot grow the metric without bound.
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(path, str(status["code"])).inc()


__all__ = ["METRICS_MEDIA_TYPE", "RequestMetrics", "WorkerMetrics"]
