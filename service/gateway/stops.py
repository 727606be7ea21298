"""Stop strings, applied by the gateway to the generated text as it streams.

vLLM would detokenize with the checkpoint's HF tokenizer, whose text can differ from ours around
added tokens (see service/lm/tokenizer.py), so the gateway matches on the text it sends. Text
that might be the start of a stop string is held back until the next piece settles it, so a
stop string split over several tokens never leaks into the output.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from service.gateway.engine import Finished, Output, TextOut
from service.gateway.errors import APIError
from service.lm.client import Usage

MAX_STOPS = 4
MAX_STOP_CHARS = 200


class StopMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.stopped = False
        self._held = ""

    def feed(self, text: str) -> str:
        """The part of `text` that can be sent now; sets `stopped` at the first stop string."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buffer = self._held + text
        cut = first_stop(buffer, self.stops)
        if cut is not None:
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
    """Where `text` is cut: before the stop string that is complete first, reading left to right.

    Deciding by the end of each occurrence (not its start) gives the same answer however the
    text was split into pieces, as if it were checked after every character.
    """
    found = [(index + len(stop), index) for stop in stops if (index := text.find(stop)) >= 0]
    return min(found)[1] if found else None


def parse_stops(stop: str | list[str] | None) -> list[str]:
    """Validate the request's `stop` (a string or up to 4 non-empty strings)."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise APIError(400, f"stop: at most {MAX_STOPS} stop strings are allowed", param="stop")
    for index, value in enumerate(stops):
        if not value or len(value) > MAX_STOP_CHARS:
            raise APIError(
                400,
                f"stop[{index}]: a stop string must have 1..{MAX_STOP_CHARS} characters",
                param="stop",
            )
    return stops


async def until_stop(
    outputs: AsyncIterator[Output], stops: Sequence[str], finished: Finished
) -> AsyncIterator[Output]:
    """`outputs` with their text cut at the first stop string, which ends the generation.

    A stop string matches within one text segment (speech units are not text). On a match the
    engine stream is closed, which aborts the LM request, and the stream ends with `finished`
    (whose result the engine has filled in as tokens arrived) and finish_reason "stop".
    """
    matcher = StopMatcher(stops)
    last_text = TextOut("", -1)
    async with contextlib.aclosing(outputs):
        async for item in outputs:
            if isinstance(item, TextOut):
                last_text = item
                text = matcher.feed(item.text)
                if text:
                    yield TextOut(text, item.index, item.output_ids)
                if matcher.stopped:
                    break
                continue
            held = matcher.flush()  # the text segment ended without completing a stop string
            if held:
                yield TextOut(held, last_text.index, last_text.output_ids)
            yield item
    if matcher.stopped:
        yield _stopped(finished, last_text.output_ids)


def _stopped(finished: Finished, output_ids: int) -> Finished:
    result = finished.result
    # The engine read ahead of us: keep the ids up to the one that completed the stop string.
    del result.output_ids[output_ids:]
    result.finish_reason = "stop"
    # An aborted request never gets vLLM's usage event: count what was received instead.
    result.usage = Usage(len(finished.prepared.prompt_ids), len(result.output_ids))
    return finished
