"""Model names: the served Spirit LM variants, plus OpenAI names that clients hard-code.

Clients written for OpenAI send `whisper-1`, `tts-1`, `gpt-realtime`... and cannot always be
told otherwise. The `model_aliases` setting maps such names to a served variant (`default`: the
gateway's configured `--model`); `GET /v1/models` lists them with `alias_of`. Any other name is
a 404 `model_not_found`, so a client never gets a different model than it asked for without a
word. Every route (REST and realtime) resolves names in one place, `Engine.resolve_model`
(service/gateway/engine.py), which uses `target` below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import AfterValidator

from service.checkpoints.layout import VARIANTS

# The alias target meaning "the gateway's configured model" (settings `model`).
DEFAULT_TARGET = "default"

# OpenAI's transcription, speech, audio chat and realtime model names.
OPENAI_AUDIO_MODELS = (
    "whisper-1",
    "gpt-4o-transcribe",
    "gpt-4o-mini-transcribe",
    "tts-1",
    "tts-1-hd",
    "gpt-4o-mini-tts",
    "gpt-4o-audio-preview",
    "gpt-4o-mini-audio-preview",
    "gpt-audio",
    "gpt-audio-mini",
    "gpt-realtime",
    "gpt-realtime-mini",
    "gpt-4o-realtime-preview",
    "gpt-4o-mini-realtime-preview",
)
DEFAULT_ALIASES = ",".join(f"{name}={DEFAULT_TARGET}" for name in OPENAI_AUDIO_MODELS)


def parse_aliases(text: str) -> dict[str, str]:
    """`name=target,name2=target2` as a mapping; ValueError naming the bad entry."""
    aliases: dict[str, str] = {}
    for entry in text.split(","):
        if not entry.strip():
            continue
        name, sep, value = (part.strip() for part in entry.partition("="))
        if not sep or not name or not value:
            raise ValueError(f"model_aliases entry {entry.strip()!r} is not name=target")
        if name in aliases:
            raise ValueError(f"model_aliases names {name!r} twice")
        if name in VARIANTS:
            raise ValueError(f"model_aliases cannot redefine the variant {name!r}")
        if value != DEFAULT_TARGET and value not in VARIANTS:
            raise ValueError(
                f"model_aliases maps {name!r} to {value!r}: the target must be "
                f"{DEFAULT_TARGET!r} or one of {', '.join(VARIANTS)}"
            )
        aliases[name] = value
    return aliases


def _checked(text: str) -> str:
    parse_aliases(text)
    return text


# The settings field's type: a malformed table stops the gateway at start-up.
AliasTable = Annotated[str, AfterValidator(_checked)]


def target(name: str, aliases: Mapping[str, str], default: str) -> str:
    """The variant name `name` stands for: its alias target, else itself (checked by the
    caller, `Engine.resolve_model`, against the variants it has)."""
    found = aliases.get(name, name)
    return default if found == DEFAULT_TARGET else found


def alias_cards(aliases: Mapping[str, str], default: str) -> list[tuple[str, str]]:
    """(alias, variant) pairs for the model listing."""
    return [(name, target(name, aliases, default)) for name in aliases]
