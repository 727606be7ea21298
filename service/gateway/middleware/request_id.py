"""Request ids: the client's ``x-request-id`` or a new one, in every log line and response."""

from __future__ import annotations

import uuid

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import request_id


class RequestIdMiddleware:
    """Sets `service.logs.request_id` for the request or WebSocket, and echoes the id in the
    ``x-request-id`` header of HTTP responses (refusals included: this is the outermost layer)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = Headers(scope=scope).get("x-request-id") or uuid.uuid4().hex
        token = request_id.set(rid)
        try:
            if scope["type"] == "http":
                send = _with_request_id(send, rid)
            await self.app(scope, receive, send)
        finally:
            request_id.reset(token)


def _with_request_id(send: Send, rid: str) -> Send:
    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            headers.append((b"x-request-id", rid.encode()))
            message = {**message, "headers": headers}
        await send(message)

    return send_with_id
