"""The concurrency limit (`max_concurrent_requests`): 429 while that many HTTP requests are in
flight, and the ``spiritlm_requests_in_flight`` gauge.

A slot is taken only once the whole request body is in (`body_reader.py` sits outside this
layer), so slow or stalled uploads never hold one. Requests to public paths are never refused
but count as in flight. Realtime WebSockets are limited by their own route (close 1013).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.gateway.errors import error_response
from service.gateway.metrics import GatewayMetrics
from service.gateway.middleware.public import is_public


class ConcurrencyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_concurrent: int, metrics: GatewayMetrics) -> None:
        self.app = app
        self.max_concurrent = max_concurrent
        self.metrics = metrics
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not is_public(scope["path"]) and self.in_flight >= self.max_concurrent:
            refusal = error_response(
                429, f"too many concurrent requests (limit {self.max_concurrent}); retry later"
            )
            await refusal(scope, receive, send)
            return
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
