"""Comparing pcm16 audio of two syntheses of the same units.

The speech worker groups units into vocoder windows by timing (a stream that fell behind catches
up in larger chunks; service/speech/streaming.py), and windows of other lengths round floats
differently: the same reply's audio is equal up to 1 LSB of pcm16, not byte for byte.
"""

from __future__ import annotations

import numpy as np


def assert_pcm16_close(got: bytes, want: bytes, lsb: int = 1) -> None:
    a, b = (np.frombuffer(data, "<i2").astype(np.int32) for data in (got, want))
    assert len(a) == len(b) > 0
    assert np.abs(a - b).max() <= lsb
