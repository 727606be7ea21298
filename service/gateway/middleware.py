"""ASGI middleware of the gateway: request ids, auth, body limit, concurrency limit, metrics.

Written as plain ASGI (not BaseHTTPMiddleware) so streamed responses pass through untouched.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.gateway.errors import error_response
from service.gateway.metrics import GatewayMetrics
from service.logs import request_id

log = logging.getLogger("spiritlm.gateway.access")

PUBLIC_PATHS = {
    "/",
    "/health",
    "/ready",
    "/metrics",
    "/docs",
    "/openapi.json",
    "/docs/oauth2-redirect",
}
PUBLIC_PREFIXES = ("/static/",)
SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."


class BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so FastAPI's body parsing re-raises it as is."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class GatewayMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: GatewayMetrics,
        api_keys: list[str],
        max_body_bytes: int,
        max_concurrent: int,
        is_draining: Callable[[], bool],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.api_keys = [key.encode() for key in api_keys]
        self.max_body_bytes = max_body_bytes
        self.max_concurrent = max_concurrent
        self.is_draining = is_draining
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = _header(scope, b"x-request-id") or uuid.uuid4().hex
        token = request_id.set(rid)
        try:
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self._http(scope, receive, send, rid)
        finally:
            request_id.reset(token)

    def _authorized(self, scope: Scope) -> bool:
        if not self.api_keys or _is_public(scope["path"]):
            return True
        presented = _bearer(scope)
        if presented is None and scope["type"] == "websocket":
            presented = _subprotocol_key(scope)
        return presented is not None and any(
            hmac.compare_digest(presented, key) for key in self.api_keys
        )

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._authorized(scope):
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid API key"})
            return
        await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        started = time.perf_counter()
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        rejection = self._reject(scope)
        if rejection is not None:
            await rejection(scope, receive, send_with_id)
        else:
            self.in_flight += 1
            self.metrics.in_flight.inc()
            try:
                await self.app(scope, self._limited(receive, scope), send_with_id)
            except BodyTooLarge as error:
                await error_response(413, str(error.detail))(scope, receive, send_with_id)
            finally:
                self.in_flight -= 1
                self.metrics.in_flight.dec()
        route = _route_name(scope)
        elapsed = time.perf_counter() - started
        self.metrics.requests.labels(route, scope["method"], str(status["code"])).inc()
        self.metrics.latency.labels(route).observe(elapsed)
        log.info(
            "%s %s -> %s",
            scope["method"],
            scope["path"],
            status["code"],
            extra={
                "fields": {"status": status["code"], "seconds": round(elapsed, 4), "route": route}
            },
        )

    def _reject(self, scope: Scope) -> Callable[[Scope, Receive, Send], Awaitable[None]] | None:
        if not self._authorized(scope):
            return error_response(
                401, "missing or invalid API key (send 'Authorization: Bearer <key>')"
            )
        if _is_public(scope["path"]):
            return None
        if self.is_draining():
            return error_response(503, "the gateway is shutting down; retry on another replica")
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return error_response(
                413,
                f"request body of {length} bytes exceeds the limit of {self.max_body_bytes} bytes",
            )
        if self.in_flight >= self.max_concurrent:
            return error_response(
                429, f"too many concurrent requests (limit {self.max_concurrent}); retry later"
            )
        return None

    def _limited(self, receive: Receive, scope: Scope) -> Receive:
        received = 0
        limit = self.max_body_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        return limited_receive


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _bearer(scope: Scope) -> bytes | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip().encode()


def _subprotocol_key(scope: Scope) -> bytes | None:
    """A key offered as WebSocket subprotocol ``openai-insecure-api-key.<key>`` (browsers cannot
    set an Authorization header on a WebSocket)."""
    for name in scope.get("subprotocols") or []:
        if name.startswith(SUBPROTOCOL_KEY_PREFIX) and len(name) > len(SUBPROTOCOL_KEY_PREFIX):
            return name[len(SUBPROTOCOL_KEY_PREFIX) :].encode()
    return None


def _route_name(scope: MutableMapping[str, Any]) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"
