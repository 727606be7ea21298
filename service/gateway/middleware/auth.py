"""API keys: with keys configured, every non-public request must present one of them.

HTTP requests send ``Authorization: Bearer <key>`` and are refused with 401. WebSockets may
instead offer the subprotocol ``openai-insecure-api-key.<key>`` (browsers cannot set headers on
a WebSocket); without a valid one the handshake is refused (a close with 1008 before accept).
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.gateway.errors import error_response
from service.gateway.middleware.public import is_public

SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."


class AuthMiddleware:
    def __init__(self, app: ASGIApp, *, api_keys: list[str]) -> None:
        self.app = app
        self.api_keys = [key.encode() for key in api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._authorized(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid API key"})
        else:
            refusal = error_response(
                401, "missing or invalid API key (send 'Authorization: Bearer <key>')"
            )
            await refusal(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        if not self.api_keys or is_public(scope["path"]):
            return True
        presented = _bearer(scope)
        if presented is None and scope["type"] == "websocket":
            presented = _subprotocol_key(scope)
        return presented is not None and any(
            hmac.compare_digest(presented, key) for key in self.api_keys
        )


def _bearer(scope: Scope) -> bytes | None:
    value = Headers(scope=scope).get("authorization")
    if value is None:
        return None
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip().encode()


def _subprotocol_key(scope: Scope) -> bytes | None:
    for name in scope.get("subprotocols") or []:
        if name.startswith(SUBPROTOCOL_KEY_PREFIX) and len(name) > len(SUBPROTOCOL_KEY_PREFIX):
            return name[len(SUBPROTOCOL_KEY_PREFIX) :].encode()
    return None
