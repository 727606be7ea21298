"""F0 (pitch) tokenizer of the expressive model (docs/format.md#pitch-tokenizer).

waveform -> FCPE F0 and voicing at 200 Hz -> optional per-chunk mean normalization -> VQ-VAE
encoder (level 0) -> nearest codebook entry -> pitch units at 12.5 Hz.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from service.errors import AudioError, CheckpointError
from service.speech.fcpe_compat import spawn_fcpe
from service.speech.torch_files import (
    check_state_dict,
    load_torch_file,
    require_mapping,
    require_state_dict,
)
from service.speech.yielding import add_yield_points

SAMPLE_RATE = 16000
F0_HOP = 80  # 200 Hz F0 frames
F0_MIN, F0_MAX, FCPE_THRESHOLD = 50.0, 1100.0, 0.05
FEATURES = ("f0_interp,vuv", "f0,vuv", "norm_f0_interp,vuv", "norm_f0,vuv")
EXTRACTORS = ("fcpe", "pyaapt")
_STACK_KEYS = {
    "input_emb_width",
    "output_emb_width",
    "levels",
    "downs_t",
    "strides_t",
    "width",
    "depth",
    "m_conv",
    "dilation_growth_rate",
    "dilation_cycle",
    "zero_out",
    "res_scale",
}
# Accepted but without effect on inference (training-time options, decoder-only flags).
_IGNORED_KEYS = {"reverse_decoder_dilation", "checkpoint_res"}


@dataclass(frozen=True)
class StackParams:
    """encoder_params / decoder_params of config.yaml (jukebox-style conv stacks)."""

    input_emb_width: int
    output_emb_width: int
    levels: int
    downs_t: tuple[int, ...]
    strides_t: tuple[int, ...]
    width: int
    depth: int
    m_conv: float
    dilation_growth_rate: int
    dilation_cycle: int | None
    res_scale: bool
    reverse_dilation: bool


@dataclass(frozen=True)
class VQParams:
    l_bins: int
    emb_width: int
    levels: int


@dataclass(frozen=True)
class PitchSettings:
    encoder: StackParams
    decoder: StackParams
    vq: VQParams
    features: str
    normalize: bool


# --- config.yaml -----------------------------------------------------------------------------


def _int(path: Path, section: str, cfg: Mapping, name: str, default: Any = None) -> Any:
    value = cfg.get(name, default)
    if type(value) is not int or value <= 0:
        raise CheckpointError(path, f"{section}.{name} must be a positive integer, found {value!r}")
    return value


def _int_list(path: Path, section: str, cfg: Mapping, name: str, levels: int) -> tuple[int, ...]:
    value = cfg.get(name)
    if not isinstance(value, list) or len(value) != levels:
        raise CheckpointError(path, f"{section}.{name} must be a list of {levels} integers")
    if not all(type(item) is int and item > 0 for item in value):
        # A list per level (mixed strides) exists in the reference code but not in Spirit LM.
        raise CheckpointError(path, f"{section}.{name} entries must be positive integers")
    return tuple(value)


def _stack_params(path: Path, cfg: Any, section: str) -> StackParams:
    cfg = _section(path, cfg, section)
    unknown = sorted(set(cfg) - _STACK_KEYS - _IGNORED_KEYS)
    if unknown:
        raise CheckpointError(path, f"{section} has unknown keys {unknown}")
    levels = _int(path, section, cfg, "levels")
    cycle = cfg.get("dilation_cycle")
    if cycle is not None and (type(cycle) is not int or cycle <= 0):
        raise CheckpointError(path, f"{section}.dilation_cycle must be null or a positive integer")
    m_conv = cfg.get("m_conv")
    if not isinstance(m_conv, (int, float)) or isinstance(m_conv, bool) or m_conv <= 0:
        raise CheckpointError(path, f"{section}.m_conv must be a positive number, found {m_conv!r}")
    return StackParams(
        input_emb_width=_int(path, section, cfg, "input_emb_width"),
        output_emb_width=_int(path, section, cfg, "output_emb_width"),
        levels=levels,
        downs_t=_int_list(path, section, cfg, "downs_t", levels),
        strides_t=_int_list(path, section, cfg, "strides_t", levels),
        width=_int(path, section, cfg, "width"),
        depth=_int(path, section, cfg, "depth"),
        m_conv=float(m_conv),
        dilation_growth_rate=_int(path, section, cfg, "dilation_growth_rate", 1),
        dilation_cycle=cycle,
        res_scale=bool(cfg.get("res_scale", False)),
        reverse_dilation=bool(cfg.get("reverse_decoder_dilation", False)),
    )


def _section(path: Path, cfg: Any, name: str) -> Mapping:
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get(name), Mapping):
        raise CheckpointError(path, f"missing section {name!r}")
    return cfg[name]


def read_settings(path: Path) -> PitchSettings:
    """Parse vqvae_f0_quantizer/config.yaml."""
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise CheckpointError(path, f"not valid YAML ({error})") from error
    encoder = _stack_params(path, cfg, "encoder_params")
    decoder = _stack_params(path, cfg, "decoder_params")
    vq_cfg = _section(path, cfg, "vq_params")
    vq = VQParams(
        l_bins=_int(path, "vq_params", vq_cfg, "l_bins"),
        emb_width=_int(path, "vq_params", vq_cfg, "emb_width"),
        levels=_int(path, "vq_params", vq_cfg, "levels"),
    )
    features = cfg.get("features")
    if features not in FEATURES:
        raise CheckpointError(path, f"features {features!r} is not one of {', '.join(FEATURES)}")
    if encoder.input_emb_width != 2:
        raise CheckpointError(path, "encoder_params.input_emb_width must be 2 (f0 and vuv)")
    if encoder.output_emb_width not in (vq.emb_width, 2 * vq.emb_width):
        raise CheckpointError(path, "encoder output_emb_width must be vq emb_width or twice it")
    if vq.levels != encoder.levels:
        raise CheckpointError(path, "vq_params.levels differs from encoder_params.levels")
    normalize = bool(cfg.get("speaker_norm")) or features.startswith("norm_")
    return PitchSettings(encoder, decoder, vq, features, normalize)


# --- the VQ-VAE module tree (parameter names follow the checkpoint) --------------------------


class ResBlock(nn.Module):
    """x + scale * (ReLU -> dilated conv k3 -> ReLU -> conv k1)."""

    def __init__(self, width: int, hidden: int, dilation: int, scale: float) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.ReLU(),
            nn.Conv1d(width, hidden, 3, 1, dilation, dilation),
            nn.ReLU(),
            nn.Conv1d(hidden, width, 1, 1, 0),
        )
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.model(x)


class Resnet1D(nn.Module):
    def __init__(self, p: StackParams, reverse: bool = False) -> None:
        super().__init__()
        scale = 1.0 / math.sqrt(p.depth) if p.res_scale else 1.0
        blocks = []
        for j in range(p.depth):
            exponent = j if p.dilation_cycle is None else j % p.dilation_cycle
            dilation = p.dilation_growth_rate**exponent
            blocks.append(ResBlock(p.width, int(p.m_conv * p.width), dilation, scale))
        if reverse:
            blocks.reverse()
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ConvStack(nn.Module):
    """One level of the encoder or decoder; the blocks live in .model like the checkpoint."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def encoder_level(p: StackParams, level: int) -> ConvStack:
    channels = p.input_emb_width if level == 0 else p.output_emb_width
    stride = p.strides_t[level]
    blocks: list[nn.Module] = []
    for b in range(p.downs_t[level]):
        conv = nn.Conv1d(channels if b == 0 else p.width, p.width, 2 * stride, stride, stride // 2)
        blocks.append(nn.Sequential(conv, Resnet1D(p)))
    blocks.append(nn.Conv1d(p.width, p.output_emb_width, 3, 1, 1))
    return ConvStack(blocks)


def decoder_level(p: StackParams, level: int) -> ConvStack:
    stride, count = p.strides_t[level], p.downs_t[level]
    blocks: list[nn.Module] = [nn.Conv1d(p.output_emb_width, p.width, 3, 1, 1)]
    for b in range(count):
        out = p.output_emb_width if b == count - 1 else p.width
        up = nn.ConvTranspose1d(p.width, out, 2 * stride, stride, stride // 2)
        blocks.append(nn.Sequential(Resnet1D(p, reverse=p.reverse_dilation), up))
    return ConvStack(blocks)


class Encoder(nn.Module):
    def __init__(self, p: StackParams) -> None:
        super().__init__()
        self.level_blocks = nn.ModuleList(encoder_level(p, i) for i in range(p.levels))


class Decoder(nn.Module):
    """Only present so that the checkpoint loads strictly; tokenization never runs it."""

    def __init__(self, p: StackParams) -> None:
        super().__init__()
        self.level_blocks = nn.ModuleList(decoder_level(p, i) for i in range(p.levels))
        self.out = nn.Conv1d(p.output_emb_width, p.input_emb_width, 3, 1, 1)


class Codebook(nn.Module):
    def __init__(self, bins: int, width: int) -> None:
        super().__init__()
        self.register_buffer("k", torch.zeros(bins, width))


class Bottleneck(nn.Module):
    def __init__(self, vq: VQParams) -> None:
        super().__init__()
        self.level_blocks = nn.ModuleList(
            Codebook(vq.l_bins, vq.emb_width) for _ in range(vq.levels)
        )


class F0VQVAE(nn.Module):
    def __init__(self, s: PitchSettings) -> None:
        super().__init__()
        self.encoder = Encoder(s.encoder)
        self.vq = Bottleneck(s.vq)
        self.decoder = Decoder(s.decoder)


def downsampled_length(p: StackParams, frames: int) -> int:
    """Level-0 encoder output length: each strided conv maps T -> floor((T + 2p - k) / s) + 1."""
    stride = p.strides_t[0]
    for _ in range(p.downs_t[0]):
        frames = (frames + 2 * (stride // 2) - 2 * stride) // stride + 1
        if frames <= 0:
            return 0
    return frames


def load_vqvae(directory: Path, settings: PitchSettings) -> F0VQVAE:
    """model.pt under key 'model', loaded strictly."""
    path = directory / "model.pt"
    # Official files may pickle other objects next to the weights: fall back to full unpickling.
    content = require_mapping(path, load_torch_file(path, allow_pickle=True), "file content")
    if "model" not in content:
        raise CheckpointError(path, "missing top-level key 'model'")
    weights = require_state_dict(path, content["model"], "model")
    model = F0VQVAE(settings)
    expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    check_state_dict(path, weights, expected, what="model")
    model.load_state_dict({name: value.float() for name, value in weights.items()}, strict=True)
    return model.eval()


# --- tokenizer -------------------------------------------------------------------------------


class PitchTokenizer:
    """16 kHz waveform -> pitch units (12.5 Hz with the Spirit LM configuration)."""

    def __init__(
        self, fcpe: nn.Module, vqvae: F0VQVAE, settings: PitchSettings, device: torch.device
    ) -> None:
        self._fcpe = fcpe
        self._vqvae = vqvae
        self.settings = settings
        self.device = device

    def frame_count(self, num_samples: int) -> int:
        return downsampled_length(self.settings.encoder, num_samples // F0_HOP + 1)

    def extract_f0(self, wav: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(f0 in Hz, vuv with 1.0 = voiced), float32 arrays of N // 80 + 1 frames."""
        _check_wav(wav)
        try:
            f0, uv = self._fcpe_infer(wav, interp_uv=True)
        except IndexError:
            # torchfcpe cannot interpolate across unvoiced frames when no frame is voiced
            # (silence, noise) and raises; the reference crashes there. Nothing is voiced, so
            # the F0 track is all zeros (deliberate difference, docs/checkpoints.md).
            f0, uv = self._fcpe_infer(wav, interp_uv=False)
            f0 = torch.zeros_like(f0)
        f0_track = f0[0, :, 0].float().cpu().numpy()
        vuv = (1 - uv[0, :, 0]).float().cpu().numpy()
        return f0_track, vuv

    def _fcpe_infer(
        self, wav: torch.Tensor, *, interp_uv: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            return self._fcpe.infer(
                wav.to(self.device, torch.float32)[None, :, None],
                sr=SAMPLE_RATE,
                decoder_mode="local_argmax",
                threshold=FCPE_THRESHOLD,
                f0_min=F0_MIN,
                f0_max=F0_MAX,
                interp_uv=interp_uv,
                output_interp_target_length=wav.numel() // F0_HOP + 1,
                retur_uv=True,  # sic: torchfcpe's spelling
            )

    def features(self, f0: np.ndarray, vuv: np.ndarray) -> torch.Tensor:
        """Level-0 encoder output as [frames, emb_width] (halves summed when twice as wide)."""
        f0 = np.array(f0, dtype=np.float32)  # a copy: normalization works in place
        vuv = np.asarray(vuv, dtype=np.float32)
        if self.settings.normalize:
            # Mean over voiced frames, in Hz, per chunk; NaN when nothing is voiced (as the
            # reference does).
            mean = f0[vuv != 0].mean() if (vuv != 0).any() else np.float32(np.nan)
            f0[f0 != 0] -= mean
        x = torch.from_numpy(np.stack([f0, vuv]))[None].to(self.device)
        with torch.inference_mode():
            out = self._vqvae.encoder.level_blocks[0](x)
        flat = out.permute(0, 2, 1).reshape(-1, out.shape[1])
        width = self.settings.vq.emb_width
        if flat.shape[1] == 2 * width:
            flat = flat[:, :width] + flat[:, width:]
        return flat

    def quantize(self, f0: np.ndarray, vuv: np.ndarray) -> torch.Tensor:
        if downsampled_length(self.settings.encoder, len(f0)) == 0:
            raise AudioError(f"{len(f0)} F0 frames are too few for one pitch unit")
        x = self.features(f0, vuv)
        codebook = self._vqvae.vq.level_blocks[0].k
        with torch.inference_mode():
            k_t = codebook.t()
            distance = (
                x.pow(2).sum(dim=-1, keepdim=True)
                - 2 * x @ k_t
                + k_t.pow(2).sum(dim=0, keepdim=True)
            )
            return torch.min(distance, dim=-1).indices

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        """wav: 1-D float tensor at 16 kHz -> int64 pitch units on self.device."""
        _check_wav(wav)
        if self.frame_count(wav.numel()) == 0:
            raise AudioError(f"{wav.numel()} samples are too short for one pitch unit")
        return self.quantize(*self.extract_f0(wav))


def _check_wav(wav: torch.Tensor) -> None:
    if not isinstance(wav, torch.Tensor) or wav.dim() != 1 or not wav.is_floating_point():
        raise AudioError("pitch tokenizer input must be a 1-D float waveform tensor")


def load_pitch_tokenizer(
    vqvae_dir: Path, device: torch.device | str = "cpu", extractor: str = "fcpe"
) -> PitchTokenizer:
    """Load vqvae_f0_quantizer/{config.yaml, model.pt} and torchfcpe's bundled F0 model."""
    if extractor == "pyaapt":
        raise NotImplementedError(
            "the pyaapt F0 extractor is not implemented; use the default 'fcpe' extractor"
        )
    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown F0 extractor {extractor!r}; expected 'fcpe'")
    directory = Path(vqvae_dir)
    settings = read_settings(directory / "config.yaml")
    target = torch.device(device)
    vqvae = load_vqvae(directory, settings).to(target)
    fcpe = spawn_fcpe(target)
    add_yield_points(fcpe.model.net.encoder_layers)
    return PitchTokenizer(fcpe, vqvae, settings, target)
