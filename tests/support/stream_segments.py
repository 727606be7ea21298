"""Rebuild the segments a `StreamParser` event sequence describes, to compare with batch parsing.

`StreamParser` promises the segments `parse_output` returns for the whole output (adjacent text
joined); the tests of both sides (test_prompt_parsing.py, test_lm_generation.py) check it with
this.
"""

from __future__ import annotations

from collections.abc import Iterable

from service.lm.parsing import (
    HUBERT_MARK,
    Event,
    ModalitySwitch,
    Segment,
    SpeechSegment,
    SpeechTokens,
    TextDelta,
    TextSegment,
    Trim,
)
from service.units.boundaries import ChunkKind


def segments_from_events(events: Iterable[Event]) -> list[Segment]:
    """The segments `events` describe, in the form `parse_output` returns."""
    segments: list[Segment] = []
    kind: ChunkKind | None = None
    parts: list[str] = []
    context: list[str] = []

    def close() -> None:
        if kind == "text":
            segments.append(TextSegment("".join(parts)))
        elif kind == "speech":
            tokens = "".join(context) + "".join(parts)
            trim = None
            if context:
                prompt_hubert = "".join(context).count(HUBERT_MARK)
                trim = Trim(prompt_hubert, tokens.count(HUBERT_MARK) + 1)
            segments.append(SpeechSegment(tokens, trim))

    for event in events:
        if isinstance(event, ModalitySwitch):
            close()
            kind, parts, context = event.to, [], []
        elif isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, SpeechTokens):
            (context if event.context else parts).extend(event.tokens)
    close()
    return segments
