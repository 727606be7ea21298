"""A realtime conversation: its items, and the Spirit LM prompt they make.

The history is rendered as one interleaved prompt, the same way the chat route renders a
conversation (no role labels; Spirit LM has no chat template): the instructions as text, then
each item's parts in order, user speech as the speech tokens the speech worker encoded it to,
text as text, assistant turns as the tokens the model generated (never re-encoded audio). Every
turn ends with a newline (`TurnEnd`, speech turns too, so a spoken reply can end its turn the
same way: docs/speech-turns.md); modality prefixes go where the modality changes and after a
speech turn, then the prefix of the requested output modality.

Truncation keeps the prompt inside the LM context: the oldest items are dropped first; if the
newest item alone is still too long, its head is cut (speech at token boundaries; the last style
and pitch tokens before the cut are kept in front of the rest so an expressive turn keeps its
style). The instructions are never dropped.

Cutting an assistant turn back to the audio that was actually sent (barge-in, or
conversation.item.truncate) maps samples to HuBERT tokens with the samples-per-token of that
turn when it finished, else the session's average over finished turns, else two 25 Hz frames
per token (the usual predicted duration of a de-duplicated unit).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from service.gateway.errors import APIError
from service.lm.prompt import PromptInput, SpeechInput, TextInput, TurnEnd, build_prompt
from service.units.tokens import SPEECH_TOKEN

HUBERT_RATE = 25  # HuBERT frames per second
DEFAULT_FRAMES_PER_TOKEN = 2.0

Role = Literal["user", "assistant", "system"]


@dataclass
class Part:
    """One content part: text, or speech (tokens; for output, the audio sent so far)."""

    kind: Literal["text", "audio"]
    text: str = ""  # the text, or the transcript of the speech
    tokens: str = ""  # speech token string (no [Speech] prefix)
    samples_sent: int = 0  # output audio delivered to the client, at `sample_rate`
    sample_rate: int = 0
    finished: bool = True  # all of the part's audio was produced
    encoding: asyncio.Task[str] | None = None  # user speech being encoded
    pending_bytes: int = 0  # the audio held while `encoding` runs

    def held_bytes(self) -> int:
        """Memory this part holds: its strings, and its audio while that is being encoded."""
        held = _str_bytes(self.text) + _str_bytes(self.tokens)
        encoding = self.encoding
        if encoding is None:
            return held
        if not encoding.done():
            return held + self.pending_bytes
        if encoding.cancelled() or encoding.exception() is not None:
            return held
        return held + _str_bytes(encoding.result())

    async def speech_tokens(self) -> str:
        if self.encoding is not None:
            # Shielded: a response cancelled while it waits must not cancel the encoding,
            # which the next response needs.
            self.tokens = await asyncio.shield(self.encoding)
            self.encoding = None
        return self.tokens


@dataclass
class Item:
    id: str
    role: Role
    parts: list[Part] = field(default_factory=list)
    status: Literal["completed", "incomplete", "in_progress"] = "completed"

    async def inputs(self) -> list[PromptInput]:
        """This item's prompt parts, ending its turn."""
        inputs: list[PromptInput] = []
        for part in self.parts:
            if part.kind == "text" and part.text:
                inputs.append(TextInput(part.text))
            elif part.kind == "audio":
                tokens = await part.speech_tokens()
                if tokens:
                    inputs.append(SpeechInput(tokens))
        if inputs:
            inputs.append(TurnEnd())
        return inputs


class Conversation:
    def __init__(self, conversation_id: str) -> None:
        self.id = conversation_id
        self.items: list[Item] = []

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert after `previous_item_id` (default: at the end); returns the id before it."""
        if previous_item_id is None:
            previous = self.items[-1].id if self.items else None
            self.items.append(item)
            return previous
        if previous_item_id == "root":
            self.items.insert(0, item)
            return None
        index = self.index(previous_item_id)
        self.items.insert(index + 1, item)
        return previous_item_id

    def index(self, item_id: str) -> int:
        for index, item in enumerate(self.items):
            if item.id == item_id:
                return index
        raise KeyError(item_id)

    def get(self, item_id: str) -> Item:
        return self.items[self.index(item_id)]

    def delete(self, item_id: str) -> None:
        del self.items[self.index(item_id)]

    def held_bytes(self) -> int:
        """Memory the history holds (budget.py bounds it)."""
        return sum(part.held_bytes() for item in self.items for part in item.parts)

    def samples_per_token(self, sample_rate: int) -> float:
        """Output samples per HuBERT token, measured on this conversation's finished turns."""
        samples = tokens = 0
        for item in self.items:
            for part in item.parts:
                if part.kind == "audio" and part.finished and part.sample_rate == sample_rate:
                    samples += part.samples_sent
                    tokens += hubert_count(part.tokens)
        if samples and tokens:
            return samples / tokens
        return DEFAULT_FRAMES_PER_TOKEN * sample_rate / HUBERT_RATE


async def history_inputs(items: Sequence[Item]) -> list[list[PromptInput]]:
    return [await item.inputs() for item in items]


def _str_bytes(text: str) -> int:
    return sys.getsizeof(text) if text else 0


def hubert_count(tokens: str) -> int:
    return tokens.count("[Hu")


def keep_speech_samples(part: Part, samples: int, fallback_per_token: float) -> None:
    """Cut an output speech part to the tokens behind its first `samples` samples."""
    total = hubert_count(part.tokens)
    if part.finished and part.samples_sent and total:
        per_token = part.samples_sent / total
    else:
        per_token = fallback_per_token
    keep = min(total, int(samples / per_token)) if per_token > 0 else total
    part.tokens = head_hubert(part.tokens, keep)
    part.samples_sent = min(part.samples_sent, samples)


def head_hubert(tokens: str, count: int) -> str:
    """The token string up to (not including) its `count`-th + 1 HuBERT token."""
    seen = 0
    for match in SPEECH_TOKEN.finditer(tokens):
        if match.group(1) == "Hu":
            if seen == count:
                return tokens[: match.start()]
            seen += 1
    return tokens


def tail_speech(tokens: str, keep: int) -> str:
    """The last `keep` speech tokens, led by the style/pitch tokens in force where it starts."""
    matches = list(SPEECH_TOKEN.finditer(tokens))
    if keep >= len(matches):
        return tokens
    if keep <= 0:
        return ""
    cut = matches[len(matches) - keep].start()
    lead = {}
    for match in matches[: len(matches) - keep]:
        if match.group(1) in ("St", "Pi"):
            lead[match.group(1)] = match.group(0)
    kept = tokens[cut:]
    return "".join(lead[kind] for kind in ("St", "Pi") if kind in lead) + kept


def fit_prompt(
    instructions: list[PromptInput],
    turns: list[list[PromptInput]],
    modality: str,
    budget: int,
    count: Callable[[str], int],
    max_chars: int | None = None,
) -> str:
    """The prompt of the newest turns that fits in `budget` tokens (see the module docstring).

    `max_chars`: turns past this many characters cannot fit (it is the budget times the most
    characters one token stands for), so they are dropped before anything is tokenized: the
    work of fitting stays bounded however long the history is.
    """
    turns = [turn for turn in turns if turn]
    if max_chars is not None:
        turns = _newest_within(turns, max_chars)
    prompt = build_prompt([*instructions, *_flat(turns)], modality)
    if count(prompt) <= budget:
        return prompt
    # Estimate first (each turn alone, less its BOS), then confirm on the real prompt.
    sizes = [count(build_prompt(turn, "arbitrary")) - 1 for turn in turns]
    fixed = count(build_prompt(instructions, modality))
    while len(turns) > 1 and fixed + sum(sizes) > budget:
        turns, sizes = turns[1:], sizes[1:]
    while len(turns) > 1:
        prompt = build_prompt([*instructions, *_flat(turns)], modality)
        if count(prompt) <= budget:
            return prompt
        turns = turns[1:]
    return _cut_last_turn(instructions, turns[0] if turns else [], modality, budget, count)


def _cut_last_turn(
    instructions: list[PromptInput],
    turn: list[PromptInput],
    modality: str,
    budget: int,
    count: Callable[[str], int],
) -> str:
    def prompt_keeping(fraction: float) -> str:
        return build_prompt([*instructions, *_tail_of(turn, fraction)], modality)

    low, high = 0.0, 1.0
    best = prompt_keeping(0.0)
    if count(best) > budget:
        raise APIError(
            400,
            f"the instructions alone take more than the {budget} prompt tokens the model's "
            "context leaves; shorten them",
            param="session.instructions",
        )
    for _ in range(12):
        middle = (low + high) / 2
        candidate = prompt_keeping(middle)
        if count(candidate) <= budget:
            best, low = candidate, middle
        else:
            high = middle
    return best


def _newest_within(turns: list[list[PromptInput]], max_chars: int) -> list[list[PromptInput]]:
    """The newest turns that hold at most `max_chars` characters together; when the newest
    alone holds more, its tail of that length (older turns are only ever dropped whole)."""
    kept: list[list[PromptInput]] = []
    left = max_chars
    for turn in reversed(turns):
        size = sum(_chars(part) for part in turn)
        if size <= left:
            kept.append(turn)
            left -= size
            continue
        if not kept:
            kept.append(_tail_chars(turn, left))
        break
    kept.reverse()
    return kept


def _tail_chars(turn: list[PromptInput], max_chars: int) -> list[PromptInput]:
    """The end of a turn within `max_chars` characters (speech: whole tokens, style kept)."""
    kept: list[PromptInput] = []
    left = max_chars
    for part in reversed(turn):
        size = _chars(part)
        if size <= left:
            kept.append(part)
            left -= size
            continue
        if left > 0 and isinstance(part, SpeechInput):
            whole = len(SPEECH_TOKEN.findall(part.tokens[len(part.tokens) - left :]))
            kept.append(SpeechInput(tail_speech(part.tokens, whole)))
        elif left > 0 and isinstance(part, TextInput):
            kept.append(TextInput(part.text[len(part.text) - left :]))
        break
    kept.reverse()
    return kept


def _chars(part: PromptInput) -> int:
    return len(part.tokens) if isinstance(part, SpeechInput) else len(part.text)


def _tail_of(turn: list[PromptInput], fraction: float) -> list[PromptInput]:
    """The last `fraction` of a turn, measured in characters (speech: in tokens)."""
    sizes = [_size(part) for part in turn]
    keep = int(sum(sizes) * fraction)
    kept: list[PromptInput] = []
    for part, size in zip(reversed(turn), reversed(sizes), strict=True):
        if keep <= 0:
            break
        if size <= keep:
            kept.insert(0, part)
        elif isinstance(part, SpeechInput):
            kept.insert(0, SpeechInput(tail_speech(part.tokens, keep)))
        elif isinstance(part, TextInput):
            kept.insert(0, TextInput(part.text[len(part.text) - keep :]))
        keep -= size
    return kept


def _size(part: PromptInput) -> int:
    if isinstance(part, SpeechInput):
        return len(SPEECH_TOKEN.findall(part.tokens))
    return len(part.text)


def _flat(turns: list[list[PromptInput]]) -> list[PromptInput]:
    return [part for turn in turns for part in turn]
