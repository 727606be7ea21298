"""Band-limited sinc resampling, numerically equivalent to torchaudio's default resampler.

The reference resamples file inputs with ``torchaudio.functional.resample(wav, orig, new)`` and
its default parameters (Hann-windowed sinc, 6 zero crossings, rolloff 0.99). torchaudio cannot be
imported here, so this module rebuilds the same filter bank with the same float operations, in
the same order, and applies it the same way: both rates are divided by their gcd, the signal is
zero-padded by ``width`` on the left and ``width + orig`` on the right, a strided conv1d yields
``new`` output samples per ``orig`` input samples, and the result is cut to
``ceil(n * new / orig)`` samples.

``StreamResampler`` produces the same samples as ``resample`` on the concatenated input while the
input arrives in pieces (used to re-rate audio that is encoded while it is produced, and to decode
long uploads without holding them at their own rate, service/audio/decode.py).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99
# Batched streaming (``StreamResampler(..., batched=True)``): each conv1d call covers a multiple of
# BATCH_FRAMES output frames and at least BATCH_SAMPLES input samples, and the final call gets
# at least BATCH_SAMPLES too. torch's CPU conv1d picks its kernel by input size (small inputs take
# another path) and computes a call's last partial vector separately, so only large calls aligned
# like the whole-signal call give the same samples; equality is to float rounding in general
# (about 1e-7, tests/test_audio.py), and decoding resamples short signals whole for exactness.
BATCH_FRAMES = 1024
BATCH_SAMPLES = 1 << 17


def _reduced(orig_freq: int, new_freq: int) -> tuple[int, int]:
    for name, value in (("orig_freq", orig_freq), ("new_freq", new_freq)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive integer sample rate, got {value!r}")
    gcd = math.gcd(int(orig_freq), int(new_freq))
    return int(orig_freq) // gcd, int(new_freq) // gcd


def _filter_width(orig: int, new: int) -> int:
    """Taps on each side of the filter centre, in input samples (rates already gcd-reduced)."""
    base_freq = min(orig, new) * ROLLOFF
    return math.ceil(LOWPASS_FILTER_WIDTH * orig / base_freq)


def kernel_elements(orig_freq: int, new_freq: int) -> int:
    """Size of the filter bank the conversion needs; callers use it to refuse exotic rates.

    Rates with a small gcd (e.g. 44101 -> 16000) need one filter per output phase, so memory and
    time grow with ``new / gcd``; the algorithm is kept as the reference has it.
    """
    orig, new = _reduced(orig_freq, new_freq)
    return new * (2 * _filter_width(orig, new) + orig)


@functools.lru_cache(maxsize=16)
def _cpu_kernel(orig: int, new: int, dtype: torch.dtype) -> torch.Tensor:
    """Filter bank of shape (new, 1, 2 * width + orig), built with the reference's float ops."""
    width = _filter_width(orig, new)
    base_freq = min(orig, new) * ROLLOFF
    # Same dtype, operations and order as the reference so float32 rounding matches.
    idx = torch.arange(-width, width + orig, dtype=dtype)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new + idx
    t = t * base_freq
    t = t.clamp(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = torch.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
    t = t * math.pi
    scale = base_freq / orig
    kernel = torch.where(t == 0, torch.tensor(1.0, dtype=dtype), t.sin() / t)
    return kernel * (window * scale)


def _kernel(orig: int, new: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _cpu_kernel(orig, new, dtype).to(device)


def _convolve(padded: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """Apply the filter bank to already padded rows (batch, time); output (batch, frames * new)."""
    kernel = _kernel(orig, new, padded.dtype, padded.device)
    frames = torch.nn.functional.conv1d(padded[:, None], kernel, stride=orig)
    # (batch, new, frames) -> interleave phases in time order.
    return frames.transpose(1, 2).reshape(padded.shape[0], -1)


def resample_tensor(wav: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """Resample a floating tensor (..., time) on its own device and dtype, like torchaudio."""
    if not wav.is_floating_point():
        raise TypeError(f"resample needs a floating point tensor, got {wav.dtype}")
    orig, new = _reduced(orig_freq, new_freq)
    if orig == new:
        return wav
    width = _filter_width(orig, new)
    shape = wav.shape
    rows = wav.reshape(math.prod(shape[:-1]), shape[-1])  # explicit: works for 0 samples too
    length = rows.shape[-1]
    with torch.inference_mode():
        padded = torch.nn.functional.pad(rows, (width, width + orig))
        out = _convolve(padded, orig, new)
        target = math.ceil(new * length / orig)
        out = out[..., :target]
    return out.reshape(shape[:-1] + out.shape[-1:])


def resample(wav: np.ndarray, orig_freq: int, new_freq: int) -> np.ndarray:
    """Resample float audio (..., time) from ``orig_freq`` to ``new_freq``; returns float32.

    Output length is ``ceil(n * new_freq / orig_freq)``; equal rates return a float32 copy.
    """
    samples = np.array(wav, dtype=np.float32, copy=True)
    if samples.ndim == 0:
        raise ValueError("resample needs an array with a time axis, got a scalar")
    _reduced(orig_freq, new_freq)
    if orig_freq == new_freq:
        return samples
    out = resample_tensor(torch.from_numpy(samples), orig_freq, new_freq)
    return out.numpy().copy()


class StreamResampler:
    """Resample a 1-D signal that arrives in chunks, matching ``resample`` on the whole signal.

    Each output phase frame k needs input samples [k*orig - width, k*orig + orig + width), so a
    frame is emitted as soon as its last input sample has arrived; ``close`` supplies the
    reference's right-hand zero padding and trims the total to ``ceil(n * new / orig)``.
    Samples agree with ``resample`` to float rounding (about 1e-7).

    ``batched=True`` trades latency for output closer to the whole-signal call (mostly the same
    bits): input is held until large, aligned
    conv calls can be made (BATCH_FRAMES, BATCH_SAMPLES), so up to a few hundred thousand input
    samples wait; memory stays bounded by that, whatever the length of the signal.
    """

    def __init__(self, orig_freq: int, new_freq: int, *, batched: bool = False) -> None:
        self._orig, self._new = _reduced(orig_freq, new_freq)
        self._width = _filter_width(self._orig, self._new)
        self._span = 2 * self._width + self._orig
        self._batched = batched
        # Input needed before a batched call: one call's worth plus what the final call keeps.
        self._batch_ready = 2 * BATCH_SAMPLES + (BATCH_FRAMES + 1) * self._orig + self._span
        # The pending input starts with the reference's left zero padding.
        self._pending = np.zeros(self._width, dtype=np.float32)
        # Batched mode queues chunks and joins them only when a call can be made (no quadratic
        # copying when the input comes in small pieces).
        self._queued: list[np.ndarray] = []
        self._queued_size = 0
        self._received = 0
        self._emitted = 0
        self._closed = False

    def write(self, chunk: np.ndarray) -> np.ndarray:
        """Add input samples; return the output samples that are now final."""
        if self._closed:
            raise ValueError("StreamResampler is closed")
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        self._received += chunk.size
        if self._orig == self._new:
            return chunk.copy()
        if self._batched:
            self._queued.append(chunk.copy())
            self._queued_size += chunk.size
            if self._pending.size + self._queued_size < self._batch_ready:
                return np.zeros(0, dtype=np.float32)
            self._join_queued()
            return self._drain(final=False)
        self._pending = np.concatenate([self._pending, chunk])
        return self._drain()

    def _join_queued(self) -> None:
        if self._queued:
            self._pending = np.concatenate([self._pending, *self._queued])
            self._queued, self._queued_size = [], 0

    def close(self) -> np.ndarray:
        """Flush the remaining output (the tail that needs the right-hand padding)."""
        if self._closed:
            raise ValueError("StreamResampler is closed")
        self._closed = True
        if self._orig == self._new:
            return np.zeros(0, dtype=np.float32)
        already = self._emitted
        self._join_queued()
        tail = np.zeros(self._width + self._orig, dtype=np.float32)
        self._pending = np.concatenate([self._pending, tail])
        out = self._drain()
        target = math.ceil(self._new * self._received / self._orig)
        self._emitted = target
        return out[: max(0, target - already)]

    def _drain(self, *, final: bool = True) -> np.ndarray:
        """Convolve the frames that can be made; batched, only a large aligned call (not final)."""
        available = self._pending.size - self._span
        if available < 0:
            return np.zeros(0, dtype=np.float32)
        frames = available // self._orig + 1
        if not final:
            # Keep BATCH_SAMPLES for the final call, and call on whole BATCH_FRAMES only.
            frames = min(frames, (self._pending.size - BATCH_SAMPLES) // self._orig)
            frames -= frames % BATCH_FRAMES
            if frames <= 0 or frames * self._orig < BATCH_SAMPLES:
                return np.zeros(0, dtype=np.float32)
        used = (frames - 1) * self._orig + self._span
        rows = torch.from_numpy(self._pending[:used])[None]
        with torch.inference_mode():
            out = _convolve(rows, self._orig, self._new)[0].numpy().copy()
        self._pending = self._pending[frames * self._orig :].copy()
        self._emitted += out.size
        return out
