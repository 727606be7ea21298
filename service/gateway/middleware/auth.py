"""API keys: with keys configured, every non-public request must present one of them.

HTTP requests send ``Authorization: Bearer <key>`` and are refused with 401. WebSockets may
instead offer the subprotocol ``openai-insecure-api-key.<key>`` (browsers cannot set headers on
a WebSocket); without a valid one the handshake is refused (a close with 1008 before accept).
Public paths (`public.py`) need no key, except /metrics with `metrics_require_auth`.

Ephemeral client secrets (``ek_...``, realtime/client_secrets.py) are the other credential,
taken the same two ways but only by the handshake of WS /v1/realtime, with or without API keys
configured: an expired, altered or already used one is refused with HTTP 401, and any other
route presented with one answers 401 as well. An admitted secret's grant (its bound session)
is left in the scope for the session.

Whether a request is authenticated (a valid key, or no keys configured) is kept in the scope:
what only an authenticated caller may see, such as worker URLs, asks `is_authenticated`. A
client secret does not make its socket authenticated in that sense.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from service.gateway.errors import error_response
from service.gateway.middleware.public import METRICS_PATH, is_public
from service.gateway.realtime.client_secrets import (
    GRANT_SCOPE_KEY,
    REALTIME_PATH,
    ClientSecrets,
    SecretRefused,
    session_opened,
)

SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."
# The scope key that says whether the request is authenticated (an ASGI extension key).
AUTHENTICATED = "spiritlm.authenticated"


def is_authenticated(connection: HTTPConnection) -> bool:
    """Whether the request presented a valid key, or no keys are configured."""
    return bool(connection.scope.get(AUTHENTICATED))


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_keys: list[str],
        client_secrets: ClientSecrets,
        metrics_require_auth: bool = False,
    ) -> None:
        self.app = app
        self.api_keys = [key.encode() for key in api_keys]
        self.client_secrets = client_secrets
        self.metrics_require_auth = metrics_require_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        presented = _credential(scope)
        if presented is not None and self._is_client_secret(presented):
            await self._with_client_secret(presented.decode(), scope, receive, send)
            return
        scope[AUTHENTICATED] = not self.api_keys or self._is_key(presented)
        if scope[AUTHENTICATED] or self._open(scope["path"]):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "invalid API key"})
        else:
            refusal = error_response(
                401, "missing or invalid API key (send 'Authorization: Bearer <key>')"
            )
            await refusal(scope, receive, send)

    async def _with_client_secret(
        self, secret: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        scope[AUTHENTICATED] = False
        if scope["type"] != "websocket" or scope["path"] != REALTIME_PATH:
            if self._open(scope["path"]):
                await self.app(scope, receive, send)
                return
            message = (
                "a client secret (ek_...) is accepted only as the credential of the realtime "
                f"WebSocket ({REALTIME_PATH}); this route needs an API key"
            )
            await _refuse(scope, receive, send, message)
            return
        try:
            grant = self.client_secrets.admit(secret)
        except SecretRefused as refused:
            await _refuse(scope, receive, send, str(refused))
            return
        scope[GRANT_SCOPE_KEY] = grant
        try:
            await self.app(scope, receive, send)
        finally:
            if not session_opened(scope):  # refused before a session started: not spent
                self.client_secrets.release(grant)

    def _open(self, path: str) -> bool:
        """Whether `path` needs no key."""
        if path == METRICS_PATH and self.metrics_require_auth:
            return False
        return is_public(path)

    def _is_key(self, presented: bytes | None) -> bool:
        return presented is not None and any(
            hmac.compare_digest(presented, key) for key in self.api_keys
        )

    def _is_client_secret(self, presented: bytes) -> bool:
        # A configured API key wins, whatever it looks like.
        return ClientSecrets.is_secret(presented.decode("latin-1")) and not self._is_key(presented)


async def _refuse(scope: Scope, receive: Receive, send: Send, message: str) -> None:
    """401 with `message`; a WebSocket gets it as the handshake's HTTP answer where the server
    can send one, else a close with 1008 before accept (which the server answers with 403)."""
    refusal = error_response(401, message, code="invalid_client_secret")
    if scope["type"] == "http":
        await refusal(scope, receive, send)
    elif "websocket.http.response" in scope.get("extensions", {}):
        await WebSocket(scope, receive, send).send_denial_response(refusal)
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})


def _credential(scope: Scope) -> bytes | None:
    presented = _bearer(scope)
    if presented is None and scope["type"] == "websocket":
        presented = _subprotocol_key(scope)
    return presented


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
