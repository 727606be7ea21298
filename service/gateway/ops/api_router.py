"""GET /health, /ready, /metrics: what load balancers and monitoring ask of the gateway.

Public even when API keys are set, and never refused while draining
(`service.gateway.middleware.public`).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest

from service.gateway.state import GatewayState, gateway_state

router = APIRouter()


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
