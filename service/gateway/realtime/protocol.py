"""The realtime protocol's events: client event models, the parser, and server event builders.

The wire format is the OpenAI Realtime API's: JSON text frames, each an object with a `type`.
`parse_client_event` turns a frame into one of the client event models and raises nothing but
`ProtocolError` (which becomes an ``error`` event naming the offending `event_id`), whatever the
frame holds. A field that no event of the API has is refused (``unknown_parameter``, as OpenAI
does), never ignored: a misspelt setting must not leave the session silently unchanged.

Two dialects of server events exist: the GA names (``response.output_audio.delta``,
``conversation.item.added``, ...) and the beta names (``response.audio.delta``,
``conversation.item.created``, ...). A session speaks GA unless the client asked for the beta
(header ``OpenAI-Beta: realtime=v1`` or subprotocol ``openai-beta.realtime-v1``). Client events
and session fields are accepted in both spellings in either dialect.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from service.gateway.json_text import (
    lone_surrogate_message,
    lone_surrogate_path,
    may_hold_surrogates,
)
from service.gateway.realtime.conversation import Item, Part

Dialect = Literal["ga", "beta"]
GA: Dialect = "ga"
BETA: Dialect = "beta"

# GA server event names -> beta names, where they differ: the one table of the two dialects
# (the SDK, which cannot import the service, mirrors it in clients/python/spiritlm_client/).
BETA_EVENT_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}
# Events the beta has no counterpart for.
_GA_ONLY_EVENTS = {"conversation.item.done"}
# Content part types of assistant output, GA -> beta.
_BETA_PART_TYPES = {"output_audio": "audio", "output_text": "text"}


class ProtocolError(Exception):
    """A client event the session cannot act on; reported as an ``error`` event."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.event_id = event_id
        self.kind = kind


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


# ---- client events -------------------------------------------------------------------------

Modality = Literal["audio", "text"]
MaxTokens = Annotated[int, Field(ge=1)] | Literal["inf"]
# A response's metadata is kept with it and echoed in its events: bounded as OpenAI bounds it
# (16 pairs, keys of 64 characters, values of 512).
MAX_METADATA_PAIRS = 16
MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_PAIRS)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: str | None = Field(default=None, max_length=512)


class TurnDetectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(default=None, ge=0, le=5000)
    silence_duration_ms: int | None = Field(default=None, ge=50, le=10000)
    create_response: bool | None = None
    interrupt_response: bool | None = None
    # Input audio time without speech after which a reply is asked for (idle_timeout.py).
    idle_timeout_ms: int | None = Field(default=None, ge=5000, le=30000)


class AudioFormatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    rate: int | None = None


class InputAudioIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: AudioFormatIn | None = None
    transcription: dict[str, Any] | None = None
    turn_detection: TurnDetectionIn | None = None
    noise_reduction: dict[str, Any] | None = None  # refused when set (unhonoured.py)


class OutputAudioIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: AudioFormatIn | None = None
    voice: StrictStr | StrictInt | None = None
    speed: float | None = None  # only 1.0 (unhonoured.py)


class AudioIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: InputAudioIn | None = None
    output: OutputAudioIn | None = None


class SessionIn(BaseModel):
    """`session` of session.update: GA and beta fields; only the fields given are applied."""

    model_config = ConfigDict(extra="forbid")

    type: str | None = None
    model: str | None = None
    instructions: str | None = Field(default=None, max_length=20000)
    output_modalities: list[Modality] | None = Field(default=None, min_length=1)
    modalities: list[Modality] | None = Field(default=None, min_length=1)
    audio: AudioIn | None = None
    voice: StrictStr | StrictInt | None = None
    input_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    output_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    input_audio_transcription: dict[str, Any] | None = None
    turn_detection: TurnDetectionIn | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_output_tokens: MaxTokens | None = None
    max_response_output_tokens: MaxTokens | None = None
    # OpenAI fields Spirit LM does not honour: refused when set to anything but their
    # defaults (unhonoured.py).
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    include: list[str] | None = None
    truncation: str | dict[str, Any] | None = None
    tracing: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    speed: float | None = None
    input_audio_noise_reduction: dict[str, Any] | None = None


class SessionUpdate(_Event):
    type: Literal["session.update"]
    session: SessionIn


class TranscriptionSessionUpdate(_Event):
    """The beta's update of a transcription session: session.update with type 'transcription'."""

    type: Literal["transcription_session.update"]
    session: SessionIn


class AudioAppend(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class AudioCommit(_Event):
    type: Literal["input_audio_buffer.commit"]


class AudioClear(_Event):
    type: Literal["input_audio_buffer.clear"]


class ContentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["input_text", "input_audio", "text", "output_text", "audio", "output_audio"]
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, max_length=64)
    # As in OpenAI's API, an item may carry the `object` and `status` of the item events it was
    # copied from; they have no effect on the conversation.
    object: Literal["realtime.item"] | None = None
    status: Literal["completed", "incomplete", "in_progress"] | None = None
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system"]
    content: list[ContentIn] = Field(min_length=1, max_length=64)


class ItemCreate(_Event):
    type: Literal["conversation.item.create"]
    previous_item_id: str | None = None
    item: ItemIn


class ItemDelete(_Event):
    type: Literal["conversation.item.delete"]
    item_id: str


class ItemTruncate(_Event):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int = Field(ge=0)
    audio_end_ms: int = Field(ge=0)


class ItemRetrieve(_Event):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class OutputAudioClear(_Event):
    type: Literal["output_audio_buffer.clear"]


class ResponseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output_modalities: list[Modality] | None = Field(default=None, min_length=1)
    modalities: list[Modality] | None = Field(default=None, min_length=1)
    instructions: str | None = Field(default=None, max_length=20000)
    conversation: Literal["auto", "none"] | None = None
    metadata: Metadata | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_output_tokens: MaxTokens | None = None
    max_response_output_tokens: MaxTokens | None = None
    input: list[Any] | None = None
    # Honoured only when they say what the session already does (unhonoured.py).
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    audio: AudioIn | None = None
    voice: StrictStr | StrictInt | None = None
    output_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None


class ResponseCreate(_Event):
    type: Literal["response.create"]
    response: ResponseIn = Field(default_factory=ResponseIn)


class ResponseCancel(_Event):
    type: Literal["response.cancel"]
    response_id: str | None = None


ClientEvent = Annotated[
    SessionUpdate
    | TranscriptionSessionUpdate
    | AudioAppend
    | AudioCommit
    | AudioClear
    | ItemCreate
    | ItemDelete
    | ItemTruncate
    | ItemRetrieve
    | OutputAudioClear
    | ResponseCreate
    | ResponseCancel,
    Field(discriminator="type"),
]
_CLIENT_EVENT: TypeAdapter[Any] = TypeAdapter(ClientEvent)
CLIENT_EVENT_TYPES = (
    "session.update",
    "transcription_session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.delete",
    "conversation.item.truncate",
    "conversation.item.retrieve",
    "output_audio_buffer.clear",
    "response.create",
    "response.cancel",
)


def parse_client_event(frame: str) -> Any:
    """One client event model from a text frame; raises only `ProtocolError`."""
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError) as error:
        raise ProtocolError("invalid_json", f"the message is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_event", "an event must be a JSON object with a 'type'")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(
            "missing_required_parameter", "the event has no 'type'", param="type", event_id=event_id
        )
    if kind not in CLIENT_EVENT_TYPES:
        raise ProtocolError(
            "unknown_event",
            f"unknown event type '{kind[:80]}'; supported: {', '.join(CLIENT_EVENT_TYPES)}",
            param="type",
            event_id=event_id,
        )
    if may_hold_surrogates(frame):  # text that is not Unicode (json_text.py)
        path = lone_surrogate_path(data)
        if path is not None:
            message = lone_surrogate_message(path)
            raise ProtocolError("invalid_value", message, param=path or None, event_id=event_id)
    try:
        return _CLIENT_EVENT.validate_python(data)
    except ValidationError as error:
        raise _validation_error(error, event_id) from None
    except (ValueError, TypeError, RecursionError) as error:
        raise ProtocolError("invalid_value", str(error), event_id=event_id) from None


def _validation_error(error: ValidationError, event_id: str | None) -> ProtocolError:
    first = error.errors()[0]
    # The discriminator tag is the first location element; it is not part of the field path.
    location = [str(part) for part in first.get("loc", ())][1:]
    param = ".".join(location) or None
    if first.get("type") == "extra_forbidden":  # a field no event of the API has: never ignored
        return ProtocolError(
            "unknown_parameter", f"Unknown parameter: '{param}'.", param=param, event_id=event_id
        )
    missing = first.get("type") == "missing"
    code = "missing_required_parameter" if missing else "invalid_value"
    message = f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "")
    return ProtocolError(code, message, param=param, event_id=event_id)


# ---- server events -------------------------------------------------------------------------


class ServerEvents:
    """Builds server events in one dialect; `None` for events the dialect does not have."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def event(self, name: str, **fields: Any) -> dict[str, Any] | None:
        if self.dialect == BETA:
            if name in _GA_ONLY_EVENTS:
                return None
            name = BETA_EVENT_NAMES.get(name, name)
        return {"type": name, "event_id": new_id("event"), **fields}

    def part_type(self, ga_type: str) -> str:
        return _BETA_PART_TYPES.get(ga_type, ga_type) if self.dialect == BETA else ga_type

    def item(self, item: Item) -> dict[str, Any]:
        return {
            "id": item.id,
            "object": "realtime.item",
            "type": "message",
            "role": item.role,
            "status": item.status,
            "content": [self.part(part, item.role) for part in item.parts],
        }

    def part(self, part: Part, role: str = "assistant") -> dict[str, Any]:
        if role != "assistant":
            if part.kind == "audio":
                return {"type": "input_audio", "transcript": part.text or None}
            return {"type": "input_text", "text": part.text}
        if part.kind == "audio":
            return {"type": self.part_type("output_audio"), "transcript": part.text}
        return {"type": self.part_type("output_text"), "text": part.text}

    def modalities_key(self) -> str:
        return "modalities" if self.dialect == BETA else "output_modalities"

    def error(self, problem: ProtocolError) -> dict[str, Any]:
        return {
            "type": "error",
            "event_id": new_id("event"),
            "error": {
                "type": problem.kind,
                "code": problem.code,
                "message": problem.message,
                "param": problem.param,
                "event_id": problem.event_id,
            },
        }
