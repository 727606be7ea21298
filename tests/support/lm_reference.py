"""The reference for generated ids: transformers' `LlamaForCausalLM.generate` (float32, CPU)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from service.checkpoints.layout import CheckpointLayout
from service.lm.prompt import OutputModality
from tests.support.token_ids import PADDING_ROWS, banned_ids


@cache
def reference_model(lm_dir: Path) -> Any:
    """transformers' float32 `LlamaForCausalLM` of `lm_dir`, loaded once per directory."""
    import torch
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(lm_dir, torch_dtype=torch.float32).eval()


def reference_greedy(
    layout: CheckpointLayout, variant: str, prompt_ids: list[int], modality: OutputModality, n: int
) -> list[int]:
    """transformers' greedy ids for the prompt ids, banned set + padding rows as bad words."""
    import torch

    model = reference_model(layout.lm_dir(variant))
    banned = banned_ids(modality, variant) | PADDING_ROWS[variant]
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=n,
            bad_words_ids=[[i] for i in sorted(banned)],
        )
    return out[0, len(prompt_ids) :].tolist()
