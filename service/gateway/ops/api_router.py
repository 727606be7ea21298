"""GET /health, /ready, /metrics: what load balancers and monitoring ask of the gateway.

Public even when API keys are set (except /metrics with `metrics_require_auth`), and never
refused while draining (`service.gateway.middleware.public`). Workers are named by their URL
only to authenticated callers (`is_authenticated`: a valid key, or no keys configured); others
see them by role and index (``lm-0``), so unauthenticated probes learn nothing of the network
behind the gateway.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest

from service.gateway.middleware.auth import is_authenticated
from service.gateway.pools import WorkerPool
from service.gateway.state import GatewayState, gateway_state

router = APIRouter()


def _workers(pool: WorkerPool, request: Request) -> dict[str, bool]:
    """Health of each worker of `pool`, by URL or, for unauthenticated callers, by index."""
    urls = is_authenticated(request)
    return {
        endpoint.url if urls else f"{pool.name}-{index}": endpoint.healthy
        for index, endpoint in enumerate(pool.endpoints.values())
    }


@router.get("/health", include_in_schema=False)
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready", include_in_schema=False)
async def ready(request: Request, state: GatewayState = Depends(gateway_state)) -> JSONResponse:
    body = {
        "draining": state.draining,
        "lm_workers": _workers(state.lm_pool, request),
        "speech_workers": _workers(state.speech_pool, request),
    }
    ok = not state.draining and state.lm_pool.ready and state.speech_pool.ready
    return JSONResponse(
        {"status": "ready" if ok else "not ready", **body}, status_code=200 if ok else 503
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(
    request: Request, state: GatewayState = Depends(gateway_state)
) -> PlainTextResponse:
    gauge = state.metrics.worker_healthy
    # Rebuilt on every scrape: workers that left (a scaled-down pod) leave no stale series.
    gauge.clear()
    for pool in (state.lm_pool, state.speech_pool):
        for name, healthy in _workers(pool, request).items():
            gauge.labels(pool.name, name).set(1 if healthy else 0)
    return PlainTextResponse(
        generate_latest(state.metrics.registry).decode(), media_type="text/plain; version=0.0.4"
    )
