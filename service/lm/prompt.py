"""Prompt construction and few-shot prompts.

The rules are in docs/format.md#prompts and docs/format.md#few-shot-prompts. Speech inputs
arrive already encoded as token strings (docs/format.md#units-to-token-string; base variant:
HuBERT tokens only), so everything here is string assembly.

Few-shot formats. The reference only has the STSP builder; for ASR, TTS and classification
(which the paper evaluates but the code lacks) we use the same shape: each shot is its input part
followed by its output part, each with its own modality prefix, and every shot ends with a
newline; the query follows with the prefix of the wanted output modality:

* ASR:            ``[Speech]<units>[Text]<transcript>\\n`` … ``[Speech]<units>[Text]``
* TTS:            ``[Text]<transcript>[Speech]<units>\\n`` … ``[Text]<transcript>[Speech]``
* classification: ``[Speech]<units>[Text]<label>\\n`` … ``[Speech]<units>[Text]``

A text answer is complete at the first newline, so callers should stop text generation there.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

TEXT_PREFIX = "[Text]"
SPEECH_PREFIX = "[Speech]"


class OutputModality(str, enum.Enum):
    TEXT = "text"
    SPEECH = "speech"
    ARBITRARY = "arbitrary"

    @classmethod
    def parse(cls, value: OutputModality | str) -> OutputModality:
        """Accept the enum or its name/value in any case (the reference upper-cases strings)."""
        if isinstance(value, OutputModality):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ValueError(f"output modality: '{value}' is not one of {names}") from None


@dataclass(frozen=True)
class TextInput:
    text: str


@dataclass(frozen=True)
class SpeechInput:
    """Speech already encoded to its token string (no ``[Speech]`` prefix)."""

    tokens: str


@dataclass(frozen=True)
class TurnEnd:
    """The end of a conversation turn: a newline, as every shot of the few-shot formats ends.

    After text it is part of the text (the next text input follows it with no prefix); after
    speech it closes the speech, so the next input states its modality again, as in the TTS
    shots' ``[Speech]<units>\\n[Text]...``. Generation can then end the same way
    (service/lm/ending.py).
    """

    text: str = "\n"


PromptInput = TextInput | SpeechInput | TurnEnd


def _prefix(part: TextInput | SpeechInput) -> str:
    return TEXT_PREFIX if isinstance(part, TextInput) else SPEECH_PREFIX


def _content(part: TextInput | SpeechInput) -> str:
    return part.text if isinstance(part, TextInput) else part.tokens


def build_prompt(inputs: Sequence[PromptInput], output_modality: OutputModality | str) -> str:
    """Interleave the inputs into a prompt (docs/format.md#building-prompts).

    A modality prefix is written only when the modality changes, so consecutive text inputs are
    concatenated verbatim and consecutive speech inputs share one ``[Speech]``; a `TurnEnd`
    writes a newline (and after speech makes the next input restate its prefix). Then TEXT output
    appends ``[Text]`` unless the last input was text, SPEECH output appends ``[Speech]`` unless
    the last input was speech, ARBITRARY appends nothing.
    """
    modality = OutputModality.parse(output_modality)
    parts: list[str] = []
    previous: type | None = None
    for part in inputs:
        if isinstance(part, TurnEnd):
            if previous is not None:
                parts.append(part.text)
                previous = TextInput if previous is TextInput else None
            continue
        if not isinstance(part, TextInput | SpeechInput):
            raise TypeError(f"prompt input: expected TextInput or SpeechInput, got {type(part)}")
        if type(part) is not previous:
            parts.append(_prefix(part))
        parts.append(_content(part))
        previous = type(part)
    if modality is OutputModality.TEXT and previous is not TextInput:
        parts.append(TEXT_PREFIX)
    elif modality is OutputModality.SPEECH and previous is not SpeechInput:
        parts.append(SPEECH_PREFIX)
    return "".join(parts)


def explicit_prompt(prompt: str, output_modality: OutputModality | str) -> str:
    """An explicit prompt string is used verbatim whatever the output modality.

    See docs/format.md#generation-inputs and docs/format.md#building-prompts.
    """
    OutputModality.parse(output_modality)  # still reject an unknown modality
    return prompt


# ---------------------------------------------------------------------------------------------
# Few-shot prompts


def render_part(part: TextInput | SpeechInput) -> str:
    """One part of a shot with its own prefix: ``[Text]t`` or ``[Speech]<tokens>``."""
    return _prefix(part) + _content(part)


def render_shot(source: TextInput | SpeechInput, target: TextInput | SpeechInput) -> str:
    """Input then output, each prefixed even when both are text (``[Text]a[Text]b``)."""
    return render_part(source) + render_part(target)


def shots_block(shots: Sequence[tuple[PromptInput, PromptInput]]) -> str:
    """Shots each followed by a newline; empty for no shots."""
    return "".join(render_shot(source, target) + "\n" for source, target in shots)


def few_shot_prompt(
    shots: Sequence[tuple[PromptInput, PromptInput]],
    query: PromptInput,
    output_modality: OutputModality | str,
) -> str:
    """Shots, then the query followed by the prefix of the wanted output modality."""
    return shots_block(shots) + build_prompt([query], output_modality)


def asr_prompt(shots: Sequence[tuple[str, str]], query_tokens: str) -> str:
    """Speech recognition; shots are (speech token string, transcript)."""
    pairs = [(SpeechInput(tokens), TextInput(text)) for tokens, text in shots]
    return few_shot_prompt(pairs, SpeechInput(query_tokens), OutputModality.TEXT)


def tts_prompt(shots: Sequence[tuple[str, str]], query_text: str) -> str:
    """Speech synthesis; shots are (transcript, speech token string)."""
    pairs = [(TextInput(text), SpeechInput(tokens)) for text, tokens in shots]
    return few_shot_prompt(pairs, TextInput(query_text), OutputModality.SPEECH)


def classification_prompt(shots: Sequence[tuple[str, str]], query_tokens: str) -> str:
    """Speech classification; shots are (speech token string, label), labels used verbatim."""
    pairs = [(SpeechInput(tokens), TextInput(label)) for tokens, label in shots]
    return few_shot_prompt(pairs, SpeechInput(query_tokens), OutputModality.TEXT)


def stsp_reference_prompt(shots: Sequence[tuple[PromptInput, PromptInput]]) -> str:
    """The reference's STSP few-shot prompt: ``"\\n".join(shots) + "\\n"``.

    See docs/format.md#few-shot-prompts. The reference passes this as the explicit prompt, so
    the item to evaluate never reaches the model; `stsp_prompt` is the corrected form that
    appends the item.
    """
    return "\n".join(render_shot(source, target) for source, target in shots) + "\n"


def stsp_prompt(
    shots: Sequence[tuple[PromptInput, PromptInput]],
    query: PromptInput,
    output_modality: OutputModality | str,
) -> str:
    """STSP shots followed by the item to evaluate and the output prefix."""
    return stsp_reference_prompt(shots) + build_prompt([query], output_modality)


Row = TypeVar("Row", bound=Mapping[str, Any])


def select_stsp_rows(rows: Sequence[Row], n_shots: int, rng: random.Random) -> list[Row]:
    """``ceil(n_shots / 3)`` random rows per `sentiment`, grouped in sorted sentiment order.

    Same selection rule as the reference (docs/format.md#few-shot-prompts), but drawn from
    `rng`; the reference samples with pandas' global RNG, so the exact rows it picks cannot be
    reproduced.
    """
    per_sentiment = math.ceil(n_shots / 3)
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(str(row["sentiment"]), []).append(row)
    selected: list[Row] = []
    for sentiment in sorted(groups):
        group = groups[sentiment]
        if per_sentiment > len(group):
            raise ValueError(
                f"STSP shots: {per_sentiment} per sentiment requested, "
                f"'{sentiment}' has only {len(group)} rows"
            )
        selected.extend(rng.sample(group, per_sentiment))
    return selected
