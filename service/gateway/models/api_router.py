"""GET /v1/models and /v1/models/{model_id}: the served variants, then their aliases.

An alias (the `model_aliases` setting, service/gateway/models/aliases.py) is listed like a model,
with `alias_of` naming the variant it stands for, so that a client that checks its hard-coded
name (`whisper-1`) against the listing finds it and can see what it gets.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends

from service.gateway.errors import APIError
from service.gateway.models.aliases import alias_cards
from service.gateway.state import GatewayState, gateway_state

router = APIRouter()
STARTED = int(time.time())


def _card(model_id: str, alias_of: str | None = None) -> dict:
    card = {"id": model_id, "object": "model", "created": STARTED, "owned_by": "meta"}
    if alias_of is not None:
        card["alias_of"] = alias_of
    return card


def _cards(state: GatewayState) -> list[dict]:
    engine = state.engine
    served = engine.served_models()
    aliases = alias_cards(engine.model_aliases, engine.default_model)
    return [
        *(_card(name) for name in served),
        *(_card(name, target) for name, target in aliases if target in served),
    ]


@router.get("/v1/models")
async def list_models(state: GatewayState = Depends(gateway_state)) -> dict:
    return {"object": "list", "data": _cards(state)}


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, state: GatewayState = Depends(gateway_state)) -> dict:
    for card in _cards(state):
        if card["id"] == model_id:
            return card
    engine = state.engine
    if model_id in engine.known_models:  # a variant with checkpoints that no worker serves now
        return _card(model_id)
    raise APIError(404, f"model '{model_id}' does not exist", param="model", code="model_not_found")
