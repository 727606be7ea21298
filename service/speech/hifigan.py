"""HiFi-GAN unit vocoder modules (docs/format.md#unit-vocoder).

The module tree mirrors the official parameter names exactly (``dict``, ``f0_dict``,
``style_dict``, ``spkr``, ``style``, ``dur_predictor.*``, ``conv_pre``, ``ups.{i}``,
``resblocks.{n}.convs1|convs2.{m}``, ``conv_post``) so a state dict maps onto it one to one.
Convolutions are plain here: the loader folds the stored weight normalization into ``weight``.

Besides the forward passes, every block can say which input positions an output range depends
on (``input_span``). Streaming synthesis uses these spans to find the exact left/right context
that makes a windowed computation equal to the whole-sequence one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from service.speech.precision import set_channels_last

Span = tuple[int, int]  # inclusive index range [first, last]

LRELU_SLOPE = 0.1
# The official generator calls leaky_relu with torch's default slope before conv_post
# (docs/format.md#unit-vocoder).
FINAL_LRELU_SLOPE = 0.01


@dataclass(frozen=True)
class DurationParams:
    """``dur_predictor_params`` of config.json (dropout is irrelevant at inference)."""

    embed_dim: int
    hidden_dim: int
    kernel_size: int


@dataclass(frozen=True)
class HiFiGANConfig:
    """Every config.json value the vocoder needs, already validated."""

    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    model_in_dim: int
    num_embeddings: int
    embedding_dim: int
    num_f0_tokens: int | None
    num_style_tokens: int | None
    hubert_to_f0: int | None
    hubert_to_style: int | None
    multispkr: bool
    num_speakers: int
    speaker_embedder_dim: int | None  # set when ``embedder_params`` makes ``spkr`` a Linear
    multistyle: bool
    num_styles: int
    duration: DurationParams | None

    @property
    def conditioning_count(self) -> int:
        """How many E-wide embeddings are concatenated into ``conv_pre``."""
        return (
            1
            + (self.num_f0_tokens is not None)
            + (self.num_style_tokens is not None)
            + self.multispkr
            + self.multistyle
        )


def conv_span(span: Span, conv: nn.Conv1d) -> Span:
    """Input positions that outputs ``span`` of a stride-1 Conv1d read (zero padding included)."""
    pad, dil, k = conv.padding[0], conv.dilation[0], conv.kernel_size[0]
    return span[0] - pad, span[1] - pad + dil * (k - 1)


def transposed_span(span: Span, conv: nn.ConvTranspose1d) -> Span:
    """Input positions that outputs ``span`` of a ConvTranspose1d receive contributions from."""
    stride, pad, k = conv.stride[0], conv.padding[0], conv.kernel_size[0]
    # Output t receives input i through tap j = t + pad - i * stride, 0 <= j < k.
    first = -((-(span[0] + pad - k + 1)) // stride)  # ceil division
    last = (span[1] + pad) // stride
    return first, last


def union(a: Span, b: Span) -> Span:
    return min(a[0], b[0]), max(a[1], b[1])


class ResBlock(nn.Module):
    """HiFi-GAN residual block type 1: three dilated conv pairs with skip connections."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(
                channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2
            )
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=1, padding=(kernel_size - 1) // 2)
            for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            h = conv1(F.leaky_relu(x, LRELU_SLOPE))
            h = conv2(F.leaky_relu(h, LRELU_SLOPE))
            x = h + x
        return x

    def input_span(self, span: Span) -> Span:
        pairs = list(zip(self.convs1, self.convs2, strict=True))
        for conv1, conv2 in reversed(pairs):
            # The skip connection keeps the span itself; the branch widens it.
            span = union(span, conv_span(conv_span(span, conv2), conv1))
        return span


class DurationPredictor(nn.Module):
    """Log-duration per unit from unit embeddings; conv2 padding is always 1.

    See docs/format.md#unit-vocoder.
    """

    def __init__(self, params: DurationParams) -> None:
        super().__init__()
        k = params.kernel_size
        self.conv1 = nn.Sequential(
            nn.Conv1d(params.embed_dim, params.hidden_dim, k, padding=(k - 1) // 2), nn.ReLU()
        )
        self.ln1 = nn.LayerNorm(params.hidden_dim)
        self.conv2 = nn.Sequential(
            nn.Conv1d(params.hidden_dim, params.hidden_dim, k, padding=1), nn.ReLU()
        )
        self.ln2 = nn.LayerNorm(params.hidden_dim)
        self.proj = nn.Linear(params.hidden_dim, 1)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """``emb`` [B, T, E] -> log-durations [B, T]."""
        x = self.ln1(self.conv1(emb.transpose(1, 2)).transpose(1, 2))
        x = self.ln2(self.conv2(x.transpose(1, 2)).transpose(1, 2))
        return self.proj(x).squeeze(2)

    def input_span(self, span: Span) -> Span:
        return conv_span(conv_span(span, self.conv2[0]), self.conv1[0])


class CodeHiFiGAN(nn.Module):
    """Embedding tables, optional duration predictor and the HiFi-GAN conv stack."""

    def __init__(self, config: HiFiGANConfig) -> None:
        super().__init__()
        e = config.embedding_dim
        self.config = config
        self.dict = nn.Embedding(config.num_embeddings, e)
        if config.num_f0_tokens is not None:
            self.f0_dict = nn.Embedding(config.num_f0_tokens, e)
        if config.num_style_tokens is not None:
            self.style_dict = nn.Embedding(config.num_style_tokens, e)
        if config.speaker_embedder_dim is not None:
            self.spkr: nn.Module = nn.Linear(config.speaker_embedder_dim, e)
        elif config.multispkr:
            self.spkr = nn.Embedding(config.num_speakers, e)
        if config.multistyle:
            self.style = nn.Embedding(config.num_styles, e)
        if config.duration is not None:
            self.dur_predictor = DurationPredictor(config.duration)
        self._build_conv_stack(config)

    def _build_conv_stack(self, config: HiFiGANConfig) -> None:
        c0 = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.model_in_dim, c0, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        stages = zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True)
        for i, (u, k) in enumerate(stages):
            c_in, c_out = c0 // (2**i), c0 // (2 ** (i + 1))
            self.ups.append(nn.ConvTranspose1d(c_in, c_out, k, stride=u, padding=(k - u) // 2))
            kernels = zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True)
            for kr, dilations in kernels:
                self.resblocks.append(ResBlock(c_out, kr, dilations))
        c_last = c0 // (2 ** len(config.upsample_rates))
        self.conv_post = nn.Conv1d(c_last, 1, 7, padding=3)

    def cast_conv_stack(self, dtype: torch.dtype, *, channels_last: bool = False) -> None:
        """Run the conv stack (conv_pre .. conv_post) in `dtype`, channels-last if asked
        (service/speech/precision.py, `channels_last_pays`); the embedding tables and the
        duration predictor stay float32, so frame counts never depend on the precision."""
        for module in (self.conv_pre, self.ups, self.resblocks, self.conv_post):
            module.to(dtype)
            set_channels_last(module, channels_last)

    @property
    def hop_length(self) -> int:
        hop = 1
        for u in self.config.upsample_rates:
            hop *= u
        return hop

    def weight_normed(self) -> list[str]:
        """Names of the modules stored with weight normalization (weight_g / weight_v)."""
        names = ["conv_pre"]
        names += [f"ups.{i}" for i in range(len(self.ups))]
        for n, block in enumerate(self.resblocks):
            names += [f"resblocks.{n}.convs1.{m}" for m in range(len(block.convs1))]
            names += [f"resblocks.{n}.convs2.{m}" for m in range(len(block.convs2))]
        names.append("conv_post")
        return names

    def log_durations(self, units: torch.Tensor) -> torch.Tensor:
        """``units`` [1, N] -> log-durations [1, N]."""
        return self.dur_predictor(self.dict(units))

    def embed(
        self,
        units: torch.Tensor,
        pitch: torch.Tensor | None,
        style_codes: torch.Tensor | None,
        speaker: torch.Tensor | None,
        global_style: torch.Tensor | None,
    ) -> torch.Tensor:
        """Frame-level codes [1, T] (plus [1, 1] ids) -> ``conv_pre`` input [1, C, T]."""
        frames = units.shape[1]
        parts = [self.dict(units)]
        if pitch is not None:
            parts.append(self.f0_dict(pitch))
        if style_codes is not None:
            parts.append(self.style_dict(style_codes))
        if speaker is not None:
            parts.append(self.spkr(speaker).expand(-1, frames, -1))
        if global_style is not None:
            parts.append(self.style(global_style).expand(-1, frames, -1))
        return torch.cat(parts, dim=2).transpose(1, 2)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """``conv_pre`` input [1, C, T] -> waveform [1, 1, samples]."""
        x = self.conv_pre(x)
        per_stage = len(self.config.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * per_stage : (i + 1) * per_stage]
            total = None
            for block in blocks:
                total = block(x) if total is None else total + block(x)
            x = total / per_stage
        x = self.conv_post(F.leaky_relu(x, FINAL_LRELU_SLOPE))
        return torch.tanh(x)

    def input_span(self, span: Span) -> Span:
        """Frames the conv stack reads to produce output samples ``span``."""
        span = conv_span(span, self.conv_post)
        per_stage = len(self.config.resblock_kernel_sizes)
        for i in reversed(range(len(self.ups))):
            blocks = self.resblocks[i * per_stage : (i + 1) * per_stage]
            widest = span
            for block in blocks:
                widest = union(widest, block.input_span(span))
            span = transposed_span(widest, self.ups[i])
        return conv_span(span, self.conv_pre)

    def frame_context(self) -> tuple[int, int]:
        """(left, right): extra frames needed on each side to compute one frame's samples exactly.

        By shift equivariance (one frame in = ``hop_length`` samples out) the same numbers hold
        for every frame, so a window of frames [a - left, b + right) yields samples
        [a * hop, b * hop) exactly as the whole-sequence computation does.
        """
        first, last = self.input_span((0, self.hop_length - 1))
        return max(0, -first), max(0, last)

    def duration_context(self) -> tuple[int, int]:
        """(left, right): extra units needed on each side to predict one unit's duration."""
        first, last = self.dur_predictor.input_span((0, 0))
        return max(0, -first), max(0, last)
