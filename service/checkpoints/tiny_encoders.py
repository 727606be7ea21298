"""Seeded random speech-encoder checkpoints in exactly the official file formats.

size="tiny" gives minute models for tests and demos (a 10 s file encodes in well under a second on
CPU); size="official" gives the real geometry with random weights, for benchmarks. The parameter
names are listed here from docs/format.md#speech-components (fairseq names for HuBERT),
independently of the loaders, so a loader that expects other names fails against these files.
Same seed -> byte-identical files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from service.checkpoints.layout import CheckpointLayout

HUBERT_VOCAB = 500
PITCH_BINS = 64
STYLE_LABELS = 100
W2V2_KERNELS = (10, 3, 3, 3, 3, 2, 2)
W2V2_STRIDES = (5, 2, 2, 2, 2, 2, 2)


@dataclass(frozen=True)
class Geometry:
    hubert_conv: int
    hubert_dim: int
    hubert_ffn: int
    hubert_heads: int
    hubert_pos: int
    hubert_pos_groups: int
    hubert_final_dim: int
    vq_width: int
    vq_depth: int
    vq_emb: int
    w2v_conv: int
    w2v_dim: int
    w2v_ffn: int
    w2v_heads: int
    w2v_layers: int
    w2v_pos: int
    w2v_pos_groups: int
    w2v_proj: int


SIZES = {
    "tiny": Geometry(
        hubert_conv=32,
        hubert_dim=48,
        hubert_ffn=96,
        hubert_heads=2,
        hubert_pos=16,
        hubert_pos_groups=4,
        hubert_final_dim=16,
        vq_width=16,
        vq_depth=2,
        vq_emb=16,
        w2v_conv=32,
        w2v_dim=32,
        w2v_ffn=64,
        w2v_heads=2,
        w2v_layers=2,
        w2v_pos=16,
        w2v_pos_groups=4,
        w2v_proj=16,
    ),
    "official": Geometry(
        hubert_conv=512,
        hubert_dim=768,
        hubert_ffn=3072,
        hubert_heads=12,
        hubert_pos=128,
        hubert_pos_groups=16,
        hubert_final_dim=256,
        vq_width=32,
        vq_depth=4,
        vq_emb=128,
        w2v_conv=512,
        w2v_dim=768,
        w2v_ffn=3072,
        w2v_heads=12,
        w2v_layers=12,
        w2v_pos=128,
        w2v_pos_groups=16,
        w2v_proj=256,
    ),
}
HUBERT_LAYERS = 12


class Weights:
    """Ordered state dict filled from one seeded generator."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self.state: dict[str, torch.Tensor] = {}

    def normal(self, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> None:
        self.state[name] = torch.randn(shape, generator=self.generator) * std + mean

    def uniform(self, name: str, shape: tuple[int, ...]) -> None:
        self.state[name] = torch.rand(shape, generator=self.generator)

    def linear(self, name: str, out_dim: int, in_dim: int, bias_std: float = 0.02) -> None:
        self.normal(f"{name}.weight", (out_dim, in_dim), 1 / math.sqrt(in_dim))
        self.normal(f"{name}.bias", (out_dim,), bias_std)

    def norm(self, name: str, dim: int) -> None:
        """LayerNorm/GroupNorm affine parameters near identity."""
        self.normal(f"{name}.weight", (dim,), 0.1, mean=1.0)
        self.normal(f"{name}.bias", (dim,), 0.1)

    def conv(self, name: str, out_dim: int, in_dim: int, kernel: int, *, bias: bool) -> None:
        # He scaling keeps activations O(1) through stacks of GELU/ReLU convs.
        self.normal(f"{name}.weight", (out_dim, in_dim, kernel), math.sqrt(2 / (in_dim * kernel)))
        if bias:
            self.normal(f"{name}.bias", (out_dim,), 0.02)

    def weight_normed_conv(self, name: str, dim: int, groups: int, kernel: int) -> None:
        """Pos conv with weight norm over dim 2; g sized for unit-variance output."""
        self.normal(
            f"{name}.weight_g",
            (1, 1, kernel),
            0.1 * math.sqrt(dim / kernel),
            mean=math.sqrt(dim / kernel),
        )
        self.normal(f"{name}.weight_v", (dim, dim // groups, kernel), 1.0)
        self.normal(f"{name}.bias", (dim,), 0.02)

    def attention_layer(self, prefix: str, names: dict[str, str], dim: int, ffn: int) -> None:
        for proj in ("k_proj", "v_proj", "q_proj"):
            self.linear(f"{prefix}.{names['attn']}.{proj}", dim, dim)
        # Random attention is nearly uniform, i.e. it adds the same vector to every frame; a
        # small output projection stops a deep stack from washing out per-frame differences.
        self.normal(f"{prefix}.{names['attn']}.out_proj.weight", (dim, dim), 0.1 / math.sqrt(dim))
        self.normal(f"{prefix}.{names['attn']}.out_proj.bias", (dim,), 0.02)
        self.norm(f"{prefix}.{names['attn_norm']}", dim)
        self.linear(f"{prefix}.{names['fc1']}", ffn, dim)
        self.linear(f"{prefix}.{names['fc2']}", dim, ffn)
        self.norm(f"{prefix}.final_layer_norm", dim)


def hubert_conv_layers_text(dim: int) -> str:
    """The 25 Hz extractor, written the way fairseq configs spell it."""
    return f"[({dim},10,5)] + [({dim},3,2)] * 4 + [({dim},2,2)] * 3"


def hubert_checkpoint(g: Geometry, generator: torch.Generator) -> dict:
    w = Weights(generator)
    w.uniform("mask_emb", (g.hubert_dim,))
    kernels = (10, 3, 3, 3, 3, 2, 2, 2)
    channels = 1
    for i, kernel in enumerate(kernels):
        w.conv(f"feature_extractor.conv_layers.{i}.0", g.hubert_conv, channels, kernel, bias=False)
        if i == 0:
            w.norm("feature_extractor.conv_layers.0.2", g.hubert_conv)
        channels = g.hubert_conv
    w.norm("layer_norm", g.hubert_conv)
    w.linear("post_extract_proj", g.hubert_dim, g.hubert_conv)
    w.weight_normed_conv("encoder.pos_conv.0", g.hubert_dim, g.hubert_pos_groups, g.hubert_pos)
    w.norm("encoder.layer_norm", g.hubert_dim)
    names = {"attn": "self_attn", "attn_norm": "self_attn_layer_norm", "fc1": "fc1", "fc2": "fc2"}
    for n in range(HUBERT_LAYERS):
        w.attention_layer(f"encoder.layers.{n}", names, g.hubert_dim, g.hubert_ffn)
    symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [str(i) for i in range(HUBERT_VOCAB)]
    w.normal("label_embs_concat", (len(symbols), g.hubert_final_dim), 1.0)
    w.linear("final_proj", g.hubert_final_dim, g.hubert_dim)
    return {
        "model_cfg": hubert_model_cfg(g),
        "task_cfg": {
            "_name": "hubert_pretraining",
            "data": "/checkpoint/data/mhubert",
            "labels": ["km"],
            "label_rate": 25.0,
            "sample_rate": 16000,
            "normalize": False,
            "enable_padding": False,
            "max_sample_size": 250000,
            "min_sample_size": 32000,
            "random_crop": True,
            "pad_audio": False,
        },
        "model_weight": w.state,
        "dictionaries_symbols": [symbols],
    }


def hubert_model_cfg(g: Geometry) -> dict:
    return {
        "_name": "hubert",
        "label_rate": 25.0,
        "extractor_mode": "default",
        "encoder_layers": HUBERT_LAYERS,
        "encoder_embed_dim": g.hubert_dim,
        "encoder_ffn_embed_dim": g.hubert_ffn,
        "encoder_attention_heads": g.hubert_heads,
        "activation_fn": "gelu",
        "layer_type": "transformer",
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05,
        "dropout_input": 0.1,
        "dropout_features": 0.1,
        "final_dim": g.hubert_final_dim,
        "untie_final_proj": False,
        "layer_norm_first": False,
        "conv_feature_layers": hubert_conv_layers_text(g.hubert_conv),
        "conv_bias": False,
        "logit_temp": 0.1,
        "target_glu": False,
        "feature_grad_mult": 0.1,
        "mask_length": 10,
        "mask_prob": 0.8,
        "mask_selection": "static",
        "conv_pos": g.hubert_pos,
        "conv_pos_groups": g.hubert_pos_groups,
        "conv_pos_batch_norm": False,
        "latent_temp": [2.0, 0.5, 0.999995],
        "skip_masked": False,
        "skip_nomask": False,
        "checkpoint_activations": False,
        "required_seq_len_multiple": 2,
    }


def quantizer_checkpoint(g: Geometry, generator: torch.Generator) -> dict:
    dim = upstream = g.hubert_dim
    outputs = HUBERT_VOCAB + 1
    margin = upstream - outputs  # negative for tiny models: floor division rounds down
    hidden1, hidden2 = dim - margin // 4, dim - margin // 2
    w = Weights(generator)
    w.linear("0", hidden1, dim, bias_std=0.0)
    w.linear("2", hidden2, hidden1, bias_std=0.0)
    w.linear("4", outputs, hidden2, bias_std=0.0)
    cfg = {"vocab_size": HUBERT_VOCAB, "dim": dim, "upstream_dim": upstream}
    return {"model_cfg": cfg, "model_weight": w.state}


def vqvae_config(g: Geometry) -> dict:
    stack = {
        "input_emb_width": 2,
        "output_emb_width": g.vq_emb,
        "levels": 1,
        "downs_t": [4],
        "strides_t": [2],
        "width": g.vq_width,
        "depth": g.vq_depth,
        "m_conv": 1.0,
        "dilation_growth_rate": 3,
    }
    return {
        "encoder_params": stack,
        "decoder_params": {**stack, "reverse_decoder_dilation": True},
        "vq_params": {"l_bins": PITCH_BINS, "emb_width": g.vq_emb, "mu": 0.99, "levels": 1},
        "features": "norm_f0_interp,vuv",
        "speaker_norm": False,
        "sampling_rate": 16000,
        "hop_length": 80,
    }


def _resnet(w: Weights, prefix: str, width: int, depth: int) -> None:
    for j in range(depth):
        w.conv(f"{prefix}.model.{j}.model.1", width, width, 3, bias=True)
        # Small residual branches keep the stack close to its skip path.
        w.normal(f"{prefix}.model.{j}.model.3.weight", (width, width, 1), 0.3 / math.sqrt(width))
        w.normal(f"{prefix}.model.{j}.model.3.bias", (width,), 0.02)


def vqvae_checkpoint(g: Geometry, generator: torch.Generator) -> dict:
    w = Weights(generator)
    width, emb, blocks = g.vq_width, g.vq_emb, 4
    encoder = "encoder.level_blocks.0.model"
    for b in range(blocks):
        channels = 2 if b == 0 else width
        w.conv(f"{encoder}.{b}.0", width, channels, 4, bias=True)
        if b == 0:
            # Raw F0 is in Hz (tens after mean removal): shrink its input weights.
            w.state[f"{encoder}.0.0.weight"][:, 0] /= 50.0
        _resnet(w, f"{encoder}.{b}.1", width, g.vq_depth)
    w.conv(f"{encoder}.{blocks}", emb, width, 3, bias=True)
    w.normal("vq.level_blocks.0.k", (PITCH_BINS, emb), 1.0)
    decoder = "decoder.level_blocks.0.model"
    w.conv(f"{decoder}.0", width, emb, 3, bias=True)
    for b in range(blocks):
        _resnet(w, f"{decoder}.{b + 1}.0", width, g.vq_depth)
        out = emb if b == blocks - 1 else width
        # ConvTranspose1d weights are [in, out, kernel].
        w.normal(f"{decoder}.{b + 1}.1.weight", (width, out, 4), math.sqrt(1 / (width * 4)))
        w.normal(f"{decoder}.{b + 1}.1.bias", (out,), 0.02)
    w.conv("decoder.out", 2, emb, 3, bias=True)
    return {"model": w.state}


def style_config(g: Geometry) -> dict:
    """An HF Wav2Vec2Config for sequence classification, as saved by save_pretrained."""
    return {
        "activation_dropout": 0.0,
        "apply_spec_augment": True,
        "architectures": ["Wav2Vec2ForSequenceClassification"],
        "attention_dropout": 0.1,
        "bos_token_id": 1,
        "classifier_proj_size": g.w2v_proj,
        "conv_bias": False,
        "conv_dim": [g.w2v_conv] * len(W2V2_KERNELS),
        "conv_kernel": list(W2V2_KERNELS),
        "conv_stride": list(W2V2_STRIDES),
        "do_stable_layer_norm": False,
        "eos_token_id": 2,
        "feat_extract_activation": "gelu",
        "feat_extract_norm": "group",
        "feat_proj_dropout": 0.1,
        "final_dropout": 0.0,
        "hidden_act": "gelu",
        "hidden_dropout": 0.1,
        "hidden_size": g.w2v_dim,
        "id2label": {str(i): f"LABEL_{i}" for i in range(STYLE_LABELS)},
        "label2id": {f"LABEL_{i}": i for i in range(STYLE_LABELS)},
        "initializer_range": 0.02,
        "intermediate_size": g.w2v_ffn,
        "layer_norm_eps": 1e-05,
        "layerdrop": 0.05,
        "mask_feature_length": 10,
        "mask_feature_prob": 0.0,
        "mask_time_length": 10,
        "mask_time_prob": 0.05,
        "model_type": "wav2vec2",
        "num_attention_heads": g.w2v_heads,
        "num_conv_pos_embedding_groups": g.w2v_pos_groups,
        "num_conv_pos_embeddings": g.w2v_pos,
        "num_feat_extract_layers": len(W2V2_KERNELS),
        "num_hidden_layers": g.w2v_layers,
        "pad_token_id": 0,
        "use_weighted_layer_sum": False,
        "vocab_size": 32,
    }


def style_weights(g: Geometry, generator: torch.Generator) -> dict[str, torch.Tensor]:
    w = Weights(generator)
    w.uniform("wav2vec2.masked_spec_embed", (g.w2v_dim,))
    channels = 1
    for i, kernel in enumerate(W2V2_KERNELS):
        prefix = f"wav2vec2.feature_extractor.conv_layers.{i}"
        w.conv(f"{prefix}.conv", g.w2v_conv, channels, kernel, bias=False)
        if i == 0:
            w.norm(f"{prefix}.layer_norm", g.w2v_conv)
        channels = g.w2v_conv
    w.norm("wav2vec2.feature_projection.layer_norm", g.w2v_conv)
    w.linear("wav2vec2.feature_projection.projection", g.w2v_dim, g.w2v_conv)
    w.weight_normed_conv(
        "wav2vec2.encoder.pos_conv_embed.conv", g.w2v_dim, g.w2v_pos_groups, g.w2v_pos
    )
    w.norm("wav2vec2.encoder.layer_norm", g.w2v_dim)
    names = {
        "attn": "attention",
        "attn_norm": "layer_norm",
        "fc1": "feed_forward.intermediate_dense",
        "fc2": "feed_forward.output_dense",
    }
    for n in range(g.w2v_layers):
        w.attention_layer(f"wav2vec2.encoder.layers.{n}", names, g.w2v_dim, g.w2v_ffn)
    w.linear("projector", g.w2v_proj, g.w2v_dim)
    # Large logits so that the pooled windows do not all fall into one class.
    w.normal("classifier.weight", (STYLE_LABELS, g.w2v_proj), 3.0)
    w.normal("classifier.bias", (STYLE_LABELS,), 0.0)
    return w.state


def _save_torch(obj: object, path: Path, progress: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    progress(f"wrote {path}")


def _save_text(text: str, path: Path, progress: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    progress(f"wrote {path}")


def write_encoders(
    layout: CheckpointLayout,
    *,
    seed: int = 0,
    size: str = "tiny",
    progress: Callable[[str], None] = print,
) -> None:
    """Write HuBERT + quantizer, F0 VQ-VAE and style encoder files under layout.speech_dir."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    g = SIZES[size]

    # One generator per file, so that each file depends only on the seed and its own geometry.
    def generator(offset: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed * 16 + offset)

    _save_torch(hubert_checkpoint(g, generator(0)), layout.hubert, progress)
    _save_torch(quantizer_checkpoint(g, generator(1)), layout.hubert_quantizer, progress)
    config = yaml.safe_dump(vqvae_config(g), sort_keys=False)
    _save_text(config, layout.pitch_dir / "config.yaml", progress)
    _save_torch(vqvae_checkpoint(g, generator(2)), layout.pitch_dir / "model.pt", progress)
    style = json.dumps(style_config(g), indent=2, sort_keys=True) + "\n"
    _save_text(style, layout.style_dir / "config.json", progress)
    _save_torch(style_weights(g, generator(3)), layout.style_dir / "pytorch_model.bin", progress)
