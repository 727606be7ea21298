"""Route of POST /v1/generate."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header
from fastapi.responses import StreamingResponse

from service.gateway.generate.protocol import GenerateRequest, GenerateResponse
from service.gateway.generate.serving import generate
from service.gateway.state import GatewayState, gateway_state

router = APIRouter()


@router.post("/v1/generate", response_model=GenerateResponse, tags=["spirit"])
async def create_generation(
    request: GenerateRequest,
    state: GatewayState = Depends(gateway_state),
    x_session_id: str | None = Header(default=None, max_length=200),
) -> GenerateResponse | StreamingResponse:
    """Interleaved speech/text generation with Spirit LM's own prompt format.

    Requests sharing an `X-Session-Id` go to the same LM replica (prefix-cache reuse).
    """
    return await generate(request, state, affinity=x_session_id)
