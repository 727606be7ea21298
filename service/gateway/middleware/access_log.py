"""The access log: every HTTP request counted, timed and logged with its route and status.

It sits outside the layers that refuse requests, so refusals (401, 503, 413, 429) are counted
and logged too, under the route ``unmatched``. WebSockets are not logged here (a realtime
session logs its end, `service.gateway.realtime.connection`).

Metric labels take bounded values only, whatever a client sends: the route template (never the
raw path) and the method if it is a standard one, else ``other``; /metrics is unauthenticated
by default, and the HTTP parser accepts any token as a method.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.gateway.metrics import GatewayMetrics

log = logging.getLogger("spiritlm.gateway.access")

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # No response at all: the client left first (`disconnect.py`, `body_reader.py`); nginx's
        # "client closed request", so that it is not counted as the server's failure.
        status = 499

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        # An exception escaping the app is neither counted nor logged here: the server's error
        # handler logs it.
        await self.app(scope, receive, send_with_status)
        route = _route_name(scope)
        elapsed = time.perf_counter() - started
        self.metrics.requests.labels(route, _method_label(scope["method"]), str(status)).inc()
        self.metrics.latency.labels(route).observe(elapsed)
        log.info(
            "%s %s -> %s",
            scope["method"],
            scope["path"],
            status,
            extra={"fields": {"status": status, "seconds": round(elapsed, 4), "route": route}},
        )


def _route_name(scope: Scope) -> str:
    # The router stores the matched route in the scope; a refused request never reaches it.
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def _method_label(method: str) -> str:
    return method if method in METHODS else "other"
