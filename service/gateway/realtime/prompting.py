"""The prompt of a response: the conversation's turns fitted into the LM context, tokenized.

The context is `realtime_context_tokens` when set, else the smallest `max_model_len` the LM
workers report for the model on /v1/models (service/gateway/pools.py), else, before any worker
has reported, the checkpoint's `max_position_embeddings` (vLLM's default max_model_len).
"""

from __future__ import annotations

import asyncio
import json
from functools import lru_cache
from pathlib import Path

from service.checkpoints.layout import EXPRESSIVE
from service.gateway.engine import Engine
from service.gateway.errors import APIError
from service.gateway.realtime.conversation import fit_prompt
from service.lm.generation import PreparedPrompt, prepare_prompt
from service.lm.prompt import OutputModality, PromptInput, TextInput, TurnEnd
from service.lm.tokenizer import SpiritTokenizer

DEFAULT_CONTEXT = 4096  # Llama-2's context, when config.json does not say
MIN_PROMPT_TOKENS = 16


@lru_cache(maxsize=8)
def checkpoint_context(lm_dir: Path) -> int:
    """`max_position_embeddings` of the LM's config.json: the context before workers report."""
    try:
        config = json.loads((lm_dir / "config.json").read_text(encoding="utf-8"))
        return int(config.get("max_position_embeddings", DEFAULT_CONTEXT))
    except (OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_CONTEXT


@lru_cache(maxsize=8)
def longest_token_chars(tokenizer: SpiritTokenizer) -> int:
    """The most characters one token of the vocabulary stands for: a prompt of n characters
    has at least n / this many tokens, which bounds what fitting needs to look at."""
    return max(len(tokenizer.token_string(index)) for index in range(tokenizer.num_tokens))


class PromptBuilder:
    def __init__(self, engine: Engine, model: str, context_tokens: int = 0) -> None:
        self.engine = engine
        self.model = model
        self.tokenizer = engine.tokenizer(model)
        self.expressive = model == EXPRESSIVE
        self.context_tokens = context_tokens  # the setting; 0: as the workers report

    @property
    def context(self) -> int:
        """The LM context a prompt and its reply share (see the module docstring)."""
        if self.context_tokens:
            return self.context_tokens
        reported = self.engine.lm_pool.max_model_len(self.model)
        if reported is not None:
            return reported
        return checkpoint_context(self.engine.layout.lm_dir(self.model))

    async def prepare(
        self,
        instructions: str,
        turns: list[list[PromptInput]],
        modality: OutputModality,
        max_tokens: int,
    ) -> PreparedPrompt:
        context = self.context
        budget = context - max_tokens
        if budget < MIN_PROMPT_TOKENS:
            raise APIError(
                400,
                f"max_output_tokens {max_tokens} leaves no room for the prompt in the "
                f"model's context of {context} tokens",
                param="max_output_tokens",
            )
        lead: list[PromptInput] = [TextInput(instructions), TurnEnd()] if instructions else []
        # Fitting counts tokens again and again: it and the tokenizing run in one thread, off
        # the event loop.
        return await asyncio.to_thread(self._fit_and_prepare, lead, turns, modality, budget)

    def _fit_and_prepare(
        self,
        lead: list[PromptInput],
        turns: list[list[PromptInput]],
        modality: OutputModality,
        budget: int,
    ) -> PreparedPrompt:
        max_chars = budget * longest_token_chars(self.tokenizer)
        prompt = fit_prompt(lead, turns, modality.value, budget, self.count, max_chars)
        return prepare_prompt(self.tokenizer, prompt, modality, expressive=self.expressive)

    def count(self, prompt: str) -> int:
        return len(self.tokenizer.encode(prompt))
