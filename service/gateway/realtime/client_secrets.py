"""Ephemeral client secrets (OpenAI Realtime GA, ``POST /v1/realtime/client_secrets``).

A server holding an API key creates a secret and hands it to a browser or an app, which opens
WS /v1/realtime with it (``Authorization: Bearer ek_...``, or the subprotocol
``openai-insecure-api-key.ek_...`` in a browser) and never sees the API key. A secret is

* short-lived: ``expires_after.seconds`` (10 s up to `client_secret_max_seconds`), else
  `client_secret_default_seconds`; an expired one is refused at the handshake (HTTP 401);
* single-session: one WebSocket opens with it, a second is refused (401). The memory of used
  secrets is per gateway process, so behind N replicas a secret could open at most one session
  on each of them within its lifetime (docs/realtime.md, "Client secrets");
* bound to its session configuration: the ``session`` given at creation is checked then (a 400
  naming the field) and applied when the session starts, as if by a first ``session.update``;
* only a WebSocket credential: REST routes refuse it with 401 (middleware/auth.py).

The secret is self-contained and signed (service/gateway/signing.py, key `signing_key`), so any
replica that shares the key accepts it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import HTTPConnection
from starlette.types import Scope

from service.gateway.errors import APIError
from service.gateway.realtime.config import SessionConfig, initial_config
from service.gateway.realtime.protocol import GA, ProtocolError, SessionIn, new_id
from service.gateway.signing import Signer, TokenError, TokenExpired
from service.gateway.state import GatewayState
from service.gateway.voices import model_voices

CLIENT_SECRET_PREFIX = "ek_"
REALTIME_PATH = "/v1/realtime"
# The scope key under which the auth middleware leaves an admitted secret's Grant.
GRANT_SCOPE_KEY = "spiritlm.client_secret"
SESSION_OPENED_SCOPE_KEY = "spiritlm.realtime_session_opened"
# A secret travels in one handshake header line, and WebSocket servers cap a line at 8 KiB
# (the `websockets` library's default, which uvicorn uses): this leaves room for the header
# name and the other subprotocols a browser offers next to it.
MAX_SECRET_CHARS = 7680
# A secret's decompressed session configuration; never more than the secret can carry anyway.
MAX_SESSION_BYTES = 256 * 1024
# Used secrets a process remembers before it refuses more (each is forgotten at its expiry).
MAX_REMEMBERED_SECRETS = 100_000


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"] = "created_at"
    seconds: int | None = Field(default=None, ge=10, le=7200)


class ClientSecretRequest(BaseModel):
    """Body of POST /v1/realtime/client_secrets."""

    model_config = ConfigDict(extra="forbid")

    expires_after: ExpiresAfter | None = None
    session: dict[str, Any] | None = Field(
        default=None,
        description="The session configuration (the fields of session.update); applied when "
        "the session opened with this secret starts.",
    )


class ClientSecretResponse(BaseModel):
    value: str = Field(description="The secret (ek_...): the realtime WebSocket's credential.")
    expires_at: int = Field(description="Unix seconds after which no session opens with it.")
    session: dict[str, Any] = Field(description="The session configuration it is bound to.")


@dataclass(frozen=True)
class Grant:
    """An admitted secret: what the session it opens is bound to."""

    secret_id: str
    expires_at: int
    model: str
    session: dict[str, Any]


class SecretRefused(Exception):
    """A client secret that cannot open a session; the message says why."""


# ---- creation ---------------------------------------------------------------------------------


def create_client_secret(request: ClientSecretRequest, state: GatewayState) -> ClientSecretResponse:
    settings = state.settings
    seconds = min(settings.client_secret_default_seconds, settings.client_secret_max_seconds)
    if request.expires_after is not None and request.expires_after.seconds is not None:
        seconds = request.expires_after.seconds
        if seconds > settings.client_secret_max_seconds:
            raise APIError(
                400,
                f"expires_after.seconds: {seconds} is above the most this gateway allows, "
                f"{settings.client_secret_max_seconds} (client_secret_max_seconds)",
                param="expires_after.seconds",
            )
    session = dict(request.session or {})
    checked = _session_in(session)
    try:
        model = state.engine.resolve_model(checked.model)
    except APIError as error:
        raise APIError(
            error.status, f"session.model: {error.message}", param="session.model"
        ) from None
    session["model"] = checked.model = model
    config = _bound_config(state, model, checked, "session")
    secret_id = new_id("cs")
    expires_at = int(time.time()) + seconds
    payload = json.dumps({"id": secret_id, "session": session}, separators=(",", ":"))
    value = Signer.from_settings(settings).seal(CLIENT_SECRET_PREFIX, payload.encode(), expires_at)
    if len(value) > MAX_SECRET_CHARS:
        raise APIError(
            400,
            f"session: this configuration makes a client secret of {len(value)} characters; at "
            f"most {MAX_SECRET_CHARS} fit in a WebSocket handshake header (shorten "
            "session.instructions)",
            param="session",
        )
    return ClientSecretResponse(
        value=value, expires_at=expires_at, session=config.render(GA, secret_id, expires_at)
    )


def _session_in(session: dict[str, Any]) -> SessionIn:
    try:
        return SessionIn.model_validate(session)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(["session", *(str(part) for part in first["loc"])])
        raise APIError(400, f"{where}: {first['msg']}", param=where) from None


def _bound_config(state: GatewayState, model: str, session: SessionIn, param: str) -> SessionConfig:
    voices = model_voices(state.engine.layout, model)
    try:
        return initial_config(model, voices).updated(session, voices, None)
    except ProtocolError as error:
        raise APIError(400, error.message, param=error.param or param) from None


# ---- use --------------------------------------------------------------------------------------


class ClientSecrets:
    """Admits secrets at the realtime handshake (middleware/auth.py): signature, expiry, and
    one session each. One per app; the used ones are remembered until they expire."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer
        self._used: dict[str, int] = {}  # secret id -> its expiry

    @classmethod
    def from_settings(cls, settings: Any) -> ClientSecrets:
        return cls(Signer.from_settings(settings))

    @staticmethod
    def is_secret(credential: str) -> bool:
        return credential.startswith(CLIENT_SECRET_PREFIX)

    def admit(self, credential: str, now: float | None = None) -> Grant:
        now = time.time() if now is None else now
        try:
            payload, expires_at = self.signer.open(
                CLIENT_SECRET_PREFIX,
                credential,
                max_chars=MAX_SECRET_CHARS,
                max_payload_bytes=MAX_SESSION_BYTES,
                now=now,
            )
        except TokenExpired:
            raise SecretRefused("the client secret has expired; create a new one") from None
        except TokenError as error:
            raise SecretRefused(f"invalid client secret: it {error}") from None
        content = json.loads(payload)
        grant = Grant(content["id"], expires_at, content["session"]["model"], content["session"])
        self._forget_expired(now)
        if grant.secret_id in self._used:
            raise SecretRefused(
                "the client secret was already used to open a session (one session per secret)"
            )
        if len(self._used) >= MAX_REMEMBERED_SECRETS:
            raise SecretRefused("too many client secrets in use on this gateway; retry later")
        self._used[grant.secret_id] = expires_at
        return grant

    def release(self, grant: Grant) -> None:
        """Make an admitted secret usable again: its handshake was refused before any session
        started (a model that differs, a full or draining gateway), so it opened nothing."""
        self._used.pop(grant.secret_id, None)

    def _forget_expired(self, now: float) -> None:
        for secret_id in [key for key, expiry in self._used.items() if expiry <= now]:
            del self._used[secret_id]


def mark_session_opened(connection: HTTPConnection) -> None:
    """Record that the socket's session started: its client secret, if any, is now spent
    (middleware/auth.py releases one whose handshake was refused)."""
    connection.scope[SESSION_OPENED_SCOPE_KEY] = True


def session_opened(scope: Scope) -> bool:
    return bool(scope.get(SESSION_OPENED_SCOPE_KEY))


def granted(connection: HTTPConnection) -> Grant | None:
    """The client secret a WebSocket was opened with, if any."""
    grant = connection.scope.get(GRANT_SCOPE_KEY)
    return grant if isinstance(grant, Grant) else None


def bound_session(connection: HTTPConnection) -> SessionIn | None:
    """The session configuration the socket's client secret binds, to apply at the start."""
    grant = granted(connection)
    return None if grant is None else SessionIn.model_validate(grant.session)
