"""A chat conversation -> the inputs of one interleaved Spirit LM prompt.

Spirit LM is a pretrained (not instruction-tuned) model with no chat template, so a conversation
is rendered as the interleaved sequence the model was trained on, without role labels:

* turns in order, the system (or developer) text first where the client put it;
* each text part as text, each ``input_audio`` part as its speech token string, each assistant
  turn that carries ``audio: {id}`` as the speech tokens generated for that id (its text content,
  the transcript of the same utterance, is then not repeated);
* every turn ends with a newline (`TurnEnd`), speech turns included, as every shot of the
  few-shot formats does: the model's reply can then end its turn the same way
  (docs/speech-turns.md);
* modality prefixes ``[Text]``/``[Speech]`` where the modality changes and after a speech turn
  (docs/prompt-format.md), then the prefix of the requested output modality.

E.g. system "Be brief.", user audio A, assistant audio id B, user text "why?" asking for
speech gives ``[Text]Be brief.\\n[Speech]<A>\\n[Speech]<B>\\n[Text]why?\\n[Speech]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.audio.decode import DecodedAudio
from service.gateway.chat.memory import AudioIdError, ChatMemory
from service.gateway.chat.protocol import ChatMessage
from service.gateway.engine import Engine
from service.gateway.errors import APIError
from service.gateway.refusals import refuse_unknown_keys
from service.gateway.settings import GatewaySettings
from service.gateway.uploads import AudioBudget, b64decode_field
from service.lm.prompt import PromptInput, SpeechInput, TextInput, TurnEnd

# What input_audio.format may say; the bytes are sniffed anyway (service/audio/decode.py).
INPUT_AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg", "opus", "webm", "m4a", "mp4", "aac", "aiff")
_TEXT_ONLY_ROLES = ("system", "developer", "assistant")


class _Parts:
    def __init__(self) -> None:
        self.items: list[PromptInput] = []

    def text(self, text: str) -> None:
        if text:
            self.items.append(TextInput(text))

    def speech(self, tokens: str) -> None:
        if tokens:
            self.items.append(SpeechInput(tokens))

    def end_turn(self) -> None:
        if self.items and not isinstance(self.items[-1], TurnEnd):
            self.items.append(TurnEnd())


async def conversation_inputs(
    messages: Sequence[ChatMessage],
    engine: Engine,
    model: str,
    memory: ChatMemory,
    settings: GatewaySettings | None = None,
) -> list[PromptInput]:
    """The prompt inputs of a conversation. With `settings`, every `input_audio` part is
    checked (each and all together, `AudioBudget`) before the first is encoded."""
    _check_part_keys(messages)
    audio = await _checked_audio(messages, AudioBudget(settings)) if settings is not None else {}
    parts = _Parts()
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if message.role == "assistant" and message.audio is not None:
            parts.speech(_stored_audio(message.audio.id, model, memory, f"{where}.audio.id"))
        else:
            for number, part in enumerate(_content(message, where)):
                source = _Source(engine, model, memory, f"{where}.content[{number}]", audio)
                await _add_part(parts, part, message.role, source)
        parts.end_turn()
    if not parts.items:
        raise APIError(400, "messages: the conversation has no content", param="messages")
    return parts.items


def text_chars(messages: Sequence[ChatMessage]) -> int:
    """Characters of text across the messages (bounded by max_prompt_chars before tokenizing)."""
    total = 0
    for message in messages:
        if isinstance(message.content, str):
            total += len(message.content)
        elif message.content is not None:
            texts = (part.get("text") for part in message.content if isinstance(part, dict))
            total += sum(len(text) for text in texts if isinstance(text, str))
    return total


def _content(message: ChatMessage, where: str) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"type": "text", "text": message.content}]
    if message.content is None:
        if message.role != "assistant":
            raise APIError(400, f"{where}.content is required", param=f"{where}.content")
        return []
    return message.content


@dataclass(frozen=True)
class _Source:
    """What encoding one content part needs, and the part's field path for errors."""

    engine: Engine
    model: str
    memory: ChatMemory
    where: str
    # Audio already decoded and checked by `_checked_audio`, by `where`: the part's bytes (the
    # key of the memory's cache) and their decoded samples (what the speech worker encodes).
    checked: dict[str, tuple[bytes, DecodedAudio]]


async def _checked_audio(
    messages: Sequence[ChatMessage], budget: AudioBudget
) -> dict[str, tuple[bytes, DecodedAudio]]:
    """Every input_audio part, by field path, each decoded within the budget."""
    checked: dict[str, tuple[bytes, DecodedAudio]] = {}
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if message.role in _TEXT_ONLY_ROLES:
            continue  # input_audio is refused there (`_add_part`)
        for number, part in enumerate(_content(message, where)):
            if part.get("type") != "input_audio":
                continue
            field = f"{where}.content[{number}].input_audio"
            audio = _input_audio_bytes(part.get("input_audio"), field)
            decoded = await budget.decode(audio, f"{field}.data")
            checked[f"{where}.content[{number}]"] = (audio, decoded)
    return checked


# The keys of the content parts we take; any other key is refused by name (docs/audio-api.md).
_PART_KEYS = {
    "text": frozenset({"type", "text"}),
    "input_audio": frozenset({"type", "input_audio"}),
}
_INPUT_AUDIO_KEYS = frozenset({"data", "format"})


def _check_part_keys(messages: Sequence[ChatMessage]) -> None:
    """Unknown keys of content parts are refused by name, before any audio is decoded."""
    for index, message in enumerate(messages):
        if not isinstance(message.content, list):
            continue
        for number, part in enumerate(message.content):
            where = f"messages[{index}].content[{number}]"
            kind = part.get("type")
            if not isinstance(kind, str):
                raise APIError(400, f"{where}.type must be a string", param=f"{where}.type")
            if kind in _PART_KEYS:
                refuse_unknown_keys(part, _PART_KEYS[kind], where)
            inner = part.get("input_audio") if kind == "input_audio" else None
            if isinstance(inner, dict):
                refuse_unknown_keys(inner, _INPUT_AUDIO_KEYS, f"{where}.input_audio")


async def _add_part(parts: _Parts, part: dict[str, Any], role: str, source: _Source) -> None:
    where = source.where
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise APIError(400, f"{where}.text must be a string", param=f"{where}.text")
        parts.text(text)
    elif kind == "input_audio" and role not in _TEXT_ONLY_ROLES:
        parts.speech(await _encode_input_audio(part.get("input_audio"), source))
    else:
        allowed = "'text'" if role in _TEXT_ONLY_ROLES else "'text' or 'input_audio'"
        raise APIError(
            400,
            f"{where}.type: {kind[:80]!r} is not supported in a {role} message; use {allowed}",
            param=f"{where}.type",
        )


async def _encode_input_audio(value: object, source: _Source) -> str:
    field = f"{source.where}.input_audio"
    checked = source.checked.get(source.where)
    audio = checked[0] if checked is not None else _input_audio_bytes(value, field)
    cached = source.memory.encoded(source.model, audio)
    if cached is not None:
        return cached
    try:
        encoded = await source.engine.encode(
            checked[1] if checked is not None else audio, source.model
        )
    except APIError as error:
        if error.status >= 500:
            raise
        raise APIError(
            error.status, f"{field}.data: {error.message}", param=f"{field}.data"
        ) from None
    source.memory.remember_encoded(source.model, audio, encoded.tokens)
    return encoded.tokens


def _input_audio_bytes(value: object, field: str) -> bytes:
    """The decoded `data` of an input_audio object {data, format}; 400 naming what is wrong."""
    if not isinstance(value, dict):
        raise APIError(400, f"{field} must be an object {{data, format}}", param=field)
    fmt = value.get("format")
    if not isinstance(fmt, str) or fmt.lower() not in INPUT_AUDIO_FORMATS:
        raise APIError(
            400,
            f"{field}.format: {fmt!r} is not supported; use one of "
            f"{', '.join(INPUT_AUDIO_FORMATS)}",
            param=f"{field}.format",
        )
    data = value.get("data")
    if not isinstance(data, str) or not data:
        raise APIError(
            400, f"{field}.data must be a non-empty base64 string", param=f"{field}.data"
        )
    return b64decode_field(data, f"{field}.data")


def _stored_audio(audio_id: str, model: str, memory: ChatMemory, param: str) -> str:
    try:
        stored = memory.get_audio(audio_id)
    except AudioIdError as error:
        raise APIError(400, f"{param}: the audio id {error}", param=param) from None
    if stored.model != model:
        raise APIError(
            400,
            f"{param}: the audio was generated by {stored.model}, not {model}",
            param=param,
        )
    return stored.tokens
