"""wav2vec2 style encoder of the expressive model: one style unit per second.

The format is described in docs/format.md#style-encoder.

Built offline from config.json + pytorch_model.bin (never the hub); the weights are checked
strictly instead of trusting transformers' lenient loading, which only warns about missing keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

from service.errors import AudioError, CheckpointError
from service.speech.precision import Precision, cast_transformer
from service.speech.torch_files import check_state_dict, load_torch_file, require_state_dict
from service.speech.yielding import add_yield_points

POOL_SIZE = 50  # wav2vec2 frames (50 Hz) per style unit
NORM_EPS = 1e-7  # HF Wav2Vec2FeatureExtractor zero-mean unit-variance normalization
# Old checkpoints store the pos-conv weight norm under these names; torch converts them on load.
_LEGACY_WEIGHT_NORM = {
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
}


def read_config(path: Path) -> Wav2Vec2Config:
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(path, f"not valid JSON ({error})") from error
    if not isinstance(raw, dict):
        raise CheckpointError(path, "must hold a JSON object")
    if raw.get("model_type", "wav2vec2") != "wav2vec2":
        raise CheckpointError(path, f"model_type is {raw.get('model_type')!r}, expected wav2vec2")
    try:
        config = Wav2Vec2Config.from_dict(raw)
    except Exception as error:  # transformers validates field types with its own error classes
        raise CheckpointError(path, f"not a valid Wav2Vec2Config ({error})") from error
    return config


def _expected_shapes(model: Wav2Vec2ForSequenceClassification) -> dict[str, tuple[int, ...]]:
    """Checkpoint names (old weight-norm spelling) with shapes."""
    expected = {}
    for name, value in model.state_dict().items():
        for new, old in _LEGACY_WEIGHT_NORM.items():
            name = name.replace(new, old)
        expected[name] = tuple(value.shape)
    return expected


def _accept_both_spellings(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for name, value in state.items():
        for new, old in _LEGACY_WEIGHT_NORM.items():
            name = name.replace(new, old)
        renamed[name] = value
    return renamed


def load_model(directory: Path) -> Wav2Vec2ForSequenceClassification:
    config = read_config(directory / "config.json")
    path = directory / "pytorch_model.bin"
    state = _accept_both_spellings(
        require_state_dict(path, load_torch_file(path), "pytorch_model.bin")
    )
    # On the meta device: no time is spent on random initialization that the weights replace.
    with torch.device("meta"):
        model = Wav2Vec2ForSequenceClassification(config)
    expected = _expected_shapes(model)
    # The SpecAugment vector is unused at inference and may be absent from the file.
    optional = {name: expected.pop(name) for name in list(expected) if "masked_spec_embed" in name}
    check_state_dict(path, state, expected, optional=optional, what="weights")
    weights = {name: value.float() for name, value in state.items()}
    for name, shape in optional.items():
        weights.setdefault(name, torch.zeros(shape))
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval()


class StyleEncoder:
    """16 kHz waveform -> one style unit per 50 wav2vec2 frames (int64, on self.device)."""

    def __init__(self, model: Wav2Vec2ForSequenceClassification, device: torch.device) -> None:
        self._model = model
        self.device = device

    @property
    def num_labels(self) -> int:
        return int(self._model.config.num_labels)

    def frame_count(self, num_samples: int) -> int:
        """wav2vec2 frames W; the unit count is ceil(W / 50)."""
        length = num_samples
        for kernel, stride in zip(
            self._model.config.conv_kernel, self._model.config.conv_stride, strict=True
        ):
            if length < kernel:
                return 0
            length = (length - kernel) // stride + 1
        return length

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        if not isinstance(wav, torch.Tensor) or wav.dim() != 1 or not wav.is_floating_point():
            raise AudioError("style encoder input must be a 1-D float waveform tensor")
        if self.frame_count(wav.numel()) == 0:
            raise AudioError(f"{wav.numel()} samples are too short for one style frame")
        # The reference normalizes with the HF feature extractor, i.e. numpy float32 arithmetic.
        x = wav.detach().cpu().numpy().astype(np.float32)
        x = (x - x.mean()) / np.sqrt(x.var() + NORM_EPS)
        with torch.inference_mode():
            body = self._model.wav2vec2
            hidden = body(torch.from_numpy(x)[None].to(self.device, body.dtype))
            projected = self._model.projector(hidden.last_hidden_state.float())[0]
            pooled = torch.stack(
                [window.mean(dim=0) for window in projected.split(POOL_SIZE, dim=0)]
            )
            return self._model.classifier(pooled).argmax(dim=-1)


def load_style_encoder(
    style_dir: Path, device: torch.device | str = "cpu", dtype: Precision = "float32"
) -> StyleEncoder:
    """Load style_encoder_w2v2/{config.json, pytorch_model.bin}.

    ``dtype`` is the precision of the wav2vec2 body; the projection, pooling and classifier
    stay in float32 (they are a few small matrices).
    """
    target = torch.device(device)
    model = load_model(Path(style_dir)).to(target)
    cast_transformer(model.wav2vec2, model.wav2vec2.encoder, dtype)
    body = model.wav2vec2
    add_yield_points(body.feature_extractor.conv_layers, body.encoder.layers)
    return StyleEncoder(model, target)
