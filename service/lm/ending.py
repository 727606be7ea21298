"""How a generation ends: the one place that decides where an output stops and why.

A caller says how its generation may end with an `Ending`; `service.lm.generation.Generator`
applies it while the tokens stream, so every surface (the audio endpoints, chat, /v1/generate,
realtime, the CLI) gets outputs already cut, ids that end with the token that ended the
generation, and one `finish_reason`. The conditions, checked in this order for every token:

* **max tokens** and **EOS**: vLLM's own (`max_tokens` in the sampling parameters; EOS is never
  ignored). finish_reason "length" and "stop".
* **line end** (`at_line_end`): the model's own turn end. In the prompt formats of docs/fewshot.md
  every shot and every conversation turn ends with a newline, so the answer or reply is over at
  the first newline. The ids whose piece holds a newline (and EOS) become vLLM stop ids and are
  allowed even where the output modality bans text (a speech reply may end this way too); the
  text is cut before the newline, trailing spaces dropped.
* **stop strings** (`stops`): matched on the text the client gets, within one text segment
  (`service.lm.stops`); the text is cut before the match.
* **end of speech** (`end_of_speech`): the fallback turn end of spoken output. Once at least
  `min_speech_tokens` HuBERT tokens that are not silence were generated, `silence_tokens`
  consecutive HuBERT tokens that are silence end the generation. Which units are silence is
  learnt from the loaded speech tokenizer (the speech worker encodes silence at start-up,
  `SpeechStack.silence_units`), never hard-coded. Pitch and style tokens neither count nor
  interrupt a run; a text token ends the speech segment and resets the rule.

All three of ours give finish_reason "stop", and the generation's `end` says which condition it
was (`EndReason`). When one of them fires the LM request is aborted at once, so nothing the
engine read ahead leaks into ids or usage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from service.lm.stops import StopMatcher, first_match
from service.lm.tokenizer import SpiritTokenizer

EndReason = Literal["line_end", "stop_string", "end_of_speech", "eos", "max_tokens"]

NEWLINE_BYTE = "<0x0A>"
# Text cut at a line end: "\r" is not a stop id (no piece is only "\r" in Llama's vocabulary),
# so it is caught on the text and the request aborted there.
LINE_BREAKS = ("\n", "\r")


@dataclass(frozen=True)
class EndOfSpeech:
    """Silence after speech ends a spoken turn (see the module docstring)."""

    silence_units: frozenset[int]  # HuBERT unit values that are silence for this model
    silence_tokens: int  # consecutive silence tokens that end the turn
    min_speech_tokens: int  # speech (non-silence) tokens needed before silence counts


@dataclass(frozen=True)
class Ending:
    """How one generation may end, besides max tokens and EOS."""

    stops: tuple[str, ...] = ()
    at_line_end: bool = False
    end_of_speech: EndOfSpeech | None = None

    def text_stops(self) -> tuple[str, ...]:
        return self.stops + (LINE_BREAKS if self.at_line_end else ())

    def cut_text(self, text: str) -> str:
        """A whole text segment as the client gets it: cut at the first stop or line end."""
        match = first_match(text, self.text_stops())
        if match is None:
            return text
        cut, stop = match
        return text[:cut].rstrip() if stop in LINE_BREAKS else text[:cut]


# An ASR answer, a transcript, a text turn: one line.
ONE_LINE = Ending(at_line_end=True)


@lru_cache(maxsize=8)
def line_end_ids(tokenizer: SpiritTokenizer) -> tuple[int, ...]:
    """Ids that end a line: pieces containing a newline, and EOS."""
    ids = [
        token_id
        for token_id in tokenizer.text_ids
        if token_id < tokenizer.num_tokens
        and (
            tokenizer.token_string(token_id) == NEWLINE_BYTE
            or "\n" in tokenizer.token_string(token_id)
        )
    ]
    return tuple(sorted({*ids, tokenizer.eos_id}))


@dataclass
class EndWatcher:
    """Follows one streaming generation and says when and why it ends."""

    ending: Ending
    tokenizer: SpiritTokenizer
    end: EndReason | None = None
    _matcher: StopMatcher = field(init=False)
    _speech_run: int = 0
    _silence_run: int = 0

    def __post_init__(self) -> None:
        self._matcher = StopMatcher(self.ending.text_stops())

    @property
    def ended(self) -> bool:
        return self.end is not None

    def token(self, token_id: int) -> None:
        """The end-of-speech rule, on each generated id."""
        rule = self.ending.end_of_speech
        if rule is None or self.ended:
            return
        unit = self.tokenizer.unit_of(token_id)
        if unit is None:  # text: the speech segment (if any) is over
            self._speech_run = self._silence_run = 0
            return
        stream, value = unit
        if stream != "hubert":
            return
        if value in rule.silence_units:
            self._silence_run += 1
        else:
            self._speech_run += 1
            self._silence_run = 0
        if self._speech_run >= rule.min_speech_tokens and self._silence_run >= rule.silence_tokens:
            self.end = "end_of_speech"

    def text(self, text: str) -> str:
        """The part of a text delta the client gets; the first stop or line end ends it."""
        if self._matcher.stopped:
            return ""
        out = self._matcher.feed(text)
        if self._matcher.stopped:
            line_end = self._matcher.matched in LINE_BREAKS
            self.end = "line_end" if line_end else "stop_string"
            if line_end:  # a line's trailing spaces are not part of it
                out = out.rstrip()
        return out

    def segment_end(self) -> str:
        """Text held back at the end of a text segment (it did not start a stop)."""
        return self._matcher.flush()

    def finished(self, finish_reason: str | None, output_ids: Sequence[int]) -> EndReason | None:
        """Why a generation that vLLM ended (not us) ended."""
        if self.end is not None:
            return self.end
        if finish_reason == "length":
            return "max_tokens"
        if finish_reason == "stop" and output_ids:
            if output_ids[-1] == self.tokenizer.eos_id:
                return "eos"
            if self.ending.at_line_end and output_ids[-1] in line_end_ids(self.tokenizer):
                return "line_end"
        return None
