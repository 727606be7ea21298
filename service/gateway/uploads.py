"""Audio uploads of the gateway: content-type checks, reading, base64 fields, and the limits.

The gateway decodes an upload once before a speech worker sees it: that rejects corrupt, empty
and over-long audio with a 400 naming the problem before any model work is queued, and gives the
duration (verbose transcriptions need it). Decoding stops at the gateway's `max_audio_seconds`,
so a long file costs only the allowed part. The worker receives the original bytes, so its units
are exactly those of the same file given to `spiritlm-serve tokenize`.
"""

from __future__ import annotations

import base64
import binascii
from functools import partial

import anyio.to_thread
from fastapi import Request, UploadFile

from service.audio.decode import AudioLimits, decode_audio
from service.errors import AudioError
from service.gateway.errors import APIError
from service.gateway.settings import GatewaySettings

TARGET_RATE = 16000
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
    limits = AudioLimits(max_seconds=settings.max_audio_seconds, max_bytes=settings.max_body_bytes)
    decode = partial(decode_audio, data, limits=limits, filename=filename or None)
    try:
        wav = await anyio.to_thread.run_sync(decode)
    except AudioError as error:
        message = str(error) if filename else f"file: {error}"
        raise APIError(400, message, param="file", code="invalid_audio") from None
    return len(wav) / TARGET_RATE
