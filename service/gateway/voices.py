"""Voices of the speech endpoints: the vocoder's speakers, by index or by name.

Spirit LM's vocoders are multi-speaker; the speaker id indexes the embedding table and
`speakers.txt` names the rows (docs/format.md#unit-vocoder). A voice is given as the index
("0".."3"), as the name from `speakers.txt` (any case), or as one of OpenAI's voice names.
OpenAI's names have no counterpart here, so they all mean the default speaker 2: clients written
for OpenAI work unchanged, and the listing says so rather than inventing a mapping.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from service.checkpoints.layout import CheckpointLayout
from service.gateway.errors import APIError

DEFAULT_SPEAKER = 2
# Spirit LM exposes four pre-set voices; used when speakers.txt cannot be read.
FALLBACK_SPEAKERS = 4
OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "marin",
    "cedar",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)


@dataclass(frozen=True)
class Voice:
    id: str  # the speaker index as a string
    name: str | None  # the speakers.txt line, when there is one
    speaker: int


def model_voices(layout: CheckpointLayout, model: str) -> list[Voice]:
    """The speakers of a model's vocoder, named by its `speakers.txt` when readable."""
    names = _speaker_names(layout.vocoder_dir(model) / "speakers.txt")
    if not names:
        return [Voice(str(index), None, index) for index in range(FALLBACK_SPEAKERS)]
    return [Voice(str(index), name or None, index) for index, name in enumerate(names)]


@functools.cache  # read once per vocoder: every request with a voice resolves it
def _speaker_names(path: Path) -> tuple[str, ...]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return ()
    while lines and not lines[-1].strip():
        lines.pop()
    return tuple(line.strip() for line in lines)


def resolve_voice(voices: list[Voice], value: object, model: str, param: str = "voice") -> int:
    """The speaker id of a voice given as index, speakers.txt name or OpenAI name."""
    if value is None:
        return DEFAULT_SPEAKER
    if isinstance(value, dict):  # OpenAI's custom-voice form {"id": "..."}
        extra = sorted(set(value) - {"id"})
        if extra:
            raise APIError(
                400,
                f"{param}.{extra[0]}: a voice object takes only 'id'",
                param=f"{param}.{extra[0]}",
                code="unknown_parameter",
            )
        value = value.get("id")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise APIError(400, f"{param} must be a voice name or a speaker index", param=param)
    key = str(value).strip()
    # Indices first, so that a name that looks like an index cannot shadow one.
    for voice in voices:
        if key == voice.id:
            return voice.speaker
    for voice in voices:
        if voice.name is not None and key.lower() == voice.name.lower():
            return voice.speaker
    if key.lower() in OPENAI_VOICES:
        return DEFAULT_SPEAKER
    choices = ", ".join(
        f"{voice.id} ({voice.name})" if voice.name else voice.id for voice in voices
    )
    raise APIError(
        400,
        f"{param} '{key}' is not available for {model}; choose one of {choices} "
        f"(OpenAI voice names mean speaker {DEFAULT_SPEAKER})",
        param=param,
        code="invalid_voice",
    )


def voices_listing(voices: list[Voice], model: str) -> dict:
    return {
        "object": "list",
        "model": model,
        "default": str(DEFAULT_SPEAKER),
        "data": [
            {
                "id": voice.id,
                "object": "voice",
                "name": voice.name,
                "speaker": voice.speaker,
                "default": voice.speaker == DEFAULT_SPEAKER,
                "aliases": list(OPENAI_VOICES) if voice.speaker == DEFAULT_SPEAKER else [],
            }
            for voice in voices
        ],
    }
