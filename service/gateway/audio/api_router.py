"""Routes of /v1/audio/*: transcriptions, classifications, speech, and the voice listing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form
from fastapi.responses import Response, StreamingResponse

from service.gateway.audio.classification import classify
from service.gateway.audio.protocol import (
    ClassificationForm,
    ClassificationOut,
    SpeechRequest,
    TranscriptionForm,
)
from service.gateway.audio.speech import speak
from service.gateway.audio.transcription import transcribe
from service.gateway.refusals import refuse_unknown
from service.gateway.state import GatewayState, gateway_state
from service.gateway.uploads import require_json, require_multipart, single_valued
from service.gateway.voices import model_voices, voices_listing

router = APIRouter(tags=["audio"])


@router.post(
    "/v1/audio/transcriptions",
    dependencies=[Depends(require_multipart), Depends(single_valued(TranscriptionForm))],
)
async def create_transcription(
    form: Annotated[TranscriptionForm, Form()], state: GatewayState = Depends(gateway_state)
) -> Response:
    """Speech recognition (OpenAI's transcription API) with a few-shot Spirit LM prompt."""
    return await transcribe(form, state)


@router.post(
    "/v1/audio/classifications",
    dependencies=[Depends(require_multipart), Depends(single_valued(ClassificationForm))],
)
async def create_classification(
    form: Annotated[ClassificationForm, Form()], state: GatewayState = Depends(gateway_state)
) -> ClassificationOut:
    """Speech classification: the most likely of the candidate labels, few-shot prompted."""
    refuse_unknown(form)
    return await classify(form, state)


@router.post(
    "/v1/audio/speech",
    dependencies=[Depends(require_json)],
    response_class=StreamingResponse,
    responses={200: {"content": {"audio/mpeg": {}, "text/event-stream": {}}}},
)
async def create_speech(
    request: SpeechRequest, state: GatewayState = Depends(gateway_state)
) -> StreamingResponse:
    """Text to speech (OpenAI's speech API), streamed as it is generated."""
    return await speak(request, state)


@router.get("/v1/audio/voices")
async def list_voices(
    model: str | None = None, state: GatewayState = Depends(gateway_state)
) -> dict:
    """The voices (vocoder speakers) of a model."""
    name = state.engine.resolve_model(model)
    return voices_listing(model_voices(state.engine.layout, name), name)
