"""Stop strings, applied by the gateway to the generated text as it streams.

vLLM would detokenize with the checkpoint's HF tokenizer, whose text can differ from ours around
added tokens (see service/lm/tokenizer.py), so the gateway matches on the text it sends
(`service.lm.stops`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from service.gateway.engine import Finished, Output, TextOut
from service.gateway.errors import APIError
from service.lm.client import Usage
from service.lm.stops import StopMatcher, stops_problem


def parse_stops(stop: str | list[str] | None) -> list[str]:
    """Validate the request's `stop` (a string or up to 4 non-empty strings)."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    problem = stops_problem(stops)
    if problem is not None:
        raise APIError(400, problem, param="stop")
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
