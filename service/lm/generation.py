"""Interleaved speech/text generation on the LM worker, streamed as typed events.

Data flows one way: prompt string -> token ids (our tokenizer) -> vLLM (ids in, ids out, with
the output modality forced by `allowed_token_ids`) -> text deltas -> `StreamParser` events. The
caller turns `SpeechTokens` events into audio (streaming vocoder) as they arrive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

from service.lm.client import LMClient, SamplingParams, Usage
from service.lm.detokenize import IncrementalDecoder
from service.lm.parsing import Done, Event, ModalitySwitch, StreamParser, TextDelta
from service.lm.prompt import OutputModality
from service.lm.stops import StopMatcher
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
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)


def prepare_prompt(
    tokenizer: SpiritTokenizer, prompt: str, modality: OutputModality | str, *, expressive: bool
) -> PreparedPrompt:
    """Prompt ids and the ids the output modality allows (§3, forced through vLLM).

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
        self, prepared: PreparedPrompt, params: SamplingParams, result: GenerationResult
    ) -> AsyncIterator[Event]:
        """Parser events as tokens arrive; `result` is filled in as the stream goes.

        Leaving the loop early closes the vLLM stream, which aborts the request there.
        """
        self._check_prompt_ids(prepared.prompt_ids)
        parser = StreamParser(prepared.prompt, prepared.modality, expressive=self.expressive)
        decoder = IncrementalDecoder(self.tokenizer.decode_ids, prepared.prompt_ids)
        stream = self.lm.stream(prepared.prompt_ids, params, prepared.allowed_token_ids)
        try:
            async for delta in stream:
                result.finish_reason = delta.finish_reason or result.finish_reason
                if delta.usage is not None:
                    result.usage = delta.usage
                # One id at a time: vLLM may send several ids in one event (under load), and the
                # parser wants each speech token as its own piece. While an event is handled,
                # `result.output_ids` ends with the id that produced it.
                for token_id in delta.token_ids:
                    result.output_ids.append(token_id)
                    text = decoder.push([token_id])
                    if text:
                        for event in parser.feed(text):
                            yield event
        finally:
            await stream.aclose()
        tail = decoder.finish()
        if tail:
            for event in parser.feed(tail):
                yield event
        for event in parser.finish():
            yield event

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
        self, prepared: PreparedPrompt, params: SamplingParams
    ) -> tuple[list[Event], GenerationResult]:
        """Generate to the end; all events and the result."""
        result = GenerationResult()
        events = [event async for event in self.stream(prepared, params, result)]
        assert isinstance(events[-1], Done)
        return events, result

    async def run_until_stop(
        self, prepared: PreparedPrompt, params: SamplingParams, stops: Sequence[str]
    ) -> GenerationResult:
        """Generate to the end, or until a text segment completes one of `stops`.

        On a stop the vLLM request is aborted, the ids end with the token that completed the
        stop string (as the gateway's do), and finish_reason is "stop".
        """
        result = GenerationResult()
        matcher = StopMatcher(stops)
        async with aclosing(self.stream(prepared, params, result)) as events:
            async for event in events:
                if isinstance(event, ModalitySwitch):
                    matcher.flush()  # a stop string matches within one text segment
                elif isinstance(event, TextDelta):
                    matcher.feed(event.text)
                    if matcher.stopped:
                        result.finish_reason = "stop"
                        # An aborted request never gets vLLM's usage event.
                        result.usage = Usage(len(prepared.prompt_ids), len(result.output_ids))
                        break
        return result
