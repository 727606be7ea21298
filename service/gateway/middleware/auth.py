"""API keys: with keys configured, every non-public request must present one of them.

HTTP requests send ``Authorization: Bearer <key>`` and are refused with 401. WebSockets may
instead offer the subprotocol ``openai-insecure-api-key.<key>`` (browsers cannot set headers on
a WebSocket); without a valid one the handshake is refused (a close with 1008 before accept).
Public paths (`public.py`) need no key, except /metrics with `metrics_require_auth`.

Whether a request is authenticated (a valid key, or no keys configured) is kept in the scope:
what only an authenticated caller may see, such as worker URLs, asks `is_authenticated`.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from service.gateway.errors import error_response
from service.gateway.middleware.public import METRICS_PATH, is_public

SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."
# The scope key that says whether the request is authenticated (an ASGI extension key).
AUTHENTICATED = "spiritlm.authenticated"


def is_authenticated(connection: HTTPConnection) -> bool:
    """Whether the request presented a valid key, or no keys are configured."""
    return bool(connection.scope.get(AUTHENTICATED))


class AuthMiddleware:
    def __init__(
        self, app: ASGIApp, *, api_keys: list[str], metrics_require_auth: bool = False
    ) -> None:
        self.app = app
        self.api_keys = [key.encode() for key in api_keys]
        self.metrics_require_auth = metrics_require_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        scope[AUTHENTICATED] = self._authenticated(scope)
        if scope[AUTHENTICATED] or self._open(scope["path"]):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid API key"})
        else:
            refusal = error_response(
                401, "missing or invalid API key (send 'Authorization: Bearer <key>')"
            )
            await refusal(scope, receive, send)

    def _open(self, path: str) -> bool:
        """Whether `path` needs no key."""
        if path == METRICS_PATH and self.metrics_require_auth:
            return False
        return is_public(path)

    def _authenticated(self, scope: Scope) -> bool:
        if not self.api_keys:
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
