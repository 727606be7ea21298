"""Stop strings: where generated text ends when the caller named strings to stop at.

Matching is on text, not ids: a stop string may span several tokens, and a token may hold a
stop string and more. Text that might be the start of a stop string is held back until the next
piece settles it, so a stop string split over several tokens never leaks into the output.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_STOPS = 4
MAX_STOP_CHARS = 200


class StopMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text
        self._held = ""

    def feed(self, text: str) -> str:
        """The part of `text` that can be sent now; sets `stopped` at the first stop string."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buffer = self._held + text
        match = first_match(buffer, self.stops)
        if match is not None:
            cut, self.matched = match
            self.stopped = True
            self._held = ""
            return buffer[:cut]
        keep = self._partial_suffix(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """Held text at the end of the output (it turned out not to start a stop string)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_suffix(self, buffer: str) -> int:
        """Length of the longest end of `buffer` that is a proper prefix of some stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where `text` is cut: before the stop string that is complete first, reading left to right."""
    match = first_match(text, stops)
    return None if match is None else match[0]


def first_match(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """The stop string complete first in `text`, and where it starts.

    Deciding by the end of each occurrence (not its start) gives the same answer however the
    text was split into pieces, as if it were checked after every character.
    """
    found = [(index + len(stop), index, stop) for stop in stops if (index := text.find(stop)) >= 0]
    if not found:
        return None
    _, index, stop = min(found)
    return index, stop


def stops_problem(stops: Sequence[str]) -> str | None:
    """Why `stops` cannot be used (at most 4 strings of 1..200 characters), or None."""
    if len(stops) > MAX_STOPS:
        return f"stop: at most {MAX_STOPS} stop strings are allowed"
    for index, value in enumerate(stops):
        if not value or len(value) > MAX_STOP_CHARS:
            return f"stop[{index}]: a stop string must have 1..{MAX_STOP_CHARS} characters"
    return None
