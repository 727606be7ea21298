"""The HiFi-GAN conv stack run incrementally: each stream's layers keep the input they still need.

A chunk rendered as a window (service/speech/streaming.py) recomputes the generator's receptive
field, 20 frames on each side at official size, so a stream in 25-unit chunks costs about twice
what one-shot synthesis of the same audio costs. `IncrementalDecoder` instead keeps, for one
stream, what each layer of `CodeHiFiGAN.decode` still needs from its input between calls:

* a stride-1 convolution keeps the last ``dilation * (kernel - 1)`` columns of its input, and
  pads with zeros only at the very start and at the very end of the stream;
* a transposed convolution adds each input column's contribution into its output (overlap-add)
  and keeps the ``kernel - stride`` output columns that later input still adds to;
* a residual connection and the average over a stage's residual blocks hold the columns whose
  partner, delayed by the other path's right padding, has not come out yet.

Every input frame therefore goes through every layer once, and the audio released after ``F``
frames is the first ``F * hop - lag`` samples (`lag`: the right padding of the whole stack, in
samples; the receptive field's right half), the same samples as one-shot synthesis up to float
rounding (tests/test_incremental.py).

oneDNN builds kernels per input length, and the first call at a new length costs several times
a cached one (docs/benchmarks.md, "Where the speech side spends its time"). So a stream's first
chunk takes a whole number of `FIRST_STEP_FRAMES` frames (the fewest that release its units),
its later chunks whole blocks of `STEP_FRAMES` frames, in calls of at most `MAX_STEP_FRAMES`
(`call_lengths`), and `warm_up` runs each of those calls; the end of a stream, whose length is
arbitrary, goes through a window instead (`StreamingVocoder`; bucketed unless it reaches back
to the stream's start). Few lengths also keep the kernels few enough for the process's kernel
cache to hold them all (service/speech/kernel_cache.py).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from service.speech.hifigan import FINAL_LRELU_SLOPE, LRELU_SLOPE, CodeHiFiGAN, ResBlock
from service.speech.precision import ChannelsLastConv1d, ChannelsLastConvTranspose1d

STEP_FRAMES = 16  # frames are fed in whole blocks of this many (0.64 s of audio)
# A first chunk's frames: every length needs its own kernels (about 180 at official size, some
# 9 MB), so a first chunk of any length cost 45 lengths' worth; in eights it waits for at most
# 7 more frames (0.28 s of audio, about 3 LM tokens) and costs 6.
FIRST_STEP_FRAMES = 8
MAX_STEP_FRAMES = 64  # most frames one decoder call takes; more go in several calls


def _time_major(x: torch.Tensor) -> bool:
    """Whether [batch, channels, time] `x` is laid out channels-last (service/speech/precision.py:
    bfloat16 convolutions on a CPU), which every join and zero column here keeps: a plain
    `torch.cat` of 3-D tensors returns the plain layout, and every convolution would then
    reorder its input (measured at official size: 0.118 s instead of 0.071 s per 64-frame
    step)."""
    return x.shape[1] > 1 and x.stride(1) == 1


def _columns(x: torch.Tensor, count: int, channels: int | None = None) -> torch.Tensor:
    """`count` zero columns shaped and laid out like `x` (with `channels` rows if given)."""
    rows = x.shape[1] if channels is None else channels
    if _time_major(x):
        return x.new_zeros(x.shape[0], count, rows).transpose(1, 2)
    return x.new_zeros(x.shape[0], rows, count)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """`parts` joined in time, in the layout of the last (the newest input)."""
    if len(parts) == 1:
        return parts[0]
    if _time_major(parts[-1]):
        return torch.cat([part.transpose(1, 2) for part in parts], 1).transpose(1, 2)
    return torch.cat(parts, 2)


def _own(columns: torch.Tensor) -> torch.Tensor:
    """A copy of the few columns a layer keeps, so that the whole step's activations they were
    cut from are freed (a view would hold them: about 200 MB per official-size stream)."""
    return columns.clone()


class _Conv:
    """A stride-1 Conv1d with "same" zero padding, fed its input a few columns at a time."""

    def __init__(self, conv: nn.Conv1d) -> None:
        self.conv = conv
        self.pad = conv.padding[0]
        self.reach = conv.dilation[0] * (conv.kernel_size[0] - 1)
        self.held: torch.Tensor | None = None  # input columns later outputs still read
        self.started = False

    def __call__(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        parts = []
        if not self.started:
            parts.append(_columns(x, self.pad))
            self.started = True
        if self.held is not None:
            parts.append(self.held)
        parts.append(x)
        if final:
            parts.append(_columns(x, self.pad))
        buffer = _cat(parts)
        ready = buffer.shape[2] - self.reach
        if ready <= 0:
            self.held = buffer
            return _columns(x, 0, self.conv.out_channels)
        self.held = _own(buffer[:, :, ready:])
        return _valid_conv(self.conv, buffer)

    @property
    def lag(self) -> int:
        """Output columns behind input columns (the right padding)."""
        return self.reach - self.pad


class _Upsample:
    """A ConvTranspose1d (stride s, kernel k, padding (k - s) / 2) by overlap-add."""

    def __init__(self, up: nn.ConvTranspose1d) -> None:
        self.up = up
        self.stride = up.stride[0]
        self.crop = up.padding[0]  # output columns still to drop at the start
        self.pad = up.padding[0]
        self.pending: torch.Tensor | None = None  # partial sums of the last k - s columns

    def __call__(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        out = _columns(x, 0, self.up.out_channels)
        if x.shape[2]:
            y = _valid_transposed(self.up, x)
            if self.pending is not None:
                y[:, :, : self.pending.shape[2]] += self.pending
            done = x.shape[2] * self.stride  # later input adds to no column before this one
            out, self.pending = y[:, :, :done], _own(y[:, :, done:])
        if final and self.pending is not None:
            # The end's padding is cut too (`kernel - stride` may be odd: one more column here).
            out = _cat([out, self.pending[:, :, : self.pending.shape[2] - self.pad]])
            self.pending = None
        if self.crop:
            dropped = min(self.crop, out.shape[2])
            out = out[:, :, dropped:]
            self.crop -= dropped
        bias = self.up.bias
        return out if bias is None else out + bias.view(1, -1, 1)


class _Delay:
    """Columns of one path held until the other path of a sum has produced their partners."""

    def __init__(self) -> None:
        self.held: torch.Tensor | None = None

    def push(self, x: torch.Tensor) -> None:
        self.held = x if self.held is None else _cat([self.held, x])

    def pop(self, count: int) -> torch.Tensor:
        assert self.held is not None
        out, self.held = self.held[:, :, :count], _own(self.held[:, :, count:])
        return out

    @property
    def size(self) -> int:
        return 0 if self.held is None else self.held.shape[2]


class _ResBlock:
    def __init__(self, block: ResBlock) -> None:
        self.pairs = [
            (_Conv(conv1), _Conv(conv2), _Delay())
            for conv1, conv2 in zip(block.convs1, block.convs2, strict=True)
        ]

    def __call__(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        for conv1, conv2, skip in self.pairs:
            skip.push(x)
            h = conv1(F.leaky_relu(x, LRELU_SLOPE), final)
            h = conv2(F.leaky_relu(h, LRELU_SLOPE), final)
            x = h + skip.pop(h.shape[2])
        return x

    @property
    def lag(self) -> int:
        return sum(conv1.lag + conv2.lag for conv1, conv2, _ in self.pairs)


class _Stage:
    """One up-sampling layer and the average of its residual blocks."""

    def __init__(self, up: nn.ConvTranspose1d, blocks: list[ResBlock]) -> None:
        self.up = _Upsample(up)
        self.blocks = [_ResBlock(block) for block in blocks]
        self.outputs = [_Delay() for _ in blocks]

    def __call__(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        x = self.up(F.leaky_relu(x, LRELU_SLOPE), final)
        for block, output in zip(self.blocks, self.outputs, strict=True):
            output.push(block(x, final))
        ready = min(output.size for output in self.outputs)
        total = None
        for output in self.outputs:  # summed in the order `CodeHiFiGAN.decode` sums them
            y = output.pop(ready)
            total = y if total is None else total + y
        assert total is not None
        return total / len(self.blocks)

    def lag(self, lag_in: int) -> int:
        """Output columns behind, given the input's lag in input columns."""
        return lag_in * self.up.stride + self.up.pad + max(block.lag for block in self.blocks)


class IncrementalDecoder:
    """`CodeHiFiGAN.decode` of one stream, fed frames in order (see the module docstring).

    Not thread-safe: one stream's chunks are rendered one after the other.
    """

    def __init__(self, model: CodeHiFiGAN) -> None:
        per_stage = len(model.config.resblock_kernel_sizes)
        self.pre = _Conv(model.conv_pre)
        self.stages = [
            _Stage(up, list(model.resblocks[i * per_stage : (i + 1) * per_stage]))
            for i, up in enumerate(model.ups)
        ]
        self.post = _Conv(model.conv_post)
        self.hop = model.hop_length
        lag = self.pre.lag
        for stage in self.stages:
            lag = stage.lag(lag)
        self.lag = lag + self.post.lag  # in samples
        self.finished = False
        self.failed = False

    def released(self, frames: int) -> int:
        """Samples out once `frames` frames went in (the stream's end not yet given)."""
        return max(0, frames * self.hop - self.lag)

    def decode(self, x: torch.Tensor, *, final: bool = False) -> torch.Tensor:
        """Feed `conv_pre` input columns [1, C, T] (in the stack's dtype); the waveform samples
        [1, 1, n] that became final. `final`: `x` ends the stream, every sample comes out."""
        if self.finished:
            raise RuntimeError("decode() after the stream's end")
        if self.failed:
            raise RuntimeError("decode() after a failed step: the layers' state is lost")
        bounds = [0, *itertools.accumulate(call_lengths(x.shape[2]))]
        pieces = [x[:, :, a:b] for a, b in itertools.pairwise(bounds)] or [x]
        outputs = []
        try:
            for index, piece in enumerate(pieces):
                outputs.append(self._step(piece, final and index == len(pieces) - 1))
        except BaseException:
            self.failed = True  # some layers took the step and others did not
            raise
        self.finished = final
        return _cat(outputs)

    def _step(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        x = self.pre(x, final)
        for stage in self.stages:
            x = stage(x, final)
        return torch.tanh(self.post(F.leaky_relu(x, FINAL_LRELU_SLOPE), final))


def call_lengths(frames: int) -> list[int]:
    """How `IncrementalDecoder.decode` splits `frames` frames into calls: at most
    `MAX_STEP_FRAMES` each, all but the first a whole number of blocks. A stream's first chunk
    takes whole `FIRST_STEP_FRAMES` (the fewest that release its units); its later ones are
    whole blocks, so the first call is the only one of another length."""
    if frames <= MAX_STEP_FRAMES:
        return [frames] if frames else []
    # The odd frames go first, with enough whole blocks that the call releases audio.
    first = frames % STEP_FRAMES + MAX_STEP_FRAMES - STEP_FRAMES if frames % STEP_FRAMES else 0
    rest = range(first, frames, MAX_STEP_FRAMES)
    return [first] * bool(first) + [min(MAX_STEP_FRAMES, frames - start) for start in rest]


def warm_up(model: CodeHiFiGAN, channels: int, dtype: torch.dtype, device: torch.device) -> int:
    """Build the kernels of every call a stream makes; returns how many calls were run.

    A call that releases audio leaves every layer holding exactly what it holds from then on
    (each layer had more input than its reach), so all later calls of a length have the same
    shapes. A stream's first call always releases audio (its first chunk's units) and is a
    whole number of `FIRST_STEP_FRAMES` frames up to `MAX_STEP_FRAMES` (`call_lengths`); later
    calls are whole blocks.
    """

    def frames(count: int) -> torch.Tensor:
        return torch.zeros(1, channels, count, dtype=dtype, device=device)

    calls = 0
    with torch.inference_mode():
        for length in range(FIRST_STEP_FRAMES, MAX_STEP_FRAMES + 1, FIRST_STEP_FRAMES):
            first = IncrementalDecoder(model)
            if first.released(length) > 0:
                first.decode(frames(length))
                calls += 1
        for length in range(STEP_FRAMES, MAX_STEP_FRAMES + 1, STEP_FRAMES):
            later = IncrementalDecoder(model)
            later.decode(frames(MAX_STEP_FRAMES))
            later.decode(frames(length))
            calls += 1
    return calls


# ---- convolutions without padding, in the module's own layout


def _valid_conv(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    if isinstance(conv, ChannelsLastConv1d):
        out = F.conv2d(
            x.unsqueeze(2).contiguous(memory_format=torch.channels_last),
            conv.weight.unsqueeze(2),
            conv.bias,
            dilation=(1, conv.dilation[0]),
        )
        return out.squeeze(2)
    return F.conv1d(x, conv.weight, conv.bias, dilation=conv.dilation[0])


def _valid_transposed(up: nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """Without its bias: overlapping contributions are summed first (`_Upsample`)."""
    if isinstance(up, ChannelsLastConvTranspose1d):
        out = F.conv_transpose2d(
            x.unsqueeze(2).contiguous(memory_format=torch.channels_last),
            up.weight.unsqueeze(2),
            None,
            stride=(1, up.stride[0]),
        )
        return out.squeeze(2)
    return F.conv_transpose1d(x, up.weight, None, stride=up.stride[0])
