"""Speech-token boundary helpers for decoded LM strings.

The rules are in docs/format.md#speech-token-boundary-tests and
docs/format.md#splitting-into-chunks. These reproduce the reference's behaviour exactly, quirks
included: the start/end tests accept any characters after ``[Hu``/``[Pi``/``[St`` (``[Hub cap]``
counts as speech), the run finder requires digits, and the chunk splitter treats ``[Hu...`` up to
the next ``]`` (or the end of the string) as one speech item.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

ChunkKind = Literal["text", "speech"]

SPEECH_PREFIXES = ("Hu", "Pi", "St")
TEXT_MARKER = "[Text]"
SPEECH_MARKER = "[Speech]"

_SPEECH_TOKEN = re.compile(r"\[(?:Hu|Pi|St)\d+\]")
# The reference gives up looking for the closing/opening bracket this far into the string:
# its comment says the longest speech token is "[Huxxxxx]".
_SCAN_LIMIT = 10


def starts_with_speech_token(text: str | None) -> bool:
    """Whether `text` starts with something shaped like a speech token (digits not checked)."""
    if text is None or len(text) <= 4 or text[0] != "[":
        return False
    for end in range(1, len(text)):
        # A "]" before position 4 is too early to close even "[Hu1]"; keep scanning past it.
        if text[end] == "]" and end >= 4:
            return text[1:3] in SPEECH_PREFIXES
        if end >= _SCAN_LIMIT:
            return False
    return False


def ends_with_speech_token(text: str | None) -> bool:
    """Whether `text` ends with something shaped like a speech token (digits not checked)."""
    if text is None or len(text) <= 4 or text[-1] != "]":
        return False
    n = len(text)
    for start in range(n - 2, -1, -1):
        # Only a "[" with at least two characters and the "]" after it can open a token.
        if text[start] == "[" and start + 3 < n:
            return text[start + 1 : start + 3] in SPEECH_PREFIXES
        if start < n - _SCAN_LIMIT:
            return False
    return False


def last_speech_run_start(text: str) -> int | None:
    """Offset of the first token of the right-most run of adjacent ``[(Hu|Pi|St)<digits>]``.

    The run need not end the string; None when there is no such token.
    """
    matches = list(_SPEECH_TOKEN.finditer(text))
    if not matches:
        return None
    i = len(matches) - 1
    while i > 0 and matches[i - 1].end() == matches[i].start():
        i -= 1
    return matches[i].start()


class Item(NamedTuple):
    """One classified stretch of a decoded string: `kind` None means a skipped marker."""

    kind: ChunkKind | None
    end: int


def next_item(text: str, start: int, *, final: bool) -> Item | None:
    """Classify the item of `text` that begins at `start` (docs/format.md#splitting-into-chunks).

    With `final` False, `text` may still grow: None means "cannot tell yet" (the item could
    still become a marker or its speech token is not closed). With `final` True the end of
    `text` is the end of the string and the answer is the reference's.
    """
    # Nothing below looks further than a marker's length (except the search for "]" / "[").
    rest = text[start : start + len(SPEECH_MARKER)]
    if rest.startswith(TEXT_MARKER):
        return Item(None, start + len(TEXT_MARKER))
    if rest.startswith(SPEECH_MARKER):
        return Item(None, start + len(SPEECH_MARKER))
    if rest[0] != "[":
        bracket = text.find("[", start)
        return Item("text", bracket if bracket != -1 else len(text))
    if not final and (TEXT_MARKER.startswith(rest) or SPEECH_MARKER.startswith(rest)):
        return None
    if rest[1:3] in SPEECH_PREFIXES:
        close = text.find("]", start)
        if close == -1:
            return Item("speech", len(text)) if final else None
        return Item("speech", close + 1)
    if not final and len(rest) < 3 and any(p.startswith(rest[1:]) for p in SPEECH_PREFIXES):
        return None
    # Any other "[" is a one-character text item.
    return Item("text", start + 1)


def split_chunks(text: str) -> list[tuple[str, ChunkKind]]:
    """Split a decoded string into text/speech chunks (docs/format.md#splitting-into-chunks).

    ``[Text]``/``[Speech]`` markers are dropped without closing a chunk, so
    ``abc[Text]def`` is one text chunk ``abcdef``.
    """
    chunks: list[tuple[str, ChunkKind]] = []
    pos = 0
    while pos < len(text):
        item = next_item(text, pos, final=True)
        assert item is not None  # final=True always decides
        if item.kind is not None:
            piece = text[pos : item.end]
            if chunks and chunks[-1][1] == item.kind:
                chunks[-1] = (chunks[-1][0] + piece, item.kind)
            else:
                chunks.append((piece, item.kind))
        pos = item.end
    return chunks
