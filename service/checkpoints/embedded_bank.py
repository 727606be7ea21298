"""The few-shot exemplar bank of the embedded default checkpoints (docs/fewshot.md).

The embedded default gets a generated bank: a few fixed sentences paired with audio the tiny base
vocoder makes from seeded random units. It carries no linguistic content (the tiny models have
none), but it has the real format (a directory with `manifest.jsonl`, one
``{"audio": "relative.wav", "text": "..."}`` object per line, and the audio files it names), so
transcription and speech work out of the box and exercise the same prompt path as a real bank.
The gateway reads it like any other bank (`service/gateway/fewshot.py`).
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np

from service.checkpoints.layout import BASE, CheckpointLayout

# The index file of every bank, generated or not (the gateway reads banks by it).
MANIFEST = "manifest.jsonl"
# Bump when the generated bank changes, so banks written by older versions are regenerated.
EMBEDDED_BANK_VERSION = "2"
EMBEDDED_BANK_DIR = f"fewshot-v{EMBEDDED_BANK_VERSION}"
EMBEDDED_SENTENCES = (
    "the birch canoe slid on the smooth planks",
    "glue the sheet to the dark blue background",
    "it is easy to tell the depth of a well",
    "these days a chicken leg is a rare dish",
)
# Units per character of the sentence: with the tiny vocoder's ~1.6 predicted frames per unit
# this gives about 65 ms of audio per character, roughly the pace of read speech.
UNITS_PER_CHAR = 1.0
EMBEDDED_SPEAKER = 2


def ensure_embedded_bank(layout: CheckpointLayout) -> Path:
    """The generated bank next to the embedded checkpoints, written once (atomically)."""
    target = layout.root / EMBEDDED_BANK_DIR
    if (target / MANIFEST).is_file():
        return target
    with open(layout.root / ".fewshot.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / MANIFEST).is_file():
            staging = Path(tempfile.mkdtemp(prefix=".fewshot-", dir=layout.root))
            try:
                write_embedded_bank(layout, staging)
                os.replace(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


def embedded_units(index: int, text: str) -> list[int]:
    """Seeded HuBERT units for one sentence, without consecutive repeats (like LM output)."""
    rng = random.Random(1000 + index)
    units: list[int] = []
    while len(units) < max(8, round(len(text) * UNITS_PER_CHAR)):
        unit = rng.randrange(500)
        if not units or unit != units[-1]:
            units.append(unit)
    return units


def voiced_carrier(samples: int, index: int, rate: int = 16000) -> np.ndarray:
    """A harmonic tone with a gliding F0 (100-160 Hz), peak 1.

    The tiny vocoder's output is noise-like, and the expressive encoder's pitch tracker (FCPE)
    fails on audio without any voiced frame; mixing this in gives every exemplar a pitch.
    """
    t = np.arange(samples) / rate
    f0 = 130.0 + 30.0 * np.sin(2 * np.pi * 0.7 * t + index)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 9))
    return (tone / np.abs(tone).max()).astype(np.float32)


def write_embedded_bank(layout: CheckpointLayout, directory: Path) -> None:
    """Synthesise the embedded bank's audio with the base vocoder and write its manifest."""
    from service.audio.encode import encode_audio
    from service.speech.pipeline import SpeechStack
    from service.units.tokens import Units

    stack = SpeechStack(layout, BASE, device="cpu")
    lines = []
    for index, text in enumerate(EMBEDDED_SENTENCES):
        units = Units(hubert=embedded_units(index, text))
        vocoded = stack.decode(units, speaker=EMBEDDED_SPEAKER)
        vocoded = vocoded / max(float(np.abs(vocoded).max()), 1e-6)
        wav = 0.45 * vocoded + 0.45 * voiced_carrier(len(vocoded), index)
        name = f"{index:02d}.wav"
        (directory / name).write_bytes(encode_audio(wav, stack.sample_rate, "wav"))
        lines.append(json.dumps({"audio": name, "text": text}))
    (directory / MANIFEST).write_text("\n".join(lines) + "\n", encoding="utf-8")
