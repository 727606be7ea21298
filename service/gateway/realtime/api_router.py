"""WS /v1/realtime?model=...: realtime voice conversations (OpenAI Realtime protocol core).

Refusals happen after the upgrade, as an ``error`` event followed by a close, so every client
can read the reason: 1013 when the gateway already runs its maximum of sessions or is draining
(retry later or elsewhere), 1008 for an unknown model. Authentication (middleware) accepts the
Bearer header and, for browsers, which cannot set headers on a WebSocket, the subprotocol
``openai-insecure-api-key.<key>``.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect

from service.gateway.errors import APIError
from service.gateway.realtime.protocol import BETA, GA, ProtocolError, ServerEvents
from service.gateway.realtime.serving import (
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    Limits,
    RealtimeSession,
)
from service.gateway.state import GatewayState

router = APIRouter()

BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."


class SessionCount:
    """Sessions open in this gateway (one per app)."""

    def __init__(self) -> None:
        self.active = 0


def _count(app: FastAPI) -> SessionCount:
    count = getattr(app.state, "realtime_sessions", None)
    if count is None:
        count = SessionCount()
        app.state.realtime_sessions = count
    return count


def _subprotocol(offered: list[str]) -> str | None:
    """The subprotocol to answer with; browsers fail the connection if none of theirs is."""
    if "realtime" in offered:
        return "realtime"
    plain = [name for name in offered if not name.startswith(KEY_SUBPROTOCOL_PREFIX)]
    return plain[0] if plain else None


def _dialect(websocket: WebSocket, offered: list[str]) -> str:
    beta = "realtime=v1" in websocket.headers.get("openai-beta", "")
    return BETA if beta or BETA_SUBPROTOCOL in offered else GA


async def _refuse(
    websocket: WebSocket, events: ServerEvents, error: ProtocolError, code: int
) -> None:
    try:
        await websocket.send_text(_json(events.error(error)))
        await websocket.close(code, error.message[:120])
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass


def _json(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"))


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket, model: str | None = None) -> None:
    state: GatewayState = websocket.app.state.gateway
    offered = list(websocket.scope.get("subprotocols") or [])
    await websocket.accept(subprotocol=_subprotocol(offered))
    events = ServerEvents(_dialect(websocket, offered))  # type: ignore[arg-type]
    limits = Limits.from_settings(state.settings)
    count = _count(websocket.app)
    if state.draining:
        problem = ProtocolError(
            "server_draining",
            "the gateway is shutting down; reconnect to another replica",
            kind="server_error",
        )
        await _refuse(websocket, events, problem, CLOSE_TRY_AGAIN)
        return
    if count.active >= limits.max_sessions:
        problem = ProtocolError(
            "too_many_sessions",
            f"the gateway already runs its maximum of {limits.max_sessions} realtime sessions; "
            "retry later",
            kind="rate_limit_error",
        )
        await _refuse(websocket, events, problem, CLOSE_TRY_AGAIN)
        return
    try:
        resolved = state.engine.resolve_model(model)
    except APIError as error:
        problem = ProtocolError(error.code or "model_not_found", error.message, param="model")
        await _refuse(websocket, events, problem, CLOSE_POLICY)
        return
    count.active += 1
    state.metrics.realtime_sessions.inc()
    try:
        await RealtimeSession(websocket, state, resolved, events, limits).run()
    finally:
        count.active -= 1
        state.metrics.realtime_sessions.dec()
