"""The request body limit (`max_body_bytes`): 413 for a declared ``content-length`` above it
before anything is read, and 413 as soon as a body without one (chunked) reads past it.

The declared length of public paths is not checked; what they read is.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.gateway.errors import error_response
from service.gateway.middleware.public import is_public


class BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so FastAPI's body parsing re-raises it as is."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        declared = length is not None and length.isdigit() and int(length) > self.max_body_bytes
        if declared and not is_public(scope["path"]):
            refusal = error_response(
                413,
                f"request body of {length} bytes exceeds the limit of {self.max_body_bytes} bytes",
            )
            await refusal(scope, receive, send)
            return
        try:
            await self.app(scope, self._limited(receive), send)
        except BodyTooLarge as error:
            await error_response(413, str(error.detail))(scope, receive, send)

    def _limited(self, receive: Receive) -> Receive:
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
