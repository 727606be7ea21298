"""Spirit's unit endpoints: audio <-> units/token strings through a speech worker.

`tokenize` gives what `spiritlm-serve tokenize --json` prints for the same file and model (the
worker receives the uploaded bytes unchanged); `detokenize` gives the audio of
`spiritlm-serve synthesize` (same units, speaker and duration prediction), encoded as asked.
Detokenize is one-shot synthesis, whose memory and time grow with its units: they are bounded by
`max_detokenize_units` before anything else (the speech worker checks its own setting of the same
name again).
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile as StarletteUpload

from service.audio.encode import MEDIA_TYPES, check_output_format
from service.gateway.errors import APIError
from service.gateway.speech_units.protocol import DetokenizeRequest, TokenizeResponse
from service.gateway.state import GatewayState
from service.gateway.uploads import (
    decode_upload,
    is_raw_audio,
    media_type,
    read_upload,
)
from service.gateway.voices import model_voices, resolve_voice
from service.speech_worker.protocol import units_over_limit

MAX_FORM_FIELDS = 16


async def tokenize(request: Request, model: str | None, state: GatewayState) -> TokenizeResponse:
    data, filename, model = await _audio_and_model(request, model)
    name = state.engine.resolve_model(model)
    audio = await decode_upload(data, state.settings, filename)
    encoded = await state.engine.encode(audio, name)
    return TokenizeResponse(**encoded.model_dump())


async def _audio_and_model(
    request: Request, model: str | None
) -> tuple[bytes, str | None, str | None]:
    """The audio (multipart `file` or the raw body) and the model (form field or query)."""
    kind = media_type(request)
    if kind == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
        upload = form.get("file")
        if not isinstance(upload, StarletteUpload):
            raise APIError(422, "file: Field required (a multipart file part)", param="file")
        field = form.get("model")
        if isinstance(field, str) and field:
            model = field
        return await read_upload(upload), upload.filename, model
    if is_raw_audio(request):
        return await request.body(), None, model
    raise APIError(
        415,
        "Content-Type must be multipart/form-data (with a 'file' part) or an audio type "
        f"(audio/*, application/octet-stream) for a raw body; got {kind or 'none'}",
        code="unsupported_media_type",
    )


def check_detokenize_units(body: DetokenizeRequest, limit: int) -> None:
    over = units_over_limit(body.tokens, body.units, limit)
    if over is not None:
        field, message = over
        raise APIError(400, message, param=field, code="too_many_units")


async def detokenize(body: DetokenizeRequest, state: GatewayState) -> Response:
    engine = state.engine
    check_detokenize_units(body, state.settings.max_detokenize_units)
    check_output_format(body.response_format, body.sample_rate)
    model = engine.resolve_model(body.model)
    speaker = resolve_voice(model_voices(engine.layout, model), body.speaker, model, "speaker")
    units = body.units.model_dump(exclude_none=True) if body.units is not None else None
    audio = await engine.decode(
        model=model,
        tokens=body.tokens,
        units=units,
        speaker=speaker,
        duration_prediction=body.duration_prediction,
        format=body.response_format,
        sample_rate=body.sample_rate,
        seed=body.seed,
    )
    headers = {"X-Sample-Rate": str(body.sample_rate)}
    return Response(audio, media_type=MEDIA_TYPES[body.response_format], headers=headers)
