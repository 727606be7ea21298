"""The speech side of one Spirit LM variant: audio -> units -> token string, and back to audio.

This is the composition of the component models (docs/format.md#speech-components) with the
tokenizer-level rules: the 100 s chunking and 80 ms minimum (docs/format.md#audio-input), the
stream order (docs/format.md#units-to-token-string) and the decode decision
(docs/format.md#vocoding-and-duration-prediction).
Component models are loaded once per (file, device) and shared between variants, as in the
reference (HuBERT serves both).
"""

from __future__ import annotations

import random
from functools import cache, cached_property
from pathlib import Path

import numpy as np
import torch

from service.checkpoints.layout import BASE, EXPRESSIVE, CheckpointLayout, check_variant
from service.speech.precision import Precision
from service.speech.streaming import StreamingVocoder
from service.units.tokens import Units, string_to_units, units_to_string

MAX_CHUNK_SAMPLES = 1_600_000
MIN_CHUNK_SAMPLES = 1280
DEFAULT_SPEAKER = 2
BASE_DEFAULT_STYLE = 8

# The signal each stack encodes to learn which HuBERT units are silence (`silence_units`): a
# generated spoken turn ends in silence, and the gateway ends speech output once enough
# consecutive silence units follow speech (docs/checkpoints.md). Which units those are depends on
# the checkpoint, so they are learnt from digital zeros and from very quiet, deterministic white
# noise (room tone), each SILENCE_SECONDS long and encoded separately.
SILENCE_SECONDS = 2.0
ROOM_TONE_SEED = 0
ROOM_TONE_LEVEL = 1e-4


@cache
def _hubert(path: str, device: str, dtype: Precision):  # noqa: ANN202 - types in their modules
    from service.speech.hubert import load_hubert

    return load_hubert(Path(path), device=device, dtype=dtype)


@cache
def _quantizer(path: str, device: str):  # noqa: ANN202
    from service.speech.quantizer import load_quantizer

    return load_quantizer(Path(path), device=device)


@cache
def _pitch(path: str, device: str):  # noqa: ANN202
    from service.speech.pitch import load_pitch_tokenizer

    return load_pitch_tokenizer(Path(path), device=device)


@cache
def _style(path: str, device: str, dtype: Precision):  # noqa: ANN202
    from service.speech.style import load_style_encoder

    return load_style_encoder(Path(path), device=device, dtype=dtype)


@cache
def _vocoder(path: str, device: str, default_style: int | None, dtype: Precision):  # noqa: ANN202
    from service.speech.vocoder import load_vocoder

    return load_vocoder(Path(path), device=device, default_style=default_style, dtype=dtype)


def split_chunks(wav: np.ndarray) -> list[np.ndarray]:
    """Consecutive 100 s chunks; chunks under 80 ms (a short tail included) are skipped.

    See docs/format.md#audio-input.
    """
    chunks = [
        wav[start : start + MAX_CHUNK_SAMPLES] for start in range(0, len(wav), MAX_CHUNK_SAMPLES)
    ]
    return [chunk for chunk in chunks if len(chunk) >= MIN_CHUNK_SAMPLES]


class SpeechStack:
    """Speech tokenizer and vocoder of one variant, loaded lazily from a checkpoint layout."""

    def __init__(
        self,
        layout: CheckpointLayout,
        variant: str,
        device: str = "cpu",
        *,
        encoder_dtype: Precision = "float32",
        vocoder_dtype: Precision = "float32",
    ) -> None:
        self.layout = layout
        self.variant = check_variant(variant)
        self.device = device
        self.encoder_dtype = encoder_dtype
        self.vocoder_dtype = vocoder_dtype
        self._silence_units: frozenset[int] | None = None

    @property
    def expressive(self) -> bool:
        return self.variant == EXPRESSIVE

    @cached_property
    def hubert(self):  # noqa: ANN201
        return _hubert(str(self.layout.hubert), self.device, self.encoder_dtype)

    @cached_property
    def quantizer(self):  # noqa: ANN201
        return _quantizer(str(self.layout.hubert_quantizer), self.device)

    @cached_property
    def pitch(self):  # noqa: ANN201
        return _pitch(str(self.layout.pitch_dir), self.device)

    @cached_property
    def style(self):  # noqa: ANN201
        return _style(str(self.layout.style_dir), self.device, self.encoder_dtype)

    @cached_property
    def vocoder(self):  # noqa: ANN201
        default_style = BASE_DEFAULT_STYLE if self.variant == BASE else None
        directory = str(self.layout.vocoder_dir(self.variant))
        return _vocoder(directory, self.device, default_style, self.vocoder_dtype)

    def load(self) -> None:
        """Load every component now (workers do this at start-up, not on the first request)."""
        _ = self.hubert, self.quantizer, self.vocoder
        if self.expressive:
            _ = self.pitch, self.style

    # ---- encoding -----------------------------------------------------------------------

    def encode_units(self, wav: np.ndarray) -> Units:
        """Units of a 16 kHz mono float waveform, not de-duplicated.

        The format is described in docs/format.md#units-dictionary.
        """
        hubert: list[int] = []
        pitch: list[int] = []
        style: list[int] = []
        with torch.inference_mode():
            for chunk in split_chunks(np.asarray(wav, dtype=np.float32)):
                tensor = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device)
                hubert += self.quantizer(self.hubert.extract(tensor)).tolist()
                if self.expressive:
                    pitch += self.pitch(tensor).tolist()
                    style += self.style(tensor).tolist()
        if not self.expressive:
            return Units(hubert=hubert)
        return Units(hubert=hubert, pitch=pitch, style=style)

    def encode_string(self, wav: np.ndarray) -> str:
        """The token string of a waveform, without a [Speech] prefix.

        The format is described in docs/format.md#units-to-token-string.
        """
        return units_to_string(self.encode_units(wav), expressive=self.expressive)

    def silence_units(self) -> frozenset[int]:
        """The HuBERT units this stack gives silence: zeros and room tone (computed once)."""
        if self._silence_units is None:
            samples = round(SILENCE_SECONDS * self.sample_rate)
            zeros = np.zeros(samples, dtype=np.float32)
            noise = np.random.default_rng(ROOM_TONE_SEED).standard_normal(samples)
            room_tone = (noise * ROOM_TONE_LEVEL).astype(np.float32)
            units = set(self.encode_units(zeros).hubert) | set(self.encode_units(room_tone).hubert)
            self._silence_units = frozenset(units)
        return self._silence_units

    # ---- decoding -----------------------------------------------------------------------

    def decode_units(self, code: str | Units, rng: random.Random | None = None) -> Units:
        """Vocoder units: a token string is forward-filled per HuBERT token.

        See docs/format.md#token-string-to-units.
        """
        return string_to_units(code, rng=rng) if isinstance(code, str) else code

    def wants_duration(self, units: Units, dur_pred: bool) -> bool:
        """Expressive raw units (pitch count != hubert count) skip prediction.

        See docs/format.md#vocoding-and-duration-prediction.
        """
        if self.expressive and units.pitch is not None and len(units.pitch) != len(units.hubert):
            return False
        return dur_pred

    def decode(
        self,
        code: str | Units,
        *,
        speaker: int = DEFAULT_SPEAKER,
        dur_pred: bool = True,
        rng: random.Random | None = None,
    ) -> np.ndarray:
        """Audio (16 kHz float32) for a token string or a units object.

        See docs/format.md#vocoding-and-duration-prediction.
        """
        units = self.decode_units(code, rng)
        with torch.inference_mode():
            return self.vocoder.synthesize(
                units.hubert,
                units.pitch if self.expressive else None,
                units.style if self.expressive else None,
                speaker=speaker,
                dur_pred=self.wants_duration(units, dur_pred),
                deduplicated=True,
            )

    def streaming_vocoder(
        self,
        *,
        speaker: int = DEFAULT_SPEAKER,
        dur_pred: bool = True,
        first_chunk_units: int = 10,
        chunk_units: int = 25,
        max_chunk_units: int | None = None,
        incremental: bool = False,
    ) -> StreamingVocoder:
        """A vocoder that synthesises aligned units as they arrive (LM output is always aligned)."""
        return StreamingVocoder(
            self.vocoder,
            speaker=speaker,
            dur_pred=dur_pred,
            first_chunk_units=first_chunk_units,
            chunk_units=chunk_units,
            max_chunk_units=max_chunk_units,
            incremental=incremental,
        )

    @property
    def sample_rate(self) -> int:
        return 16000
