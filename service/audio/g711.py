"""G.711 companding (ITU-T G.711): u-law and A-law, 8-bit codes <-> 16-bit PCM samples.

Telephony audio (the realtime API's ``audio/pcmu`` / ``g711_ulaw`` and ``audio/pcma`` /
``g711_alaw``) is 8 kHz mono, one byte per sample. Each code is a sign bit, a 3-bit segment
(exponent) and a 4-bit step within the segment; the segments double in width, so quiet samples
keep more precision than loud ones.

* u-law works on 14-bit samples (the 16-bit sample shifted right by 2): the magnitude, clipped
  to `ULAW_CLIP` and plus `ULAW_BIAS`, lands in segment s when it is below ``64 << s``; the
  step is the 4 bits below the segment's leading one. Codes are sent inverted (all ones is +0).
* A-law works on 13-bit samples (shifted right by 3): segments 0 and 1 are both linear with
  step 2 (0-31, 32-63), then each segment doubles; negative samples use the magnitude minus
  one; codes are sent with the even bits inverted (xor 0x55).

Decoding returns the middle of the code's interval (the standard's reconstruction levels,
scaled to 16 bits). Encoding is precomputed once for all 65536 int16 values with the same
integer rules, so converting audio is one table lookup per sample. These are the rules of the
classic reference implementation (Sun's g711.c), which CPython's former ``audioop`` module also
followed; tests/test_g711.py checks known codes and segment boundaries.
"""

from __future__ import annotations

import numpy as np

ULAW_BIAS = 0x21  # 33 (14-bit): moves segment boundaries to powers of two
ULAW_CLIP = 8159  # 14-bit magnitudes above this are clipped to the top code
_ULAW_SEGMENT_ENDS = np.array([(64 << s) - 1 for s in range(8)], dtype=np.int32)
_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _ulaw_codes(samples: np.ndarray) -> np.ndarray:
    """int32 samples in the int16 range -> u-law codes (uint8)."""
    value = samples >> 2  # 14-bit (arithmetic shift: floor for negative samples)
    negative = value < 0
    magnitude = np.minimum(np.abs(value), ULAW_CLIP) + ULAW_BIAS
    segment = np.searchsorted(_ULAW_SEGMENT_ENDS, magnitude).astype(np.int32)
    step = (magnitude >> (segment + 1)) & 0x0F
    code = np.where(segment >= 8, 0x7F, (np.minimum(segment, 7) << 4) | step)  # clipped: top code
    mask = np.where(negative, 0x7F, 0xFF)
    return (code ^ mask).astype(np.uint8)


def _ulaw_levels() -> np.ndarray:
    """The 256 u-law codes -> int16 reconstruction levels."""
    inverted = ~np.arange(256, dtype=np.int32) & 0xFF
    bias = ULAW_BIAS << 2  # in 16-bit units
    level = (((inverted & 0x0F) << 3) + bias) << ((inverted & 0x70) >> 4)
    return np.where(inverted & 0x80, bias - level, level - bias).astype(np.int16)


def _alaw_codes(samples: np.ndarray) -> np.ndarray:
    """int32 samples in the int16 range -> A-law codes (uint8)."""
    value = samples >> 3  # 13-bit (arithmetic shift: floor for negative samples)
    negative = value < 0
    magnitude = np.where(negative, -value - 1, value)
    segment = np.searchsorted(_ALAW_SEGMENT_ENDS, magnitude).astype(np.int32)
    shift = np.where(segment < 2, 1, segment)
    step = (magnitude >> shift) & 0x0F
    code = np.where(segment >= 8, 0x7F, (np.minimum(segment, 7) << 4) | step)
    mask = np.where(negative, 0x55, 0xD5)
    return (code ^ mask).astype(np.uint8)


def _alaw_levels() -> np.ndarray:
    """The 256 A-law codes -> int16 reconstruction levels."""
    code = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (code & 0x70) >> 4
    level = ((code & 0x0F) << 4) + np.where(segment == 0, 8, 0x108)
    level = level << np.maximum(segment - 1, 0)
    return np.where(code & 0x80, level, -level).astype(np.int16)


_ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32)
_ULAW_ENCODE = _ulaw_codes(_ALL_INT16)  # indexed by sample + 32768
_ALAW_ENCODE = _alaw_codes(_ALL_INT16)
_ULAW_DECODE = _ulaw_levels()
_ALAW_DECODE = _alaw_levels()


def _indices(samples: np.ndarray) -> np.ndarray:
    values = np.asarray(samples)
    if values.dtype != np.int16:
        raise TypeError(f"G.711 encodes int16 samples, got {values.dtype}")
    return values.astype(np.int32) + 32768


def ulaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples -> u-law bytes (one per sample)."""
    return _ULAW_ENCODE[_indices(samples)].tobytes()


def alaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples -> A-law bytes (one per sample)."""
    return _ALAW_ENCODE[_indices(samples)].tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """u-law bytes -> int16 samples."""
    return _ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def alaw_decode(data: bytes) -> np.ndarray:
    """A-law bytes -> int16 samples."""
    return _ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)]
