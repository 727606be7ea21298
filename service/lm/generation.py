"""Interleaved speech/text generation on the LM worker, streamed as typed events.

Data flows one way: prompt string -> token ids (our tokenizer) -> vLLM (ids in, ids out, with
the output modality forced by `allowed_token_ids`) -> text deltas -> `StreamParser` events, cut
where the caller's `Ending` says (service/lm/ending.py). The caller turns `SpeechTokens` events
into audio (streaming vocoder) as they arrive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from service.lm.client import LMClient, SamplingParams, Usage
from service.lm.detokenize import IncrementalDecoder
from service.lm.ending import Ending, EndReason, EndWatcher, line_end_ids
from service.lm.parsing import Done, Event, ModalitySwitch, StreamParser, TextDelta
from service.lm.prompt import OutputModality
from service.lm.tokenizer import SpiritTokenizer


@dataclass(frozen=True)
class PreparedPrompt:
    prompt: str
    prompt_ids: list[int]
    modality: OutputModality
    allowed_token_ids: list[int] | None


@dataclass
class GenerationResult:
    """What a finished generation produced, besides the events."""

    output_ids: list[int] = field(default_factory=list)
    # Each output id's log-probability from vLLM, when the request asked (SamplingParams.logprobs).
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length", OpenAI's words
    end: EndReason | None = None  # which condition ended it (service/lm/ending.py)
    usage: Usage = field(default_factory=Usage)


def prepare_prompt(
    tokenizer: SpiritTokenizer, prompt: str, modality: OutputModality | str, *, expressive: bool
) -> PreparedPrompt:
    """Prompt ids and the ids the output modality allows, forced through vLLM.

    The banned ids are listed in docs/format.md#banned-ids-per-output-modality.

    ARBITRARY bans nothing in the reference, but the embedding's padding rows have no token and
    nothing could decode them, so they are excluded there too (deliberate difference).
    """
    modality = OutputModality.parse(modality)
    allowed = tokenizer.allowed_ids(modality.value, expressive)
    if allowed is None and tokenizer.num_tokens < tokenizer.vocab_size:
        allowed = list(range(tokenizer.num_tokens))
    return PreparedPrompt(
        prompt=prompt,
        prompt_ids=tokenizer.encode(prompt),
        modality=modality,
        allowed_token_ids=allowed,
    )


class Generator:
    """Runs prompts of one variant on the LM worker."""

    def __init__(self, tokenizer: SpiritTokenizer, lm: LMClient, *, expressive: bool) -> None:
        self.tokenizer = tokenizer
        self.lm = lm
        self.expressive = expressive

    def prepare(self, prompt: str, modality: OutputModality | str) -> PreparedPrompt:
        return prepare_prompt(self.tokenizer, prompt, modality, expressive=self.expressive)

    async def stream(
        self,
        prepared: PreparedPrompt,
        params: SamplingParams,
        result: GenerationResult,
        ending: Ending | None = None,
    ) -> AsyncIterator[Event]:
        """Parser events as tokens arrive, cut where `ending` says (service/lm/ending.py).

        `result` is filled in as the stream goes: ids up to the token that ended the generation,
        then `finish_reason`, `end` and `usage` once it is over. Leaving the loop early closes
        the vLLM stream, which aborts the request there.
        """
        self._check_prompt_ids(prepared.prompt_ids)
        ending = ending or Ending()  # max tokens and EOS only
        allowed, params = self._apply_line_end(prepared, params, ending)
        watcher = EndWatcher(ending, self.tokenizer)
        parser = StreamParser(prepared.prompt, prepared.modality, expressive=self.expressive)
        decoder = IncrementalDecoder(self.tokenizer.decode_ids, prepared.prompt_ids)
        stream = self.lm.stream(prepared.prompt_ids, params, allowed)
        try:
            async for delta in stream:
                result.finish_reason = delta.finish_reason or result.finish_reason
                if delta.usage is not None:
                    result.usage = delta.usage
                # One id at a time: vLLM may send several ids in one event (under load), the
                # parser wants each speech token as its own piece, and the generation may end
                # at any of them.
                for position, token_id in enumerate(delta.token_ids):
                    result.output_ids.append(token_id)
                    if delta.logprobs is not None:
                        result.logprobs.append(delta.logprobs[position])
                    watcher.token(token_id)
                    for event in parser.feed(decoder.push([token_id])):
                        for out in _cut(event, watcher):
                            yield out
                    if watcher.ended:
                        break
                if watcher.ended:
                    break
        finally:
            await stream.aclose()
        for event in [*parser.feed(decoder.finish()), *parser.finish()]:
            for out in _cut(event, watcher):
                yield out
        result.end = watcher.finished(result.finish_reason, result.output_ids)
        if watcher.ended:
            result.finish_reason = "stop"
        if watcher.ended or not result.usage.prompt_tokens:
            # An aborted request never gets vLLM's usage event: count what was kept.
            result.usage = Usage(len(prepared.prompt_ids), len(result.output_ids))

    def _apply_line_end(
        self, prepared: PreparedPrompt, params: SamplingParams, ending: Ending
    ) -> tuple[list[int] | None, SamplingParams]:
        """Allowed ids and sampling parameters with the line-end ids allowed and stopping."""
        if not ending.at_line_end:
            return prepared.allowed_token_ids, params
        ends = line_end_ids(self.tokenizer)
        allowed = prepared.allowed_token_ids
        if allowed is not None:
            allowed = sorted({*allowed, *ends})
        stop_ids = tuple(sorted({*params.stop_token_ids, *ends}))
        return allowed, dataclasses.replace(params, stop_token_ids=stop_ids)

    def _check_prompt_ids(self, prompt_ids: list[int]) -> None:
        # vLLM started with --skip-tokenizer-init does not check prompt ids: one outside the
        # embedding kills its engine (measured with vLLM 0.32), so nothing unchecked goes there.
        if not prompt_ids:
            raise ValueError("prompt token ids: empty prompt")
        bad = sorted({i for i in prompt_ids if not 0 <= i < self.tokenizer.num_tokens})
        if bad:
            raise ValueError(
                f"prompt token ids {bad[:5]} are outside the tokenizer's "
                f"{self.tokenizer.num_tokens} tokens"
            )

    async def run(
        self, prepared: PreparedPrompt, params: SamplingParams, ending: Ending | None = None
    ) -> tuple[list[Event], GenerationResult]:
        """Generate to the end; all events and the result."""
        result = GenerationResult()
        async with aclosing(self.stream(prepared, params, result, ending)) as stream:
            events = [event async for event in stream]
        assert isinstance(events[-1], Done)
        return events, result


def _cut(event: Event, watcher: EndWatcher) -> list[Event]:
    """One parser event as the client gets it: text cut at its end, held text at a boundary."""
    if watcher.end in ("stop_string", "line_end") and not isinstance(event, Done):
        return []  # the text that ended the generation was the last thing it produced
    if isinstance(event, TextDelta):
        text = watcher.text(event.text)
        return [TextDelta(text)] if text else []
    if isinstance(event, ModalitySwitch | Done):
        held = watcher.segment_end()  # a stop string matches within one text segment
        return [TextDelta(held), event] if held else [event]
    return [event]
