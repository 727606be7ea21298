"""Paths of the official Spirit LM checkpoint directory (docs/format.md#checkpoint-layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BASE = "spirit-lm-base-7b"
EXPRESSIVE = "spirit-lm-expressive-7b"
VARIANTS = (BASE, EXPRESSIVE)

LM_FILES = (
    "config.json",
    "generation_config.json",
    "pytorch_model.bin",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "tokenizer.model",
)


# The official release has one pytorch_model.bin (listed first); a converted or re-saved
# directory may hold sharded or safetensors weights instead, which vLLM and transformers both load.
LM_WEIGHTS = (
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "model.safetensors",
    "model.safetensors.index.json",
)


@dataclass(frozen=True)
class CheckpointLayout:
    """Every file of the official layout, relative to one checkpoint root."""

    root: Path

    @property
    def speech_dir(self) -> Path:
        return self.root / "speech_tokenizer"

    @property
    def hubert(self) -> Path:
        return self.speech_dir / "hubert_25hz" / "mhubert_base_25hz.pt"

    @property
    def hubert_quantizer(self) -> Path:
        return self.speech_dir / "hubert_25hz" / "L11_quantizer_500.pt"

    @property
    def pitch_dir(self) -> Path:
        return self.speech_dir / "vqvae_f0_quantizer"

    @property
    def style_dir(self) -> Path:
        return self.speech_dir / "style_encoder_w2v2"

    def vocoder_dir(self, variant: str) -> Path:
        name = "hifigan_spiritlm_base" if variant == BASE else "hifigan_spiritlm_expressive_w2v2"
        return self.speech_dir / name

    def lm_dir(self, variant: str) -> Path:
        return self.root / "spiritlm_model" / variant

    def speech_files(self, variant: str) -> list[Path]:
        """The speech files a variant needs, in the order they are loaded."""
        files = [self.hubert, self.hubert_quantizer]
        if variant == EXPRESSIVE:
            files += [
                self.pitch_dir / "config.yaml",
                self.pitch_dir / "model.pt",
                self.style_dir / "config.json",
                self.style_dir / "pytorch_model.bin",
            ]
        vocoder = self.vocoder_dir(variant)
        files += [vocoder / "config.json", vocoder / "generator.pt", vocoder / "speakers.txt"]
        if variant == BASE:
            files.append(vocoder / "styles.txt")
        return files

    def lm_files(self, variant: str) -> list[Path]:
        return [self.lm_dir(variant) / name for name in LM_FILES]

    def missing_lm_files(self, variant: str) -> list[Path]:
        """The LM files that are absent; the weights may be in any format vLLM also loads."""
        directory = self.lm_dir(variant)
        others = [directory / name for name in LM_FILES if name not in LM_WEIGHTS]
        missing = [path for path in others if not path.is_file()]
        if not any((directory / name).is_file() for name in LM_WEIGHTS):
            missing.append(directory / LM_WEIGHTS[0])
        return missing


def check_variant(name: str) -> str:
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(VARIANTS)}")
    return name
