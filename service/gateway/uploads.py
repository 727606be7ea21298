"""Audio uploads of the gateway: content-type checks, reading, base64 fields, and the limits.

An upload is decoded once, here, off the event loop, by the function the speech worker would use
(service/audio/decode.py `decode_audio`): that rejects corrupt, empty and over-long audio with a
400 naming the problem before any model work is queued, gives the duration (verbose
transcriptions need it), and stops at the gateway's `max_audio_seconds`, so a long file costs
only the allowed part. The worker receives the decoded 16 kHz float32 samples
(`DecodedAudio`, F32LE_CONTENT_TYPE) and does not decode them again; they are the samples it
would have made from the file, so its units are exactly those of the same file given to
`spiritlm-serve tokenize`. The samples are held as one buffer of 64 KB per second of audio.

A request with several audio inputs (/v1/generate `inputs`, chat `input_audio` parts) has an
`AudioBudget`: every input is checked against `max_audio_seconds` and all of them together against
`max_request_audio_seconds`, before the first one is encoded (docs/security.md#limits).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from functools import partial

import anyio.to_thread
from fastapi import Request, UploadFile
from pydantic import BaseModel

from service.audio.decode import AudioLimits, AudioTooLong, DecodedAudio, decode_to_f32le
from service.errors import AudioError
from service.gateway.errors import APIError
from service.gateway.refusals import refuse_repeated
from service.gateway.settings import GatewaySettings

RAW_AUDIO_TYPES = ("audio/", "application/octet-stream")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def require_multipart(request: Request) -> None:
    """Dependency of multipart routes: a clear 415 instead of 'field required' errors."""
    kind = media_type(request)
    if kind != "multipart/form-data":
        raise APIError(
            415,
            f"Content-Type must be multipart/form-data with a 'file' part (got {kind or 'none'})",
            code="unsupported_media_type",
        )


def single_valued(form_type: type[BaseModel]) -> Callable[[Request], Awaitable[None]]:
    """Dependency of multipart routes: a field of `form_type` held once, sent twice, is a 400
    (refusals.py `refuse_repeated`). The form is the one FastAPI parsed (Starlette caches it)."""

    async def check(request: Request) -> None:
        form = await request.form()
        refuse_repeated(form_type, (name for name, _ in form.multi_items()))

    return check


def require_json(request: Request) -> None:
    """Dependency of JSON routes: a clear 415 for form posts and the like."""
    kind = media_type(request)
    if kind != "application/json":
        raise APIError(
            415,
            f"Content-Type must be application/json (got {kind or 'none'})",
            code="unsupported_media_type",
        )


def is_raw_audio(request: Request) -> bool:
    return media_type(request).startswith(RAW_AUDIO_TYPES)


def b64decode_field(value: str, param: str) -> bytes:
    """A base64 field of a request (audio in a JSON body or a realtime event), strictly decoded.

    Bad base64 is a 400 ``invalid_value`` naming the field; a realtime session reports the same
    error as an ``error`` event.
    """
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise APIError(
            400, f"{param} is not valid base64: {error}", param=param, code="invalid_value"
        ) from None


async def read_upload(upload: UploadFile) -> bytes:
    # BodyLimitMiddleware already bounds the whole body, so reading the part at once is too.
    return await upload.read()


async def decode_upload(
    data: bytes, settings: GatewaySettings, filename: str | None = None
) -> DecodedAudio:
    """An upload decoded for the speech worker; 400 naming the problem when it cannot be used."""
    try:
        return await _decode(data, settings.max_audio_seconds, settings, filename or None)
    except AudioError as error:
        message = str(error) if filename else f"file: {error}"
        raise APIError(400, message, param="file", code="invalid_audio") from None


async def _decode(
    data: bytes, max_seconds: float, settings: GatewaySettings, filename: str | None = None
) -> DecodedAudio:
    # Decoding is request-sized CPU work: off the event loop.
    limits = AudioLimits(max_seconds=max_seconds, max_bytes=settings.max_body_bytes)
    decode = partial(decode_to_f32le, data, limits=limits, filename=filename)
    return await anyio.to_thread.run_sync(decode)


class AudioBudget:
    """The audio inputs of one request: each within `max_audio_seconds`, all together within
    `max_request_audio_seconds`. Decode every input before encoding any."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.seconds = 0.0

    async def decode(self, data: bytes, param: str) -> DecodedAudio:
        """One input decoded, its seconds counted against the request's total; 400 naming
        `param`."""
        settings = self.settings
        left = settings.max_request_audio_seconds - self.seconds
        # Decoding stops at whichever limit comes first, so the work (and the samples held) of
        # all inputs together is bounded by max_request_audio_seconds too.
        limit = min(settings.max_audio_seconds, left)
        try:
            decoded = await _decode(data, limit, settings)
        except AudioTooLong as error:
            if limit < settings.max_audio_seconds:
                raise self._over_total(param) from None
            raise APIError(
                400,
                f"{param}: audio is too long: more than {error.limit:g} s (max_audio_seconds)",
                param=param,
                code="audio_too_long",
            ) from None
        except AudioError as error:
            raise APIError(400, f"{param}: {error}", param=param, code="invalid_audio") from None
        self.seconds += decoded.seconds
        return decoded

    def _over_total(self, param: str) -> APIError:
        limit = self.settings.max_request_audio_seconds
        return APIError(
            400,
            f"{param}: the audio inputs of this request together are longer than {limit:g} s "
            f"(max_request_audio_seconds)",
            param=param,
            code="audio_too_long",
        )
