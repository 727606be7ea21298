"""Comparing pcm16 audio of two syntheses of the same units.

The speech worker groups units into vocoder windows by timing (a stream that fell behind catches
up in larger chunks; service/speech/streaming.py), and windows of other lengths round floats
differently: the same reply's audio is equal up to 1 LSB of pcm16, not byte for byte. Every test
that compares two streamed syntheses compares them here.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile


def assert_samples_close(got: np.ndarray, want: np.ndarray, lsb: int = 1) -> None:
    """Integer samples of equal length, no sample further apart than `lsb`."""
    a, b = (np.asarray(samples).astype(np.int32).reshape(-1) for samples in (got, want))
    assert len(a) == len(b) > 0, f"{len(a)} samples against {len(b)}"
    worst = int(np.abs(a - b).max())
    assert worst <= lsb, f"samples differ by up to {worst} LSB (allowed {lsb})"


def assert_pcm16_close(got: bytes, want: bytes, lsb: int = 1) -> None:
    assert_samples_close(np.frombuffer(got, "<i2"), np.frombuffer(want, "<i2"), lsb)


def assert_wav_close(got: bytes, want: bytes, lsb: int = 1) -> None:
    """Two pcm16 WAV files: the same format, the same samples up to `lsb`."""
    (a, rate_a), (b, rate_b) = (
        soundfile.read(io.BytesIO(data), dtype="int16") for data in (got, want)
    )
    assert rate_a == rate_b
    assert a.shape == b.shape
    assert_samples_close(a, b, lsb)
