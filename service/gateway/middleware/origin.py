"""WebSocket origins: a browser page may open the gateway's WebSockets only from an allowed
origin (`cors_origins`) or from the gateway itself (the page at /).

Browsers send ``Origin`` on every WebSocket handshake and, unlike fetch, do not enforce CORS on
it: without this check any web page could drive a keyless gateway (a local `up`) through
WS /v1/realtime. A refused handshake is closed with 1008 before it is accepted, which the server
answers with HTTP 403. Handshakes without ``Origin`` (non-browser clients) pass; API keys, when
set, are checked after this (`auth.py`).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("spiritlm.gateway.auth")


class WebSocketOriginMiddleware:
    def __init__(self, app: ASGIApp, *, allowed_origins: list[str]) -> None:
        self.app = app
        self.allow_any = "*" in allowed_origins
        self.allowed = {origin.rstrip("/").lower() for origin in allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket" or self._allowed(Headers(scope=scope)):
            await self.app(scope, receive, send)
            return
        log.warning(
            "WebSocket from origin %r refused: not in cors_origins",
            Headers(scope=scope).get("origin"),
        )
        await send({"type": "websocket.close", "code": 1008, "reason": "origin not allowed"})

    def _allowed(self, headers: Headers) -> bool:
        origin = headers.get("origin")
        if origin is None or self.allow_any or origin.rstrip("/").lower() in self.allowed:
            return True
        # Same origin: the page was served by this gateway, directly or through a proxy that
        # rewrites Host (browsers cannot set X-Forwarded-Host on a WebSocket).
        netloc = urlsplit(origin).netloc.lower()
        hosts = (headers.get("host"), headers.get("x-forwarded-host"))
        return bool(netloc) and any(host and host.strip().lower() == netloc for host in hosts)
