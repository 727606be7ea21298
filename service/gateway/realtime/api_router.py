"""WS /v1/realtime?model=...: realtime voice conversations (OpenAI Realtime protocol core).

The route accepts the upgrade with a subprotocol the client offered and picks the event
dialect; serving.py admits or refuses the session. Authentication (middleware) accepts the
Bearer header and, for browsers, which cannot set headers on a WebSocket, the subprotocol
``openai-insecure-api-key.<key>``.
"""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from service.gateway.middleware.auth import SUBPROTOCOL_KEY_PREFIX
from service.gateway.realtime.protocol import BETA, GA, Dialect, ServerEvents
from service.gateway.realtime.serving import serve_session

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


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket, model: str | None = None) -> None:
    offered = list(websocket.scope.get("subprotocols") or [])
    await websocket.accept(subprotocol=_subprotocol(offered))
    events = ServerEvents(_dialect(websocket, offered))
    await serve_session(websocket, model, events)
