"""Admission of realtime sessions: which accepted sockets get a session, and how many are open.

Refusals happen after the upgrade, as an ``error`` event followed by a close, so every client
can read the reason: 1013 when the gateway already runs its maximum of sessions or is draining
(retry later or elsewhere), 1008 for an unknown model. An admitted socket runs its session
(connection.py) until it closes.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, WebSocket
from starlette.websockets import WebSocketDisconnect

from service.gateway.errors import APIError
from service.gateway.realtime.client_secrets import mark_session_opened
from service.gateway.realtime.connection import (
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    Limits,
    RealtimeConnection,
)
from service.gateway.realtime.protocol import ProtocolError, ServerEvents
from service.gateway.state import GatewayState


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


async def serve_session(websocket: WebSocket, model: str | None, events: ServerEvents) -> None:
    """Run a session on an accepted socket, or refuse it with an ``error`` event and a close."""
    state: GatewayState = websocket.app.state.gateway
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
    mark_session_opened(websocket)
    try:
        await RealtimeConnection(websocket, state, resolved, events, limits).run()
    finally:
        count.active -= 1
        state.metrics.realtime_sessions.dec()


async def _refuse(
    websocket: WebSocket, events: ServerEvents, error: ProtocolError, code: int
) -> None:
    try:
        await websocket.send_text(json.dumps(events.error(error), separators=(",", ":")))
        await websocket.close(code, error.message[:120])
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
