"""Routes of /v1/speech/tokenize and /v1/speech/detokenize."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service.gateway.speech_units.protocol import DetokenizeRequest, TokenizeResponse
from service.gateway.speech_units.serving import detokenize, tokenize
from service.gateway.state import GatewayState, gateway_state
from service.gateway.uploads import require_json

router = APIRouter(tags=["spirit"])


@router.post(
    "/v1/speech/tokenize",
    response_model=TokenizeResponse,
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "model": {"type": "string"},
                        },
                    }
                },
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            }
        }
    },
)
async def speech_tokenize(
    request: Request, model: str | None = None, state: GatewayState = Depends(gateway_state)
) -> TokenizeResponse:
    """Audio (multipart `file`, or the raw body with `?model=`) -> units and token string."""
    return await tokenize(request, model, state)


@router.post(
    "/v1/speech/detokenize",
    dependencies=[Depends(require_json)],
    response_class=Response,
    responses={200: {"content": {"audio/wav": {}}}},
)
async def speech_detokenize(
    body: DetokenizeRequest, state: GatewayState = Depends(gateway_state)
) -> Response:
    """Token string or units -> audio (the `spiritlm-serve synthesize` result)."""
    return await detokenize(body, state)
