"""16-bit PCM <-> float samples: the one conversion every audio path uses.

PCM16 is little-endian signed 16-bit mono (the realtime API's ``pcm16``, the speech worker's
audio frames, the ``pcm`` and ``wav`` response formats). Decoding is int16 / 32768, the way the
reference loads files; encoding clips to [-1, 1] and rounds x * 32768 capped at 32767, its exact
inverse.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile


def pcm16_to_float(pcm16: bytes) -> np.ndarray:
    """Little-endian int16 bytes -> float32 samples in [-1, 1)."""
    return np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0


def float_to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples -> int16, clipped to [-1, 1] and rounded (the inverse of `pcm16_to_float`)."""
    scaled = np.rint(np.clip(samples, -1.0, 1.0) * 32768.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples -> little-endian int16 bytes."""
    return float_to_int16(samples).astype("<i2").tobytes()


def pcm16_wav(pcm16: bytes, rate: int) -> bytes:
    """pcm16 bytes as a 16-bit WAV file at `rate` (how the realtime gateway sends audio to the
    speech worker, which resamples it)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.frombuffer(pcm16, dtype="<i2"), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
