"""Draining: once the gateway is shutting down (`service.gateway.server`), new HTTP requests get
503 so clients retry on another replica; in-flight ones finish. Realtime WebSockets are refused
by their own route (close 1013), health and metrics stay open (`public.py`)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from service.gateway.errors import error_response
from service.gateway.middleware.public import is_public


class DrainingMiddleware:
    def __init__(self, app: ASGIApp, *, is_draining: Callable[[], bool]) -> None:
        self.app = app
        self.is_draining = is_draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_public(scope["path"]) and self.is_draining():
            refusal = error_response(503, "the gateway is shutting down; retry on another replica")
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)
