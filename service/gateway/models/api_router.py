"""GET /v1/models, /health, /ready, /metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest

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


@router.get("/health", include_in_schema=False)
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready", include_in_schema=False)
async def ready(state: GatewayState = Depends(gateway_state)) -> JSONResponse:
    body = {
        "draining": state.draining,
        "lm_workers": {e.url: e.healthy for e in state.lm_pool.endpoints.values()},
        "speech_workers": {e.url: e.healthy for e in state.speech_pool.endpoints.values()},
    }
    ok = not state.draining and state.lm_pool.ready and state.speech_pool.ready
    return JSONResponse(
        {"status": "ready" if ok else "not ready", **body}, status_code=200 if ok else 503
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(state: GatewayState = Depends(gateway_state)) -> PlainTextResponse:
    for kind, pool in (("lm", state.lm_pool), ("speech", state.speech_pool)):
        for endpoint in pool.endpoints.values():
            state.metrics.worker_healthy.labels(kind, endpoint.url).set(
                1 if endpoint.healthy else 0
            )
    return PlainTextResponse(
        generate_latest(state.metrics.registry).decode(), media_type="text/plain; version=0.0.4"
    )
