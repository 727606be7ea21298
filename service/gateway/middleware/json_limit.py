"""The number of values in a JSON body (`max_json_values`), bounded before it is parsed.

FastAPI parses JSON bodies with `json.loads` on the event loop, and a thread would not help: the
C parser holds the GIL for the whole parse. Its cost, and that of validating the result, grows
with the number of values, not the bytes (24 MB of ``0,0,0,...`` is 12 million values and
stalls the loop for about a second; 24 MB of prompt text is one string). Every value after the
first in an array or object follows a comma, so the body's commas bound its values; counting
them costs a few milliseconds. A JSON body with more commas than `max_json_values` is refused
with 413 before anything parses it. Commas inside strings count too: text fields are bounded
far below this limit (`max_prompt_chars`).

It sits inside `body_reader.py`, which hands over the whole body as one message.
`JSONBodyCheck` is the shape of such a check (json_text.py is another).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.gateway.errors import error_response
from service.gateway.middleware.body_reader import replaying


class JSONBodyCheck:
    """A middleware that looks at a whole JSON body before anything parses it, and may refuse
    it (`refusal`); other bodies pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_json(Headers(scope=scope).get("content-type")):
            await self.app(scope, receive, send)
            return
        message = await receive()
        body = message.get("body", b"") if message["type"] == "http.request" else b""
        refusal = await self.refusal(body)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, replaying(message, receive), send)

    async def refusal(self, body: bytes) -> Response | None:
        raise NotImplementedError


class JSONValuesLimitMiddleware(JSONBodyCheck):
    def __init__(self, app: ASGIApp, *, max_values: int) -> None:
        super().__init__(app)
        self.max_values = max_values

    async def refusal(self, body: bytes) -> Response | None:
        if body.count(b",") < self.max_values:
            return None
        return error_response(
            413,
            f"request body has more than {self.max_values} JSON values "
            "(max_json_values); send fewer items",
        )


def is_json(content_type: str | None) -> bool:
    # FastAPI parses a body as JSON without a content type, and for application/json or
    # application/*+json.
    if content_type is None:
        return True
    kind = content_type.partition(";")[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )
