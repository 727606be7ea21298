"""GET /v1/models and /v1/models/{model_id}."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends

from service.gateway.errors import APIError
from service.gateway.state import GatewayState, gateway_state

router = APIRouter()
STARTED = int(time.time())


@router.get("/v1/models")
async def list_models(state: GatewayState = Depends(gateway_state)) -> dict:
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": STARTED, "owned_by": "meta"}
            for name in state.engine.served_models()
        ],
    }


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, state: GatewayState = Depends(gateway_state)) -> dict:
    if model_id not in state.engine.known_models:
        raise APIError(
            404, f"model '{model_id}' does not exist", param="model", code="model_not_found"
        )
    return {"id": model_id, "object": "model", "created": STARTED, "owned_by": "meta"}
