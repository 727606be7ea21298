"""Route of POST /v1/generate."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from service.gateway.generate.protocol import GenerateRequest, GenerateResponse
from service.gateway.generate.serving import generate
from service.gateway.state import GatewayState, gateway_state

router = APIRouter()


@router.post("/v1/generate", response_model=GenerateResponse, tags=["spirit"])
async def create_generation(
    request: GenerateRequest, state: GatewayState = Depends(gateway_state)
) -> GenerateResponse | StreamingResponse:
    """Interleaved speech/text generation with Spirit LM's own prompt format."""
    return await generate(request, state)
