"""Audio uploads of the gateway: content-type checks, reading, base64 fields, and the limits.

The gateway decodes an upload once before a speech worker sees it: that rejects corrupt, empty
and over-long audio with a 400 naming the problem before any model work is queued, and gives the
duration (verbose transcriptions need it). The check keeps nothing of the decoded audio (memory is
one block, service/audio/decode.py `audio_seconds`) and stops at the gateway's
`max_audio_seconds`, so a long file costs only the allowed part. The worker receives the original
bytes, so its units are exactly those of the same file given to `spiritlm-serve tokenize`.

A request with several audio inputs (/v1/generate `inputs`, chat `input_audio` parts) has an
`AudioBudget`: every input is checked against `max_audio_seconds` and all of them together against
`max_request_audio_seconds`, before the first one is encoded (docs/security.md#limits).
"""

from __future__ import annotations

import base64
import binascii
from functools import partial

import anyio.to_thread
from fastapi import Request, UploadFile

from service.audio.decode import AudioLimits, AudioTooLong, audio_seconds
from service.errors import AudioError
from service.gateway.errors import APIError
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


async def check_audio(data: bytes, settings: GatewaySettings, filename: str | None = None) -> float:
    """Seconds of audio in an upload; 400 naming the problem when it cannot be used."""
    try:
        return await _seconds(data, settings.max_audio_seconds, settings, filename or None)
    except AudioError as error:
        message = str(error) if filename else f"file: {error}"
        raise APIError(400, message, param="file", code="invalid_audio") from None


async def _seconds(
    data: bytes, max_seconds: float, settings: GatewaySettings, filename: str | None = None
) -> float:
    # Decoding is request-sized CPU work: off the event loop.
    limits = AudioLimits(max_seconds=max_seconds, max_bytes=settings.max_body_bytes)
    probe = partial(audio_seconds, data, limits=limits, filename=filename)
    return await anyio.to_thread.run_sync(probe)


class AudioBudget:
    """The audio inputs of one request: each within `max_audio_seconds`, all together within
    `max_request_audio_seconds`. Check every input before encoding any."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.seconds = 0.0

    async def check(self, data: bytes, param: str) -> float:
        """Seconds of one input, counted against the request's total; 400 naming `param`."""
        settings = self.settings
        left = settings.max_request_audio_seconds - self.seconds
        # Decoding stops at whichever limit comes first, so the work of all checks together is
        # bounded by max_request_audio_seconds too.
        limit = min(settings.max_audio_seconds, left)
        try:
            seconds = await _seconds(data, limit, settings)
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
        self.seconds += seconds
        return seconds

    def _over_total(self, param: str) -> APIError:
        limit = self.settings.max_request_audio_seconds
        return APIError(
            400,
            f"{param}: the audio inputs of this request together are longer than {limit:g} s "
            f"(max_request_audio_seconds)",
            param=param,
            code="audio_too_long",
        )
