"""Prometheus metrics of the gateway."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    """One registry per app, so several gateways can live in one process (tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "spiritlm_requests_total",
            "HTTP requests by route and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "spiritlm_request_seconds",
            "Time to the complete response, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "spiritlm_requests_in_flight", "Requests being served.", registry=self.registry
        )
        self.time_to_first_token = Histogram(
            "spiritlm_time_to_first_token_seconds",
            "Request start to the first generated token, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_audio = Histogram(
            "spiritlm_time_to_first_audio_seconds",
            "Request start to the first audio byte sent, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.real_time_factor = Histogram(
            "spiritlm_real_time_factor",
            "Processing seconds per second of audio produced or consumed, by route.",
            ["route"],
            buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.realtime_sessions = Gauge(
            "spiritlm_realtime_sessions_active",
            "Realtime (WebSocket) sessions open.",
            registry=self.registry,
        )
        self.realtime_first_audio = Histogram(
            "spiritlm_realtime_first_audio_seconds",
            "End of the user's turn (speech_stopped, commit, or response.create) to the first "
            "audio delta sent, by what ended the turn (vad|commit|create).",
            ["trigger"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.realtime_first_audio_phase = Histogram(
            "spiritlm_realtime_first_audio_phase_seconds",
            "Where a realtime reply's first audio time goes, by phase: the user's turns encoded "
            "(encode), the prompt built (prompt), the first speech token (lm), the first audio "
            "(vocoder), its delta sent (send); they add up to "
            "spiritlm_realtime_first_audio_seconds.",
            ["phase"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.realtime_encode_windows = Counter(
            "spiritlm_realtime_encode_windows_total",
            "Windows of realtime turns sent to a speech worker while the turn was spoken "
            "(docs/realtime.md#encoding-while-the-user-speaks).",
            registry=self.registry,
        )
        self.realtime_pause_encodes_dropped = Counter(
            "spiritlm_realtime_pause_encodes_dropped_total",
            "Pauses' candidate turns dropped because speech resumed before the pause ended the "
            "turn, their encodings cancelled if still running (docs/realtime.md, Turn taking).",
            registry=self.registry,
        )
        self.realtime_turn_encode_wait = Histogram(
            "spiritlm_realtime_turn_encode_wait_seconds",
            "End of the user's turn to its speech tokens being ready, by how the turn was "
            "encoded (whole|windows).",
            ["how"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.worker_healthy = Gauge(
            "spiritlm_worker_healthy",
            "1 when a worker endpoint passes its health check.",
            ["kind", "worker"],
            registry=self.registry,
        )
