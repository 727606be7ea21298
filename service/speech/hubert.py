"""mHuBERT 25 Hz feature encoder served with transformers' HubertModel.

The checkpoint format is described in docs/format.md#hubert-encoder.

The checkpoint keeps fairseq parameter names; they are verified strictly against the geometry in
model_cfg (the reference loader silently ignores missing or unexpected keys), then renamed to
HubertModel's names. The feature is the output of transformer layer 11, so layers past it are
dropped from the module and never run.
"""

from __future__ import annotations

import argparse
import ast
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import HubertConfig, HubertModel

from service.errors import AudioError, CheckpointError
from service.speech.precision import Precision, cast_transformer
from service.speech.torch_files import (
    check_state_dict,
    fold_weight_norm,
    load_torch_file,
    require_mapping,
    require_state_dict,
)
from service.speech.yielding import add_yield_points

OUTPUT_LAYER = 11  # 1-based: the reference reads the output of the 11th transformer layer
HOP_LENGTH = 640  # 25 Hz at 16 kHz
DEFAULT_CONV_LAYERS = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
# Weights that only serve pre-training; the reference drops them before loading.
TRAINING_ONLY_KEYS = ("label_embs_concat", "final_proj.weight", "final_proj.bias")
# fairseq activation names -> transformers ACT2FN names (gelu_accurate is the tanh form).
ACTIVATIONS = {
    "gelu": "gelu",
    "relu": "relu",
    "gelu_accurate": "gelu_new",
    "gelu_fast": "gelu_new",
    "tanh": "tanh",
    "linear": "linear",
    "swish": "silu",
}
EXTRACTOR_MODES = {"default": "group", "layer_norm": "layer"}

ConvLayer = tuple[int, int, int]


@dataclass(frozen=True)
class HubertSettings:
    """The model_cfg/task_cfg values that shape inference."""

    conv_layers: tuple[ConvLayer, ...]
    extractor_mode: str
    conv_bias: bool
    layers: int
    dim: int
    ffn_dim: int
    heads: int
    activation: str
    layer_norm_first: bool
    conv_pos: int
    conv_pos_groups: int
    conv_pos_batch_norm: bool
    normalize: bool
    sample_rate: int

    @property
    def conv_dim(self) -> int:
        return self.conv_layers[-1][0]

    @property
    def hop_length(self) -> int:
        return math.prod(stride for _, _, stride in self.conv_layers)


def conv_frame_count(conv_layers: tuple[ConvLayer, ...], num_samples: int) -> int:
    """Frames out of an unpadded conv stack: L <- floor((L - k) / s) + 1 per layer."""
    length = num_samples
    for _, kernel, stride in conv_layers:
        if length < kernel:
            return 0
        length = (length - kernel) // stride + 1
    return length


# --- conv_feature_layers: a Python expression, evaluated without eval() ---------------------


def parse_conv_layers(text: str) -> list[ConvLayer]:
    """Evaluate e.g. "[(512,10,5)] + [(512,3,2)] * 4" allowing only literals, + and *.

    ast.literal_eval cannot do list concatenation or repetition, so a tiny evaluator walks the
    syntax tree instead; anything else (names, calls, attributes) is rejected.
    """
    value = _evaluate(ast.parse(text.strip(), mode="eval").body)
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of (dim, kernel, stride)")
    layers = []
    for item in value:
        if not isinstance(item, (list, tuple)) or len(item) != 3:
            raise ValueError(f"entry {item!r} is not a (dim, kernel, stride) triple")
        if not all(isinstance(n, int) and n > 0 for n in item):
            raise ValueError(f"entry {item!r} must hold positive integers")
        layers.append((item[0], item[1], item[2]))
    return layers


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.List):
        return [_evaluate(element) for element in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_evaluate(element) for element in node.elts)
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
            return left + right
        if isinstance(node.op, ast.Mult):
            if isinstance(left, int) and isinstance(right, list):
                left, right = right, left
            if isinstance(left, list) and isinstance(right, int) and 0 <= right <= 1000:
                return left * right
    raise ValueError(f"unsupported expression {ast.dump(node)[:80]}")


# --- reading the two file formats ------------------------------------------------------------


def _read_checkpoint(path: Path) -> tuple[Mapping, Mapping, dict[str, torch.Tensor]]:
    """(model_cfg, task_cfg, weights) from the converted or the legacy fairseq format."""
    # Legacy fairseq files keep their flat hyper-parameters in an argparse.Namespace.
    content = require_mapping(
        path, load_torch_file(path, safe_globals=[argparse.Namespace]), "file content"
    )
    if "model_cfg" in content or "model_weight" in content:
        for key in ("model_cfg", "task_cfg", "model_weight"):
            if key not in content:
                raise CheckpointError(path, f"missing top-level key {key!r}")
        model_cfg = require_mapping(path, content["model_cfg"], "model_cfg")
        task_cfg = require_mapping(path, content["task_cfg"], "task_cfg")
        weights = require_state_dict(path, content["model_weight"], "model_weight")
        return model_cfg, task_cfg, weights
    if "model" not in content:
        raise CheckpointError(
            path,
            "neither the converted format (model_cfg, task_cfg, model_weight) "
            "nor the fairseq format (args or cfg, model)",
        )
    weights = require_state_dict(path, content["model"], "model")
    args = content.get("args")
    if args is not None:
        flat = vars(args) if isinstance(args, argparse.Namespace) else args
        flat = require_mapping(path, flat, "args")
        return flat, flat, weights
    cfg = require_mapping(path, content.get("cfg"), "cfg")
    if "model" not in cfg or "task" not in cfg:
        raise CheckpointError(path, "cfg must hold 'model' and 'task'")
    return (
        require_mapping(path, cfg["model"], "cfg.model"),
        require_mapping(path, cfg["task"], "cfg.task"),
        weights,
    )


def _value(path: Path, cfg: Mapping, name: str, default: Any, kind: type) -> Any:
    value = cfg.get(name)
    if value is None:
        value = default
    if isinstance(value, bool) and kind is not bool:
        valid = False  # bool is an int subclass; True is no layer count
    elif kind is float:
        valid = isinstance(value, (int, float))
    else:
        valid = isinstance(value, kind)
    if not valid:
        raise CheckpointError(path, f"config field {name} must be {kind.__name__}, found {value!r}")
    return value


def parse_settings(path: Path, model_cfg: Mapping, task_cfg: Mapping) -> HubertSettings:
    """Read and validate the inference-relevant fields (fairseq dataclass defaults if absent)."""
    if model_cfg.get("label_rate") is None:
        raise CheckpointError(path, "model_cfg has no label_rate (the model config needs it)")
    _value(path, model_cfg, "label_rate", None, float)
    raw_layers = model_cfg.get("conv_feature_layers") or DEFAULT_CONV_LAYERS
    try:
        conv_layers = parse_conv_layers(raw_layers) if isinstance(raw_layers, str) else None
    except (SyntaxError, ValueError, RecursionError) as error:
        raise CheckpointError(path, f"conv_feature_layers {raw_layers!r}: {error}") from error
    if conv_layers is None:
        raise CheckpointError(path, f"conv_feature_layers must be a string, found {raw_layers!r}")
    extractor_mode = _value(path, model_cfg, "extractor_mode", "default", str)
    activation = _value(path, model_cfg, "activation_fn", "gelu", str)
    layer_type = _value(path, model_cfg, "layer_type", "transformer", str)
    if extractor_mode not in EXTRACTOR_MODES:
        raise CheckpointError(path, f"extractor_mode {extractor_mode!r} is not supported")
    if activation not in ACTIVATIONS:
        raise CheckpointError(path, f"activation_fn {activation!r} is not supported")
    if layer_type != "transformer":
        raise CheckpointError(path, f"layer_type {layer_type!r} is not supported")
    settings = HubertSettings(
        conv_layers=tuple(conv_layers),
        extractor_mode=extractor_mode,
        conv_bias=_value(path, model_cfg, "conv_bias", False, bool),
        layers=_value(path, model_cfg, "encoder_layers", 12, int),
        dim=_value(path, model_cfg, "encoder_embed_dim", 768, int),
        ffn_dim=_value(path, model_cfg, "encoder_ffn_embed_dim", 3072, int),
        heads=_value(path, model_cfg, "encoder_attention_heads", 12, int),
        activation=activation,
        layer_norm_first=_value(path, model_cfg, "layer_norm_first", False, bool),
        conv_pos=_value(path, model_cfg, "conv_pos", 128, int),
        conv_pos_groups=_value(path, model_cfg, "conv_pos_groups", 16, int),
        conv_pos_batch_norm=_value(path, model_cfg, "conv_pos_batch_norm", False, bool),
        normalize=_value(path, task_cfg, "normalize", False, bool),
        sample_rate=_value(path, task_cfg, "sample_rate", 16000, int),
    )
    _check_geometry(path, settings)
    return settings


def _check_geometry(path: Path, s: HubertSettings) -> None:
    if s.hop_length != HOP_LENGTH:
        raise CheckpointError(
            path, f"conv_feature_layers give a hop of {s.hop_length} samples, expected {HOP_LENGTH}"
        )
    if s.sample_rate != 16000:
        raise CheckpointError(path, f"task sample_rate is {s.sample_rate}, expected 16000")
    if s.layers < OUTPUT_LAYER:
        raise CheckpointError(
            path, f"encoder_layers is {s.layers} but the feature is layer {OUTPUT_LAYER}'s output"
        )
    if s.dim % s.heads or s.dim % s.conv_pos_groups:
        raise CheckpointError(
            path, f"encoder_embed_dim {s.dim} is not divisible by the heads or conv_pos_groups"
        )


# --- fairseq parameter names -----------------------------------------------------------------


def fairseq_shapes(s: HubertSettings) -> dict[str, tuple[int, ...]]:
    """Every inference parameter of the fairseq model, by name, with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    channels = 1
    for i, (dim, kernel, _) in enumerate(s.conv_layers):
        prefix = f"feature_extractor.conv_layers.{i}"
        shapes[f"{prefix}.0.weight"] = (dim, channels, kernel)
        if s.conv_bias:
            shapes[f"{prefix}.0.bias"] = (dim,)
        if s.extractor_mode == "layer_norm":
            shapes[f"{prefix}.2.1.weight"] = shapes[f"{prefix}.2.1.bias"] = (dim,)
        elif i == 0:
            shapes[f"{prefix}.2.weight"] = shapes[f"{prefix}.2.bias"] = (dim,)
        channels = dim
    shapes["layer_norm.weight"] = shapes["layer_norm.bias"] = (s.conv_dim,)
    if s.conv_dim != s.dim:
        shapes["post_extract_proj.weight"] = (s.dim, s.conv_dim)
        shapes["post_extract_proj.bias"] = (s.dim,)
    shapes.update(_pos_conv_shapes(s))
    shapes["encoder.layer_norm.weight"] = shapes["encoder.layer_norm.bias"] = (s.dim,)
    for n in range(s.layers):
        shapes.update(_layer_shapes(s, f"encoder.layers.{n}"))
    return shapes


def _pos_conv_shapes(s: HubertSettings) -> dict[str, tuple[int, ...]]:
    kernel = (s.dim, s.dim // s.conv_pos_groups, s.conv_pos)
    if s.conv_pos_batch_norm:
        norm = "encoder.pos_conv.0"
        return {
            f"{norm}.weight": (s.dim,),
            f"{norm}.bias": (s.dim,),
            f"{norm}.running_mean": (s.dim,),
            f"{norm}.running_var": (s.dim,),
            f"{norm}.num_batches_tracked": (),
            "encoder.pos_conv.1.weight": kernel,
            "encoder.pos_conv.1.bias": (s.dim,),
        }
    return {
        "encoder.pos_conv.0.weight_g": (1, 1, s.conv_pos),
        "encoder.pos_conv.0.weight_v": kernel,
        "encoder.pos_conv.0.bias": (s.dim,),
    }


def _layer_shapes(s: HubertSettings, prefix: str) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        shapes[f"{prefix}.self_attn.{proj}.weight"] = (s.dim, s.dim)
        shapes[f"{prefix}.self_attn.{proj}.bias"] = (s.dim,)
    for norm in ("self_attn_layer_norm", "final_layer_norm"):
        shapes[f"{prefix}.{norm}.weight"] = shapes[f"{prefix}.{norm}.bias"] = (s.dim,)
    shapes[f"{prefix}.fc1.weight"] = (s.ffn_dim, s.dim)
    shapes[f"{prefix}.fc1.bias"] = (s.ffn_dim,)
    shapes[f"{prefix}.fc2.weight"] = (s.dim, s.ffn_dim)
    shapes[f"{prefix}.fc2.bias"] = (s.dim,)
    return shapes


# --- fairseq -> HubertModel ------------------------------------------------------------------

_PREFIX_RENAMES = (
    ("layer_norm.", "feature_projection.layer_norm."),
    ("post_extract_proj.", "feature_projection.projection."),
    ("encoder.layer_norm.", "encoder.layer_norm."),
)
_LAYER_RENAMES = (
    ("self_attn_layer_norm.", "layer_norm."),
    ("self_attn.", "attention."),
    ("fc1.", "feed_forward.intermediate_dense."),
    ("fc2.", "feed_forward.output_dense."),
    ("final_layer_norm.", "final_layer_norm."),
)


def hf_name(name: str, s: HubertSettings) -> str:
    """The HubertModel parameter name of a fairseq parameter (docs/format.md#hubert-encoder)."""
    if name.startswith("feature_extractor.conv_layers."):
        index, rest = name.removeprefix("feature_extractor.conv_layers.").split(".", 1)
        part = {"0.weight": "conv.weight", "0.bias": "conv.bias"}.get(rest)
        if part is None:  # GroupNorm "2.x" (default mode) or LayerNorm "2.1.x" (layer_norm mode)
            part = "layer_norm." + rest.rsplit(".", 1)[1]
        return f"feature_extractor.conv_layers.{index}.{part}"
    if name.startswith("encoder.pos_conv."):
        return _pos_conv_name(name, s)
    if name.startswith("encoder.layers."):
        index, rest = name.removeprefix("encoder.layers.").split(".", 1)
        for old, new in _LAYER_RENAMES:
            if rest.startswith(old):
                return f"encoder.layers.{index}.{new}{rest.removeprefix(old)}"
    for old, new in _PREFIX_RENAMES:
        if name.startswith(old):
            return new + name.removeprefix(old)
    raise KeyError(name)


def _pos_conv_name(name: str, s: HubertSettings) -> str:
    rest = name.removeprefix("encoder.pos_conv.")
    module, field = rest.split(".", 1)
    if s.conv_pos_batch_norm and module == "0":
        return f"encoder.pos_conv_embed.batch_norm.{field}"
    return f"encoder.pos_conv_embed.conv.{field}"


def to_hf_state(weights: Mapping[str, torch.Tensor], s: HubertSettings) -> dict[str, torch.Tensor]:
    """fairseq weights -> HubertModel state dict for the first OUTPUT_LAYER layers."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if name.startswith("encoder.layers.") and int(name.split(".")[2]) >= OUTPUT_LAYER:
            continue
        if name in ("encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.weight_v"):
            continue
        value = tensor if name.endswith("num_batches_tracked") else tensor.float()
        state[hf_name(name, s)] = value
    if not s.conv_pos_batch_norm:
        # fairseq wraps the positional conv in weight_norm(..., dim=2): one norm per kernel tap.
        state["encoder.pos_conv_embed.conv.weight"] = fold_weight_norm(
            weights["encoder.pos_conv.0.weight_g"].float(),
            weights["encoder.pos_conv.0.weight_v"].float(),
            dim=2,
        )
    return state


def build_model(s: HubertSettings) -> HubertModel:
    """A HubertModel with layers [0, OUTPUT_LAYER) and a plain (unparametrized) pos conv."""
    config = HubertConfig(
        hidden_size=s.dim,
        num_hidden_layers=OUTPUT_LAYER,
        num_attention_heads=s.heads,
        intermediate_size=s.ffn_dim,
        hidden_act=ACTIVATIONS[s.activation],
        feat_extract_norm=EXTRACTOR_MODES[s.extractor_mode],
        feat_extract_activation="gelu",
        conv_dim=[dim for dim, _, _ in s.conv_layers],
        conv_kernel=[kernel for _, kernel, _ in s.conv_layers],
        conv_stride=[stride for _, _, stride in s.conv_layers],
        conv_bias=s.conv_bias,
        num_conv_pos_embeddings=s.conv_pos,
        num_conv_pos_embedding_groups=s.conv_pos_groups,
        conv_pos_batch_norm=s.conv_pos_batch_norm,
        do_stable_layer_norm=s.layer_norm_first,
        feat_proj_layer_norm=True,
        layer_norm_eps=1e-5,
        mask_time_prob=0.0,
        mask_feature_prob=0.0,
    )
    # On the meta device: no time is spent on random initialization that the weights replace.
    with torch.device("meta"):
        model = HubertModel(config)
    conv = model.encoder.pos_conv_embed.conv
    if torch.nn.utils.parametrize.is_parametrized(conv, "weight"):
        torch.nn.utils.parametrize.remove_parametrizations(conv, "weight")
    elif hasattr(conv, "weight_g"):  # older torch: hook-based weight norm
        torch.nn.utils.remove_weight_norm(conv)
    if s.conv_dim == s.dim:  # fairseq has no post_extract_proj when the dims agree
        model.feature_projection.projection = nn.Identity()
    return model


class HubertFeatureReader:
    """Waveform (16 kHz) -> layer-11 HuBERT features, one row per 640 samples."""

    def __init__(self, model: HubertModel, settings: HubertSettings, device: torch.device) -> None:
        self._model = model
        self.settings = settings
        self.device = device
        self.dtype = next(model.parameters()).dtype

    @property
    def hop_length(self) -> int:
        return self.settings.hop_length

    @property
    def dim(self) -> int:
        return self.settings.dim

    def frame_count(self, num_samples: int) -> int:
        return conv_frame_count(self.settings.conv_layers, num_samples)

    def extract(self, wav: torch.Tensor) -> torch.Tensor:
        """wav: 1-D float tensor at 16 kHz -> float32 features [frames, dim] on self.device."""
        if not isinstance(wav, torch.Tensor) or wav.dim() != 1 or not wav.is_floating_point():
            raise AudioError("HuBERT input must be a 1-D float waveform tensor")
        if self.frame_count(wav.numel()) == 0:
            raise AudioError(f"{wav.numel()} samples are too short for one HuBERT frame")
        with torch.inference_mode():
            x = wav.to(self.device, torch.float32)
            if self.settings.normalize:
                x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5)
            hidden = self._model(input_values=x[None].to(self.dtype)).last_hidden_state[0]
            return hidden.float()


def load_hubert(
    path: Path, device: torch.device | str = "cpu", dtype: Precision = "float32"
) -> HubertFeatureReader:
    """Load mhubert_base_25hz.pt (converted or legacy fairseq format), verified strictly.

    ``dtype`` is the precision the model runs in; features come out in float32 either way.
    """
    path = Path(path)
    model_cfg, task_cfg, weights = _read_checkpoint(path)
    settings = parse_settings(path, model_cfg, task_cfg)
    weights = {key: value for key, value in weights.items() if key not in TRAINING_ONLY_KEYS}
    check_state_dict(
        path,
        weights,
        fairseq_shapes(settings),
        optional={"mask_emb": (settings.dim,)},  # masking vector: training only
        what="model weights",
    )
    weights.pop("mask_emb", None)
    model = build_model(settings)
    model.load_state_dict(to_hf_state(weights, settings), strict=True, assign=True)
    if settings.layer_norm_first:
        # Pre-LN encoders apply encoder.layer_norm after the last layer only; the reference
        # stops at layer 11 before reaching it.
        model.encoder.layer_norm = nn.Identity()
    target = torch.device(device)
    model.to(target).eval()
    cast_transformer(model, model.encoder, dtype)
    add_yield_points(model.feature_extractor.conv_layers, model.encoder.layers)
    return HubertFeatureReader(model, settings, target)
