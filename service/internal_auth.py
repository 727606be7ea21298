"""The credential between the gateway and its workers (setting `internal_api_key`).

The gateway sends it as `Authorization: Bearer <key>` on every call to a speech worker or an LM
worker. The workers refuse every route but their probes and metrics without it:
- the speech worker through `InternalAuthMiddleware` (service/speech_worker/app.py);
- vLLM through its own `--api-key` check, given as VLLM_API_KEY, which covers its /v1/* routes
  only, and, where spiritlm-serve starts vLLM (`lm`, `up`), through `VLLMInternalAuth`, the same
  middleware loaded by vLLM's `--middleware`, for the rest (e.g. SageMaker's /invocations).
An empty key means no internal auth. docs/security.md#how-the-processes-authenticate-to-each-other
tells the whole story.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Collection

from starlette import status
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from service.errors import error_body

# vLLM reads its `--api-key` from this variable too; the environment keeps it out of `ps`.
VLLM_API_KEY_ENV = "VLLM_API_KEY"
# What a worker answers a call without the credential.
REFUSED_STATUS = 401
# Open without the credential: kubelet probes and Prometheus carry none, and these routes do no
# work for the caller (the NetworkPolicies of deploy/base/network-policies.yaml limit who
# reaches them at all).
SPEECH_WORKER_OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
VLLM_OPEN_PATHS = frozenset({"/health", "/metrics"})
REFUSAL = "missing or wrong internal credential (the gateway's SPIRITLM_INTERNAL_API_KEY)"


def new_key() -> str:
    """A fresh random credential (what `up` uses when none is configured)."""
    return secrets.token_urlsafe(32)


def unguarded_warning(port: int) -> str:
    """What a worker started without the credential says (running so is allowed, not silent)."""
    return (
        "warning: no internal credential (SPIRITLM_INTERNAL_API_KEY): anyone who reaches port "
        f"{port} can use this worker (docs/security.md)"
    )


def bearer_headers(key: str) -> dict[str, str]:
    """The headers that carry `key`; none for an empty key."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def bearer_matches(authorization: str | None, key: str) -> bool:
    """Whether an Authorization header carries `key` as its Bearer token (constant time)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Digests: compare_digest's time then depends on neither the token's length nor its text.
    given = hashlib.sha256(token.strip().encode()).digest()
    return secrets.compare_digest(given, hashlib.sha256(key.encode()).digest())


class InternalAuthMiddleware:
    """Refuses every path but `open_paths` without the credential `api_key`.

    HTTP: 401 in the OpenAI error shape. WebSocket: the same 401 as the handshake's HTTP answer
    or, where the server cannot send one, a close with 1008 before the socket is accepted.
    Any path, known to the app or not, is guarded unless it is open.
    """

    def __init__(self, app: ASGIApp, *, api_key: str, open_paths: Collection[str]) -> None:
        if not api_key:
            raise ValueError("InternalAuthMiddleware needs a non-empty api_key")
        self.app = app
        self.api_key = api_key
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        refusal = JSONResponse(
            error_body(REFUSAL, kind="authentication_error", code="invalid_api_key"),
            status_code=REFUSED_STATUS,
            headers={"WWW-Authenticate": "Bearer"},
        )
        if scope["type"] == "http":
            await refusal(scope, receive, send)
        elif "websocket.http.response" in scope.get("extensions", {}):
            await WebSocket(scope, receive, send).send_denial_response(refusal)
        else:
            await send(
                {
                    "type": "websocket.close",
                    "code": status.WS_1008_POLICY_VIOLATION,
                    "reason": "unauthorized",
                }
            )

    def _authorized(self, scope: Scope) -> bool:
        if scope["path"] in self.open_paths:
            return True
        return bearer_matches(Headers(scope=scope).get("authorization"), self.api_key)


class VLLMInternalAuth(InternalAuthMiddleware):
    """`InternalAuthMiddleware` for vLLM's `--middleware` flag, which constructs it from the app
    alone: the key is the VLLM_API_KEY that vLLM's own check reads."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(
            app, api_key=os.environ.get(VLLM_API_KEY_ENV, ""), open_paths=VLLM_OPEN_PATHS
        )


# vLLM's `--middleware` value for `VLLMInternalAuth`.
VLLM_MIDDLEWARE = f"{__name__}.{VLLMInternalAuth.__name__}"
