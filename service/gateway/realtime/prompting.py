"""The prompt of a response: the conversation's turns fitted into the LM context, tokenized."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from service.checkpoints.layout import EXPRESSIVE
from service.gateway.engine import Engine
from service.gateway.errors import APIError
from service.gateway.realtime.conversation import fit_prompt
from service.lm.generation import PreparedPrompt, prepare_prompt
from service.lm.prompt import OutputModality, PromptInput, TextInput, TurnEnd

DEFAULT_CONTEXT = 4096  # Llama-2's context (spec §2.7)
MIN_PROMPT_TOKENS = 16


@lru_cache(maxsize=8)
def checkpoint_context(lm_dir: Path) -> int:
    """`max_position_embeddings` of the LM's config.json (vLLM's default max_model_len)."""
    try:
        config = json.loads((lm_dir / "config.json").read_text(encoding="utf-8"))
        return int(config.get("max_position_embeddings", DEFAULT_CONTEXT))
    except (OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_CONTEXT


class PromptBuilder:
    def __init__(self, engine: Engine, model: str, context_tokens: int = 0) -> None:
        self.tokenizer = engine.tokenizer(model)
        self.expressive = model == EXPRESSIVE
        self.context = context_tokens or checkpoint_context(engine.layout.lm_dir(model))

    def prepare(
        self,
        instructions: str,
        turns: list[list[PromptInput]],
        modality: OutputModality,
        max_tokens: int,
    ) -> PreparedPrompt:
        budget = self.context - max_tokens
        if budget < MIN_PROMPT_TOKENS:
            raise APIError(
                400,
                f"max_output_tokens {max_tokens} leaves no room for the prompt in the "
                f"model's context of {self.context} tokens",
                param="max_output_tokens",
            )
        lead: list[PromptInput] = [TextInput(instructions), TurnEnd()] if instructions else []
        prompt = fit_prompt(lead, turns, modality.value, budget, self.count)
        return prepare_prompt(self.tokenizer, prompt, modality, expressive=self.expressive)

    def count(self, prompt: str) -> int:
        return len(self.tokenizer.encode(prompt))
