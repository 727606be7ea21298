"""Write random-weight HiFi-GAN vocoder directories in the official file formats.

Both vocoder directories of the layout are produced: config.json, generator.pt (``{"generator":
state_dict}``, every conv weight-normed and stored as ``weight_g`` / ``weight_v``),
speakers.txt and, for the base vocoder, styles.txt. Parameter names are spelled out here from
docs/format.md#unit-vocoder rather than taken from our own model code, so loading them is a real
format check. The same seed always gives byte-identical files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from service.checkpoints.layout import BASE, EXPRESSIVE, CheckpointLayout

NUM_UNITS = 501  # units 0..499 plus the quantizer's blank slot
SPEAKERS = ["ex01_default", "ex02_default", "ex03_default", "ex04_default"]
DUR_BIAS = 0.95  # exp(0.95) - 1 ~ 1.6 frames per unit; the projection spreads it to 1..4
DUR_SPREAD = 0.2


@dataclass(frozen=True)
class Geometry:
    upsample_rates: list[int]
    upsample_kernel_sizes: list[int]
    upsample_initial_channel: int
    resblock_kernel_sizes: list[int]
    resblock_dilation_sizes: list[list[int]]
    embedding_dim: int
    num_styles: int


GEOMETRIES = {
    "tiny": Geometry(
        upsample_rates=[5, 4, 4, 4, 2],
        upsample_kernel_sizes=[11, 8, 8, 8, 4],
        upsample_initial_channel=32,
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3, 5]],
        embedding_dim=16,
        num_styles=12,
    ),
    "official": Geometry(
        upsample_rates=[5, 4, 4, 4, 2],
        upsample_kernel_sizes=[11, 8, 8, 8, 4],
        upsample_initial_channel=512,
        resblock_kernel_sizes=[3, 7, 11],
        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        embedding_dim=128,
        num_styles=100,
    ),
}


def vocoder_config(geometry: Geometry, expressive: bool) -> dict[str, Any]:
    """config.json content with the keys the official unit HiFi-GAN configs carry."""
    e = geometry.embedding_dim
    config: dict[str, Any] = {
        "resblock": "1",
        "upsample_rates": geometry.upsample_rates,
        "upsample_kernel_sizes": geometry.upsample_kernel_sizes,
        "upsample_initial_channel": geometry.upsample_initial_channel,
        "resblock_kernel_sizes": geometry.resblock_kernel_sizes,
        "resblock_dilation_sizes": geometry.resblock_dilation_sizes,
        "num_embeddings": NUM_UNITS,
        "embedding_dim": e,
        "model_in_dim": e * (4 if expressive else 3),
        "code_hop_size": 640,
        "sampling_rate": 16000,
        "multispkr": True,
        "num_speakers": len(SPEAKERS),
        "dur_predictor_params": {
            "encoder_embed_dim": e,
            "var_pred_hidden_dim": e,
            "var_pred_kernel_size": 3,
            "var_pred_dropout": 0.5,
        },
    }
    if expressive:
        config.update(
            num_f0_tokens=64, f0_hop_size=1280, num_style_tokens=100, style_hop_size=16000
        )
    else:
        config.update(multistyle=True, num_styles=geometry.num_styles)
    return config


class _StateWriter:
    """Fills a state dict in a fixed order from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = torch.Generator().manual_seed(seed)
        self.state: dict[str, torch.Tensor] = {}

    def normal(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=self.rng) * scale

    def embedding(self, name: str, rows: int, dim: int) -> None:
        self.state[f"{name}.weight"] = self.normal(rows, dim)

    def weight_normed(self, name: str, shape: tuple[int, int, int], gain: float) -> None:
        # Axis 0 carries the norm (output channels for Conv1d, input channels for transposed).
        self.state[f"{name}.weight_g"] = gain * (1 + self.normal(shape[0], 1, 1, scale=0.1))
        self.state[f"{name}.weight_v"] = self.normal(*shape)

    def conv(self, name: str, c_in: int, c_out: int, kernel: int, gain: float = 1.0) -> None:
        self.weight_normed(name, (c_out, c_in, kernel), gain)
        self.state[f"{name}.bias"] = self.normal(c_out, scale=0.02)

    def transposed(self, name: str, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        # Each output sample sums ~kernel/stride taps: scale so activations keep their size.
        gain = math.sqrt(2 * stride * c_out / c_in)
        self.weight_normed(name, (c_in, c_out, kernel), gain)
        self.state[f"{name}.bias"] = self.normal(c_out, scale=0.02)

    def plain_conv(self, name: str, c_in: int, c_out: int, kernel: int) -> None:
        self.state[f"{name}.weight"] = self.normal(
            c_out, c_in, kernel, scale=(c_in * kernel) ** -0.5
        )
        self.state[f"{name}.bias"] = self.normal(c_out, scale=0.1)

    def layer_norm(self, name: str, dim: int) -> None:
        self.state[f"{name}.weight"] = 1 + self.normal(dim, scale=0.1)
        self.state[f"{name}.bias"] = self.normal(dim, scale=0.1)


def _write_duration_predictor(w: _StateWriter, params: dict[str, int]) -> None:
    e, h, k = (
        params[key] for key in ("encoder_embed_dim", "var_pred_hidden_dim", "var_pred_kernel_size")
    )
    w.plain_conv("dur_predictor.conv1.0", e, h, k)
    w.layer_norm("dur_predictor.ln1", h)
    w.plain_conv("dur_predictor.conv2.0", h, h, k)
    w.layer_norm("dur_predictor.ln2", h)
    w.state["dur_predictor.proj.weight"] = w.normal(1, h, scale=DUR_SPREAD / math.sqrt(h))
    w.state["dur_predictor.proj.bias"] = torch.full((1,), DUR_BIAS)


def _write_conv_stack(w: _StateWriter, config: dict[str, Any]) -> None:
    c0 = config["upsample_initial_channel"]
    w.conv("conv_pre", config["model_in_dim"], c0, 7)
    stages = zip(config["upsample_rates"], config["upsample_kernel_sizes"], strict=True)
    for i, (u, k) in enumerate(stages):
        w.transposed(f"ups.{i}", c0 // 2**i, c0 // 2 ** (i + 1), k, u)
    per_stage = len(config["resblock_kernel_sizes"])
    for i in range(len(config["upsample_rates"])):
        channels = c0 // 2 ** (i + 1)
        kernels = zip(
            config["resblock_kernel_sizes"], config["resblock_dilation_sizes"], strict=True
        )
        for j, (kr, dilations) in enumerate(kernels):
            block = f"resblocks.{i * per_stage + j}"
            for m in range(len(dilations)):
                w.conv(f"{block}.convs1.{m}", channels, channels, kr, gain=1.4)
                w.conv(f"{block}.convs2.{m}", channels, channels, kr, gain=0.5)
    w.conv("conv_post", c0 // 2 ** len(config["upsample_rates"]), 1, 7, gain=0.2)


def generator_state(config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """Random weights for every parameter the config implies, under the official names."""
    w = _StateWriter(seed)
    e = config["embedding_dim"]
    w.embedding("dict", config["num_embeddings"], e)
    if config.get("num_f0_tokens"):
        w.embedding("f0_dict", config["num_f0_tokens"], e)
    if config.get("num_style_tokens"):
        w.embedding("style_dict", config["num_style_tokens"], e)
    if config.get("multispkr"):
        w.embedding("spkr", config["num_speakers"], e)
    if config.get("multistyle"):
        w.embedding("style", config["num_styles"], e)
    _write_duration_predictor(w, config["dur_predictor_params"])
    _write_conv_stack(w, config)
    return w.state


def style_names(count: int) -> list[str]:
    names = [f"style_{i:02d}" for i in range(count)]
    names[8] = "conv-default"  # the base vocoder's default global style
    return names


def _write_one(directory: Path, config: dict[str, Any], seed: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    torch.save({"generator": generator_state(config, seed)}, directory / "generator.pt")
    (directory / "speakers.txt").write_text("\n".join(SPEAKERS) + "\n", encoding="utf-8")
    if config.get("multistyle"):
        names = style_names(config["num_styles"])
        (directory / "styles.txt").write_text("\n".join(names) + "\n", encoding="utf-8")


def write_vocoders(
    layout: CheckpointLayout,
    *,
    seed: int = 0,
    size: str = "tiny",
    progress: Callable[[str], None] = print,
) -> None:
    """Write the base and expressive vocoder directories of ``layout`` with random weights."""
    if size not in GEOMETRIES:
        raise ValueError(f"unknown vocoder size {size!r}; expected one of {', '.join(GEOMETRIES)}")
    geometry = GEOMETRIES[size]
    for offset, variant in enumerate((BASE, EXPRESSIVE)):
        directory = layout.vocoder_dir(variant)
        config = vocoder_config(geometry, expressive=variant == EXPRESSIVE)
        _write_one(directory, config, seed * 2 + offset)
        progress(f"wrote {size} vocoder for {variant}: {directory}")
