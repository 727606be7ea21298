"""Messages between the gateway and the speech worker (HTTP bodies and WebSocket frames).

HTTP errors use the OpenAI error shape ``{"error": {"message", "type", "param", "code"}}``.
On the synthesis WebSocket, errors are a text frame ``{"type": "error", "message", "status"}``
(``status`` is the HTTP status the same problem gets on the HTTP routes) followed by a close
with code 1008 (the client's fault) or 1011 (the worker's).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from starlette import status

from service.audio.encode import AudioFormat
from service.errors import error_body
from service.units.tokens import Units

# WebSocket close codes (RFC 6455), by Starlette's names.
CLOSE_NORMAL = status.WS_1000_NORMAL_CLOSURE
CLOSE_POLICY = status.WS_1008_POLICY_VIOLATION
CLOSE_INTERNAL = status.WS_1011_INTERNAL_ERROR
CLOSE_TRY_AGAIN = status.WS_1013_TRY_AGAIN_LATER


class WorkerRequestError(Exception):
    """A request the worker refuses; becomes an OpenAI error body or a stream error frame."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return error_body(self.message, kind=kind, param=self.param, code=self.code)

    @property
    def close_code(self) -> int:
        if self.status == 429 or self.status == 503:
            return CLOSE_TRY_AGAIN
        return CLOSE_POLICY if self.status < 500 else CLOSE_INTERNAL


# ---- HTTP


class EncodeResult(BaseModel):
    """`POST /v1/encode`: the units, the token string, the input length.

    Formats: docs/format.md#units-dictionary and docs/format.md#units-to-token-string.
    """

    model: str
    units: dict[str, str]
    tokens: str
    seconds: float


class SilenceUnits(BaseModel):
    """`GET /v1/models/{model}/silence`: the model's HuBERT units of silence, sorted.

    Learnt at load time by encoding silence (`SpeechStack.silence_units`); the gateway uses them
    to end speech output.
    """

    model: str
    silence_units: list[Annotated[int, Field(ge=0)]]


# A HuBERT token of a token string (docs/format.md#units-to-token-string), counted unparsed.
_HUBERT_TOKEN = re.compile(r"\[Hu[0-9]")


def units_over_limit(
    tokens: str | None, units: UnitsPayload | None, limit: int
) -> tuple[str, str] | None:
    """(field, message) when a one-shot synthesis request has more HuBERT units than `limit`
    (the `max_detokenize_units` setting of the gateway and of the speech worker).

    One-shot synthesis holds all of its audio and activations at once, so its units are counted
    before anything is parsed or synthesized: [Hu..] tokens of a token string, or entries of
    `units.hubert`.
    """
    if tokens is not None:
        count, field = sum(1 for _ in _HUBERT_TOKEN.finditer(tokens)), "tokens"
    elif units is not None:
        count, field = units.hubert_count(), "units.hubert"
    else:
        return None
    if count <= limit:
        return None
    return (
        field,
        f"{field}: {count} HuBERT units exceed the limit of {limit} (max_detokenize_units)",
    )


class UnitsPayload(BaseModel):
    """Units as space-separated strings (docs/format.md#units-dictionary) or integer lists."""

    model_config = ConfigDict(extra="forbid")

    hubert: str | list[int]
    pitch: str | list[int] | None = None
    style: str | list[int] | None = None

    def hubert_count(self) -> int:
        """HuBERT units given, counted before parsing (limits apply before any work)."""
        if isinstance(self.hubert, str):
            return len(self.hubert.split())
        return len(self.hubert)

    def to_units(self) -> Units:
        """Parse the strings; raises UnitFormatError naming the field."""
        given = {
            name: value if isinstance(value, str) else " ".join(str(v) for v in value)
            for name, value in (
                ("hubert", self.hubert),
                ("pitch", self.pitch),
                ("style", self.style),
            )
            if value is not None
        }
        return Units.from_dict(given)


class DecodeRequest(BaseModel):
    """`POST /v1/decode`: exactly one of `tokens` and `units`."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: str | None = None
    units: UnitsPayload | None = None
    speaker: int = 2
    duration_prediction: bool = True
    format: AudioFormat = "wav"
    sample_rate: int = 16000
    seed: int | None = Field(
        default=None,
        description="Seeds the random style fallback (docs/format.md#token-string-to-units).",
    )


# ---- WebSocket /v1/stream


class TokensMessage(BaseModel):
    """Speech token strings in LM order; `context` ones are vocoded but their audio not sent."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["tokens"]
    tokens: list[str]
    context: bool = False


class EndMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["end"]


class CancelMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["cancel"]


ClientMessage = Annotated[TokensMessage | EndMessage | CancelMessage, Field(discriminator="type")]
CLIENT_MESSAGE = TypeAdapter(ClientMessage)


class DoneMessage(BaseModel):
    """Sent after the last audio frame: `samples` = pcm16 samples sent, at the stream's rate."""

    type: Literal["done"] = "done"
    samples: int


class ErrorMessage(BaseModel):
    type: Literal["error"] = "error"
    message: str
    status: int = 400


__all__ = [
    "AudioFormat",
    "CLIENT_MESSAGE",
    "CLOSE_INTERNAL",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_TRY_AGAIN",
    "CancelMessage",
    "ClientMessage",
    "DecodeRequest",
    "DoneMessage",
    "EncodeResult",
    "EndMessage",
    "ErrorMessage",
    "SilenceUnits",
    "TokensMessage",
    "UnitsPayload",
    "WorkerRequestError",
    "units_over_limit",
]
