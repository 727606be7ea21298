"""JSON bodies whose text is not Unicode (lone UTF-16 surrogates) refused with 400 naming the
field, before any handler tokenizes or forwards it (service/gateway/json_text.py says why).

Only a body that spells a surrogate escape is parsed here, in a worker thread; it sits inside
`json_limit.py`, whose bound on the number of values bounds that parse.
"""

from __future__ import annotations

import json

import anyio.to_thread
from starlette.responses import Response

from service.gateway.errors import error_response
from service.gateway.json_text import (
    lone_surrogate_message,
    lone_surrogate_path,
    may_hold_surrogates,
)
from service.gateway.middleware.json_limit import JSONBodyCheck


class JSONTextMiddleware(JSONBodyCheck):
    async def refusal(self, body: bytes) -> Response | None:
        if not may_hold_surrogates(body):
            return None
        path = await anyio.to_thread.run_sync(_lone_surrogate_in, body)
        if path is None:
            return None
        return error_response(400, lone_surrogate_message(path), param=path or None)


def _lone_surrogate_in(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: the route's own parsing says so
    return lone_surrogate_path(data)
