"""Transcription sessions, and the transcript of user speech in every session.

A session's ``type`` is ``"realtime"`` (the model answers) or ``"transcription"`` (input audio
is only transcribed: the client appends audio, the server VAD or the client commits turns, and
each committed turn gets ``conversation.item.input_audio_transcription.delta`` events as the
LM's ASR generation produces text, then ``...completed``; no response is ever made). A session
becomes a transcription session when it is opened with ``?intent=transcription`` (the GA way) or
on ``session.update`` with ``session.type: "transcription"`` (beta:
``transcription_session.update``) while no response is in progress. In the beta dialect its
session events are ``transcription_session.created`` / ``transcription_session.updated``.

A transcription session's transcript is the one /v1/audio/transcriptions gives for the same
audio: the same ASR prompt and greedy generation (service/gateway/tasks.py), with the
whitespace around it trimmed as the route trims it. In a conversation session the transcript
is made from the turn's tokens, which the speech worker encoded in its
`realtime_encoder_dtype` (docs/realtime.md#encoder-precision), so on a CPU with native bfloat16
it can differ from the route's. Both ways, deltas hold back trailing whitespace until more
text follows, so the deltas add up to exactly the completed transcript.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from service.gateway.errors import APIError
from service.gateway.realtime import audio_format
from service.gateway.realtime.conversation import Item, Part
from service.gateway.realtime.protocol import BETA, ProtocolError, ServerEvents, SessionIn
from service.gateway.tasks import Tasks

if TYPE_CHECKING:
    from service.gateway.realtime.config import SessionConfig

REALTIME = "realtime"
TRANSCRIPTION = "transcription"
INTENT = "intent"  # the query parameter that opens a transcription session
# Client events that act on responses or on the model's side of the conversation: a
# transcription session has none, so these are refused there.
REFUSED_EVENTS = frozenset(
    {
        "response.create",
        "response.cancel",
        "conversation.item.create",
        "conversation.item.truncate",
        "output_audio_buffer.clear",
    }
)
# session fields that only configure responses; a transcription session refuses them.
_RESPONSE_FIELDS = (
    "instructions",
    "output_modalities",
    "modalities",
    "voice",
    "output_audio_format",
    "temperature",
    "max_output_tokens",
    "max_response_output_tokens",
)

Send = Callable[[dict[str, Any] | None], None]


# ---- the session type


def session_type(value: str | None) -> str:
    if value not in (REALTIME, TRANSCRIPTION):
        raise ProtocolError(
            "invalid_value",
            f"session.type must be 'realtime' or 'transcription', not {str(value)[:40]!r}",
            param="session.type",
        )
    return value


def intent_type(intent: str | None) -> str:
    """The session type a connection's ``?intent=`` asks for."""
    if intent is None:
        return REALTIME
    if intent != TRANSCRIPTION:
        raise ProtocolError(
            "invalid_value",
            f"intent {intent[:40]!r} is not supported; use intent=transcription or leave it out",
            param=INTENT,
        )
    return TRANSCRIPTION


def default_transcription(model: str) -> dict[str, Any]:
    return {"model": model, "language": None, "prompt": None}


def checked(config: SessionConfig, update: SessionIn) -> SessionConfig:
    """The transcription settings checked; a transcription session's configuration always
    transcribing, without response fields."""
    given = update.model_fields_set
    audio_input = update.audio.input if update.audio is not None else None
    if "input_audio_transcription" in given:
        _check_transcription(update.input_audio_transcription, "session.input_audio_transcription")
    if audio_input is not None and "transcription" in audio_input.model_fields_set:
        _check_transcription(audio_input.transcription, "session.audio.input.transcription")
    if config.type != TRANSCRIPTION:
        return config
    for name in _RESPONSE_FIELDS:
        if name in given and getattr(update, name) is not None:
            raise _not_in_transcription(f"session.{name}")
    if update.audio is not None and update.audio.output is not None:
        raise _not_in_transcription("session.audio.output")
    for where, detection in (
        ("session.audio.input.turn_detection", audio_input and audio_input.turn_detection),
        ("session.turn_detection", update.turn_detection),
    ):
        if detection and detection.create_response:
            raise _not_in_transcription(f"{where}.create_response")
    if config.transcription is not None:
        return config
    if "input_audio_transcription" in given or (
        audio_input is not None and "transcription" in audio_input.model_fields_set
    ):
        raise ProtocolError(
            "invalid_value",
            "a transcription session always transcribes: audio.input.transcription cannot be "
            "null (use session.type 'realtime' for a session without transcripts)",
            param="session.audio.input.transcription",
        )
    return dataclasses.replace(config, transcription=default_transcription(config.model))


def _check_transcription(value: dict[str, Any] | None, param: str) -> None:
    """Input transcription settings: the session's own model always transcribes (``model`` is
    kept as given, so OpenAI transcription model names work); the ASR prompt takes no hints, so
    ``language``, ``prompt`` and the like are refused when set."""
    for key, setting in (value or {}).items():
        if key != "model" and setting not in (None, "", []):
            raise ProtocolError(
                "unsupported_parameter",
                f"{param}.{key[:40]} is not supported: the LM's own ASR prompt transcribes "
                "(docs/realtime.md)",
                param=f"{param}.{key[:40]}",
            )


def _not_in_transcription(param: str) -> ProtocolError:
    return ProtocolError(
        "unsupported_parameter",
        f"{param} configures responses; a transcription session (session.type "
        "'transcription') makes none",
        param=param,
    )


def refuse_in_transcription(event_type: str) -> None:
    """Raise for a client event a transcription session has no use for."""
    if event_type in REFUSED_EVENTS:
        raise ProtocolError(
            "unsupported_event",
            f"{event_type} is not available in a transcription session (session.type "
            "'transcription' only transcribes input audio; it never makes a response)",
            param="type",
        )


# ---- rendering


def session_event(events: ServerEvents, config: SessionConfig, name: str) -> str:
    """``session.created`` / ``session.updated`` as the dialect names it for this session."""
    if config.type == TRANSCRIPTION and events.dialect == BETA:
        return "transcription_session." + name.removeprefix("session.")
    return name


def render_session(
    config: SessionConfig, dialect: str, session_id: str, expires_at: int
) -> dict[str, Any]:
    detection = config.turn_detection
    turn_detection = (
        None
        if detection is None
        else {
            "type": "server_vad",
            "threshold": detection.threshold,
            "prefix_padding_ms": detection.prefix_padding_ms,
            "silence_duration_ms": detection.silence_duration_ms,
            "idle_timeout_ms": getattr(detection, "idle_timeout_ms", None),
        }
    )
    if dialect == BETA:
        return {
            "object": "realtime.transcription_session",
            "id": session_id,
            "expires_at": expires_at,
            "modalities": ["text"],
            "input_audio_format": config.input_format,
            "input_audio_sample_rate": config.input_rate,
            "input_audio_transcription": config.transcription,
            "input_audio_noise_reduction": None,
            "turn_detection": turn_detection,
            "include": None,
        }
    return {
        "type": TRANSCRIPTION,
        "object": "realtime.transcription_session",
        "id": session_id,
        "model": config.model,
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": audio_format.render_ga(config.input_format, config.input_rate),
                "transcription": config.transcription,
                "noise_reduction": None,
                "turn_detection": turn_detection,
            }
        },
        "include": None,
    }


# ---- the transcript of a user turn


async def trimmed(deltas: AsyncIterator[str]) -> AsyncIterator[str]:
    """Text deltas without the leading and trailing whitespace of their concatenation."""
    started = False
    held = ""
    async for delta in deltas:
        if not started:
            delta = delta.lstrip()
            started = bool(delta)
        text = held + delta
        body = text.rstrip()
        held = text[len(body) :]
        if body:
            yield body


async def transcribe_input(
    send: Send,
    events: ServerEvents,
    tasks: Tasks,
    model: str,
    item: Item,
    part: Part,
    seconds: float,
    affinity: str,
) -> None:
    """Stream the transcript of a committed user turn: deltas, then completed (or failed)."""
    tokens = await part.speech_tokens()
    where = {"item_id": item.id, "content_index": 0}
    text = ""
    try:
        deltas = tasks.transcript(model, tokens, affinity=affinity)
        async with aclosing(deltas) as raw, aclosing(trimmed(raw)) as stream:
            async for delta in stream:
                text += delta
                send(
                    events.event(
                        "conversation.item.input_audio_transcription.delta", **where, delta=delta
                    )
                )
    except APIError as error:
        send(
            events.event(
                "conversation.item.input_audio_transcription.failed",
                **where,
                error={"type": "server_error", "code": error.code, "message": error.message},
            )
        )
        return
    part.text = text
    send(
        events.event(
            "conversation.item.input_audio_transcription.completed",
            **where,
            transcript=text,
            usage={"type": "duration", "seconds": round(seconds, 3)},
        )
    )
