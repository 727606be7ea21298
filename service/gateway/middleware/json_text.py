"""JSON bodies whose text is not Unicode (lone UTF-16 surrogates) refused with 400 naming the
field, before any handler tokenizes or forwards it (service/gateway/json_text.py says why).

Only a body that spells a surrogate escape is parsed here, in a worker thread; it sits inside
`json_limit.py`, whose bound on the number of values bounds that parse.
"""

from __future__ import annotations

import json

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.gateway.errors import error_response
from service.gateway.json_text import (
    lone_surrogate_message,
    lone_surrogate_path,
    may_hold_surrogates,
)
from service.gateway.middleware.body_reader import replaying
from service.gateway.middleware.json_limit import is_json


class JSONTextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_json(Headers(scope=scope).get("content-type")):
            await self.app(scope, receive, send)
            return
        message = await receive()
        body = message.get("body", b"") if message["type"] == "http.request" else b""
        if may_hold_surrogates(body):
            path = await anyio.to_thread.run_sync(_lone_surrogate_in, body)
            if path is not None:
                refusal = error_response(400, lone_surrogate_message(path), param=path or None)
                await refusal(scope, receive, send)
                return
        await self.app(scope, replaying(message, receive), send)


def _lone_surrogate_in(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: the route's own parsing says so
    return lone_surrogate_path(data)
