"""The precisions the speech models may run in (settings `encoder_dtype`, `vocoder_dtype`).

float32 is the reference's and the default everywhere: units and audio then match the official
implementation. bfloat16 is about 1.6x faster on a CPU with AMX (GPUs not measured), at a
measured cost (docs/benchmarks.md, "Reduced precision").
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

Precision = Literal["float32", "bfloat16"]
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class Float32Island(nn.Module):
    """Runs `inner` in float32 inside a model cast to a lower precision.

    Used for the transformers' grouped positional convolution: torch's CPU bfloat16 kernel
    returns wrong results for some group geometries (measured with torch 2.13: 48 channels in 4
    groups, kernel 16, relative error 1.17 against the same convolution in float32; the official
    768 channels in 16 groups, kernel 128, are right). It is a small share of the work.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.float()).to(x.dtype)


def cast_transformer(model: nn.Module, positional_conv_owner: nn.Module, dtype: Precision) -> None:
    """Cast a HuBERT / wav2vec2 body to `dtype`, keeping its positional convolution in float32."""
    if dtype == "float32":
        return
    # Copied before the cast, so the island keeps the float32 weights, not bfloat16-rounded ones.
    positional_conv = copy.deepcopy(positional_conv_owner.pos_conv_embed)
    model.to(DTYPES[dtype])
    positional_conv_owner.pos_conv_embed = Float32Island(positional_conv)
