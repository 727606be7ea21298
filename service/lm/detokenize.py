"""Incremental detokenization of generated ids into the text the reference would slice out.

The reference decodes prompt + output in one piece and cuts at len(prompt)
(docs/format.md#parsing-generated-output). Decoding the whole sequence at every step would be
quadratic; like vLLM's own detokenizer we decode a short window twice (with and without the
newest ids) and emit the difference. The window starts a few tokens back so SentencePiece's
leading-space handling and multi-byte characters come out the same as in a full decode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHAR = "\ufffd"
# Tokens of left context kept in the decode window; enough for any UTF-8 character (<= 4 bytes).
WINDOW = 6


class IncrementalDecoder:
    """Turns a growing list of generated ids into text deltas."""

    def __init__(self, decode: Callable[[Sequence[int]], str], prompt_ids: Sequence[int]) -> None:
        self._decode = decode
        self._ids = list(prompt_ids[-WINDOW:])
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, new_ids: Sequence[int]) -> str:
        """Text that the new ids add; withheld while it ends inside a multi-byte character."""
        self._ids.extend(new_ids)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if after.endswith(REPLACEMENT_CHAR) or len(after) <= len(before):
            return ""
        delta = after[len(before) :]
        self._prefix = max(0, len(self._ids) - WINDOW)
        self._read = len(self._ids)
        self._trim()
        return delta

    def finish(self) -> str:
        """Text still withheld at the end (an unfinished multi-byte character decodes to U+FFFD,
        as in a full decode)."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :] if len(after) > len(before) else ""

    def _trim(self) -> None:
        # Forget ids that can no longer influence the window, so memory stays bounded.
        if self._prefix > 4 * WINDOW:
            drop = self._prefix
            self._ids = self._ids[drop:]
            self._prefix -= drop
            self._read -= drop
