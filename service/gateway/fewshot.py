"""Exemplar banks for few-shot ASR and TTS prompts (docs/fewshot.md).

A bank is a directory with `manifest.jsonl`, one ``{"audio": "relative.wav", "text": "..."}``
object per line, and the audio files it names. The first `shots` exemplars are used, always the
same ones in the same order, so every prompt of a model starts with the same tokens and the LM
worker's prefix cache serves that part. Each exemplar's audio is encoded through a speech worker
once per model, on first use, and kept.

The embedded default checkpoints get a generated bank, written on first use by
`service/checkpoints/embedded_bank.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from service.checkpoints.embedded_bank import MANIFEST, ensure_embedded_bank
from service.checkpoints.layout import CheckpointLayout
from service.checkpoints.make import is_embedded
from service.errors import CheckpointError
from service.speech_worker.protocol import EncodeResult

log = logging.getLogger("spiritlm.gateway.fewshot")

Encoder = Callable[[bytes, str], Awaitable[EncodeResult]]


@dataclass(frozen=True)
class Exemplar:
    audio: Path
    text: str


@dataclass(frozen=True)
class Shot:
    """One encoded exemplar: its transcript and its speech token string (no [Speech] prefix)."""

    text: str
    tokens: str


class ExemplarBank:
    """The exemplars of one gateway and their token strings per model."""

    def __init__(self, exemplars: list[Exemplar], shots: int, source: Path | None = None) -> None:
        self.exemplars = exemplars
        self.shots = min(shots, len(exemplars))
        self.source = source
        self._encoded: dict[str, list[Shot]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def from_dir(cls, directory: Path, shots: int) -> ExemplarBank:
        directory = Path(directory).expanduser()
        exemplars = read_manifest(directory)
        if shots > len(exemplars):
            log.warning(
                "%s has %d exemplars; using all of them instead of %d",
                directory,
                len(exemplars),
                shots,
            )
        return cls(exemplars, shots, directory)

    @classmethod
    def empty(cls) -> ExemplarBank:
        return cls([], 0)

    async def shots_for(self, model: str, encode: Encoder) -> list[Shot]:
        """The first `shots` exemplars encoded for `model` (encoded on first use, then cached)."""
        if model in self._encoded:
            return self._encoded[model]
        lock = self._locks.setdefault(model, asyncio.Lock())
        async with lock:
            if model not in self._encoded:
                shots = []
                for exemplar in self.exemplars[: self.shots]:
                    result = await encode(exemplar.audio.read_bytes(), model)
                    shots.append(Shot(exemplar.text, result.tokens))
                self._encoded[model] = shots
        return self._encoded[model]


def read_manifest(directory: Path) -> list[Exemplar]:
    """Exemplars of a bank directory; every problem names the manifest line."""
    path = directory / MANIFEST
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CheckpointError(path, "few-shot manifest is missing") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(path, f"cannot be read: {error}") from None
    exemplars = [
        _exemplar(directory, path, number, line)
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]
    if not exemplars:
        raise CheckpointError(path, "few-shot manifest has no exemplars")
    return exemplars


def _exemplar(directory: Path, path: Path, number: int, line: str) -> Exemplar:
    where = f"line {number}"
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        raise CheckpointError(path, f"{where}: not valid JSON ({error})") from None
    if not isinstance(entry, dict):
        raise CheckpointError(path, f"{where}: expected an object with 'audio' and 'text'")
    audio, text = entry.get("audio"), entry.get("text")
    if not isinstance(audio, str) or not audio or Path(audio).is_absolute():
        raise CheckpointError(path, f"{where}: 'audio' must be a relative file path")
    if ".." in Path(audio).parts:
        # The bank is one directory: an entry must not reach files outside it.
        raise CheckpointError(path, f"{where}: 'audio' must not contain '..' ({audio!r})")
    if not isinstance(text, str) or not text.strip():
        raise CheckpointError(path, f"{where}: 'text' must be a non-empty string")
    if "\n" in text or "\r" in text:
        # A newline ends a shot in the prompt format, so it cannot be part of one.
        raise CheckpointError(path, f"{where}: 'text' must not contain a line break")
    file = directory / audio
    if not file.is_file():
        raise CheckpointError(path, f"{where}: audio file {file} does not exist")
    return Exemplar(file, text.strip())


def load_classification_bank(directory: Path | None) -> ExemplarBank:
    """Every exemplar of the classification bank is a shot; no bank means zero-shot."""
    if directory is None:
        return ExemplarBank.empty()
    exemplars = read_manifest(Path(directory).expanduser())
    return ExemplarBank(exemplars, len(exemplars), directory)


def load_bank(layout: CheckpointLayout, fewshot_dir: Path | None, shots: int) -> ExemplarBank:
    """The configured bank; else the embedded default's own; else none (zero-shot prompts)."""
    if fewshot_dir is not None:
        return ExemplarBank.from_dir(fewshot_dir, shots)
    if is_embedded(layout):
        return ExemplarBank.from_dir(ensure_embedded_bank(layout), shots)
    log.warning("no few-shot bank configured (--fewshot-dir): ASR and TTS prompts are zero-shot")
    return ExemplarBank.empty()
