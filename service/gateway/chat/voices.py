"""The `voice` of a request -> the vocoder's speaker id.

A voice is a speaker index (``2`` or ``"2"``) or a name from the vocoder's speakers.txt (the line
number is the id, spec §2.6). OpenAI's preset voice names ("alloy", ...) have no counterpart and
mean the default speaker, so unmodified OpenAI clients work. Anything else is refused with the
list of valid names, before a speech worker is involved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from service.checkpoints.layout import CheckpointLayout
from service.gateway.errors import APIError

DEFAULT_SPEAKER = 2  # the reference's default for both variants (spec §2.6)
OPENAI_VOICES = frozenset(
    {
        "alloy",
        "ash",
        "ballad",
        "cedar",
        "coral",
        "echo",
        "fable",
        "marin",
        "nova",
        "onyx",
        "sage",
        "shimmer",
        "verse",
    }
)


@dataclass(frozen=True)
class Voices:
    names: tuple[str, ...]
    count: int  # rows of the speaker table; 0 when the vocoder takes no speaker

    def resolve(self, voice: str | int | None, param: str) -> int:
        if voice is None or isinstance(voice, str) and voice.lower() in OPENAI_VOICES:
            return DEFAULT_SPEAKER if self.count == 0 else min(DEFAULT_SPEAKER, self.count - 1)
        if isinstance(voice, str) and voice in self.names:
            return self.names.index(voice)
        index = _as_index(voice)
        if index is not None and (self.count == 0 or 0 <= index < self.count):
            return index
        valid = f"0..{self.count - 1}" if self.count else "any index"
        names = ", ".join(self.names) or "none"
        raise APIError(
            400,
            f"{param}: unknown voice {voice!r}; use a speaker index ({valid}), a name ({names}) "
            "or an OpenAI voice name (the default speaker)",
            param=param,
        )


def _as_index(voice: str | int) -> int | None:
    if isinstance(voice, int) and not isinstance(voice, bool):
        return voice
    if isinstance(voice, str) and voice.isascii() and voice.isdigit() and len(voice) < 6:
        return int(voice)
    return None


def voices_for(layout: CheckpointLayout, model: str) -> Voices:
    return _read_voices(layout.vocoder_dir(model))


@lru_cache(maxsize=8)
def _read_voices(vocoder_dir: Path) -> Voices:
    # The gateway has no vocoder loaded; the speech worker loaded these same files and has
    # checked them, so unreadable files here only mean "no names" (the worker still validates).
    try:
        lines = (vocoder_dir / "speakers.txt").read_text(encoding="utf-8").splitlines()
        names = tuple(line.strip() for line in lines)
    except (OSError, UnicodeDecodeError):
        names = ()
    try:
        config = json.loads((vocoder_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        config = {}
    multispeaker = bool(config.get("multispkr")) and config.get("embedder_params") is None
    count = int(config.get("num_speakers", 200)) if multispeaker else 0
    return Voices(names, count)
