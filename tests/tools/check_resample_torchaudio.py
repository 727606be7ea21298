"""Compare service.audio.resample with torchaudio.functional.resample where torchaudio imports.

Run from the repository root on a machine with a working torchaudio:
    python tests/tools/check_resample_torchaudio.py
Prints the max abs difference per rate pair and exits 1 if any exceeds the tolerance.
Not a pytest module (torchaudio is not importable on the build machines).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

__test__ = False

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from service.audio.resample import StreamResampler, resample  # noqa: E402

RATE_PAIRS = [
    (8000, 16000),
    (22050, 16000),
    (24000, 16000),
    (44100, 16000),
    (48000, 16000),
    (16000, 24000),
]
LENGTHS = [1, 7, 1000, 44100 + 13]
TOLERANCE = 1e-5


def _compare(torchaudio_resample, signal: np.ndarray, orig: int, new: int) -> tuple[float, float]:
    expected = torchaudio_resample(torch.from_numpy(signal), orig, new).numpy()
    ours = resample(signal, orig, new)
    if expected.shape != ours.shape:
        raise AssertionError(f"{orig}->{new} n={signal.size}: {ours.shape} != {expected.shape}")
    streamer = StreamResampler(orig, new)
    pieces = [streamer.write(part) for part in np.array_split(signal, 5)]
    streamed = np.concatenate([*pieces, streamer.close()])
    if streamed.shape != expected.shape:
        raise AssertionError(f"{orig}->{new}: stream length {streamed.size} != {expected.size}")
    return float(np.abs(ours - expected).max(initial=0.0)), float(
        np.abs(streamed - expected).max(initial=0.0)
    )


def main() -> int:
    try:
        import torchaudio.functional as taf
    except Exception as error:  # broken builds fail with OSError, not ImportError
        print(f"torchaudio is not importable here: {error}")
        return 2
    rng = np.random.default_rng(1234)
    worst = 0.0
    for orig, new in RATE_PAIRS:
        for length in LENGTHS:
            noise = (0.5 * rng.standard_normal(length)).astype(np.float32)
            times = np.arange(length) / orig
            tone = (0.8 * np.sin(2 * np.pi * 440.0 * times)).astype(np.float32)
            for name, signal in (("noise", noise), ("tone", tone)):
                one_shot, streamed = _compare(taf.resample, signal, orig, new)
                worst = max(worst, one_shot, streamed)
                print(
                    f"{orig:>6} -> {new:>6}  n={length:<6} {name:<5} "
                    f"max|diff| one-shot {one_shot:.3e}  streamed {streamed:.3e}"
                )
    print(f"worst max|diff| = {worst:.3e} (tolerance {TOLERANCE:g})")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    raise SystemExit(main())
