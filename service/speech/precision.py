"""The precisions the speech models may run in (settings `encoder_dtype`,
`realtime_encoder_dtype`, `vocoder_dtype`).

float32 is the reference's and the default for REST, the CLI and all audio: units and audio
then match the official implementation. Realtime conversations' turns are encoded in bfloat16
by default on a CPU with native bfloat16 (`realtime_encoder_dtype auto`, docs/realtime.md).
bfloat16 is 2-2.5x (encoders) and 4.5x (vocoder) faster on a CPU with AMX, where its
convolutions run channels-last (GPUs not measured), at a measured cost (docs/benchmarks.md,
"Reduced precision").
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Precision = Literal["float32", "bfloat16"]
PrecisionChoice = Literal["auto", "float32", "bfloat16"]  # auto: chosen by the hardware
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
    """Cast a HuBERT / wav2vec2 body to `dtype`, keeping its positional convolution in float32;
    its other convolutions run channels-last where that pays (`channels_last_pays`)."""
    if dtype == "float32":
        return
    # Copied before the cast, so the island keeps the float32 weights, not bfloat16-rounded ones.
    positional_conv = copy.deepcopy(positional_conv_owner.pos_conv_embed)
    model.to(DTYPES[dtype])
    positional_conv_owner.pos_conv_embed = Float32Island(positional_conv)
    set_channels_last(model, channels_last_pays(dtype, _device_of(model)))


# ---- convolution layout


def channels_last_pays(dtype: Precision, device: torch.device) -> bool:
    """Whether the 1-D convolutions of a model in `dtype` on `device` should run channels-last.

    bfloat16 on a CPU: oneDNN runs a bfloat16 `conv1d` on channels-first tensors through a
    reorder of its input and output on every call. The same convolution as a 2-D one on
    channels-last tensors skips them: on an AMX Xeon, one thread, the official-size vocoder took
    0.25 s instead of 0.69 s for 5.3 s of audio, with the same error against float32, and the
    expressive encode of 9.1 s 1.15 s instead of 1.96 s (docs/benchmarks.md, "Reduced
    precision"). float32 stays as it is: it gained less (17 % on the vocoder) and its results
    must keep matching the reference's convolutions to the last bits. GPUs are not measured:
    they keep the plain layout.
    """
    return dtype == "bfloat16" and device.type == "cpu"


class ChannelsLastConv1d(nn.Conv1d):
    """A Conv1d computed as a 2-D convolution of height 1 on channels-last tensors.

    Takes and returns [batch, channels, time] like Conv1d; its output's memory is time-major
    (channels-last), which elementwise ops keep, so the next convolution reads it without a copy.
    """

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str) or input.dim() != 3:
            return super()._conv_forward(input, weight, bias)
        out = F.conv2d(
            _channels_last(input),
            weight.unsqueeze(2),
            bias,
            (1, self.stride[0]),
            (0, self.padding[0]),
            (1, self.dilation[0]),
            self.groups,
        )
        return out.squeeze(2)


class ChannelsLastConvTranspose1d(nn.ConvTranspose1d):
    """A ConvTranspose1d computed as a 2-D one on channels-last tensors (see ChannelsLastConv1d)."""

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if input.dim() != 3:  # unbatched: as ConvTranspose1d computes it
            return super().forward(input, output_size)
        padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, 1, self.dilation
        )
        out = F.conv_transpose2d(
            _channels_last(input),
            self.weight.unsqueeze(2),
            self.bias,
            (1, self.stride[0]),
            (0, self.padding[0]),
            (0, padding[0]),
            self.groups,
            (1, self.dilation[0]),
        )
        return out.squeeze(2)


_LAYOUTS: dict[type[nn.Module], tuple[type[nn.Module], type[nn.Module]]] = {
    nn.Conv1d: (nn.Conv1d, ChannelsLastConv1d),
    ChannelsLastConv1d: (nn.Conv1d, ChannelsLastConv1d),
    nn.ConvTranspose1d: (nn.ConvTranspose1d, ChannelsLastConvTranspose1d),
    ChannelsLastConvTranspose1d: (nn.ConvTranspose1d, ChannelsLastConvTranspose1d),
}


def set_channels_last(module: nn.Module, enabled: bool) -> None:
    """Run every 1-D convolution in `module` channels-last (or back to plain), in place.

    Weights keep their values and shapes; only their memory order changes (time-major, so the
    2-D kernel reads them without a reorder), and they become inference-only parameters
    (`requires_grad` off). Float32 islands are left alone.
    """
    if isinstance(module, Float32Island):
        return
    layouts = _LAYOUTS.get(type(module))
    if layouts is None:
        for child in module.children():
            set_channels_last(child, enabled)
        return
    module.__class__ = layouts[enabled]
    weight = module.weight.detach()
    weight = weight.transpose(1, 2).contiguous().transpose(1, 2) if enabled else weight.contiguous()
    module.weight = nn.Parameter(weight, requires_grad=False)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    x = x.unsqueeze(2)
    return (
        x
        if x.is_contiguous(memory_format=torch.channels_last)
        else x.contiguous(memory_format=torch.channels_last)
    )


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
