"""WS /v1/realtime?model=...: realtime voice conversations (OpenAI Realtime protocol core).

The route accepts the upgrade with a subprotocol the client offered and picks the event
dialect; serving.py admits or refuses the session. Authentication (middleware) accepts the
Bearer header and, for browsers, which cannot set headers on a WebSocket, the subprotocol
``openai-insecure-api-key.<key>``, each with an API key or an ephemeral client secret created by
POST /v1/realtime/client_secrets (client_secrets.py): a session opened with a secret runs the
model and configuration the secret is bound to.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, WebSocket

from service.gateway.errors import APIError
from service.gateway.middleware.auth import SUBPROTOCOL_KEY_PREFIX
from service.gateway.realtime.client_secrets import (
    ClientSecretRequest,
    ClientSecretResponse,
    create_client_secret,
    granted,
)
from service.gateway.realtime.protocol import BETA, GA, Dialect, ProtocolError, ServerEvents
from service.gateway.realtime.serving import serve_session
from service.gateway.state import GatewayState, gateway_state
from service.gateway.uploads import require_json

router = APIRouter()

BETA_SUBPROTOCOL = "openai-beta.realtime-v1"


def _subprotocol(offered: list[str]) -> str | None:
    """The subprotocol to answer with; browsers fail the connection if none of theirs is."""
    if "realtime" in offered:
        return "realtime"
    plain = [name for name in offered if not name.startswith(SUBPROTOCOL_KEY_PREFIX)]
    return plain[0] if plain else None


def _dialect(websocket: WebSocket, offered: list[str]) -> Dialect:
    beta = "realtime=v1" in websocket.headers.get("openai-beta", "")
    return BETA if beta or BETA_SUBPROTOCOL in offered else GA


def _names(websocket: WebSocket, name: str, model: str) -> bool:
    """Whether `name` (a variant or an alias) is `model`."""
    try:
        return websocket.app.state.gateway.engine.resolve_model(name) == model
    except APIError:
        return False


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket, model: str | None = None) -> None:
    offered = list(websocket.scope.get("subprotocols") or [])
    await websocket.accept(subprotocol=_subprotocol(offered))
    events = ServerEvents(_dialect(websocket, offered))
    grant = granted(websocket)
    if grant is not None and model is not None and not _names(websocket, model, grant.model):
        problem = ProtocolError(
            "invalid_value",
            f"model: the client secret is bound to {grant.model}; leave out ?model= or name it",
            param="model",
        )
        await websocket.send_text(json.dumps(events.error(problem)))
        await websocket.close(1008, "model differs from the client secret's")
        return
    await serve_session(websocket, model if grant is None else grant.model, events)


@router.post(
    "/v1/realtime/client_secrets",
    response_model=ClientSecretResponse,
    tags=["openai"],
    dependencies=[Depends(require_json)],
)
async def client_secrets(
    request: ClientSecretRequest, state: GatewayState = Depends(gateway_state)
) -> ClientSecretResponse:
    """An ephemeral secret for one realtime WebSocket, bound to `session` (needs an API key)."""
    return create_client_secret(request, state)
