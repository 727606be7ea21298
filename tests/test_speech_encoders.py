"""Speech encoders (docs/format.md#speech-components) against seeded tiny checkpoints in the
official formats.

The reference computations below are written from docs/format.md with plain torch functions and
read the checkpoint files directly, so they share no code with the loaders under test.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import yaml

from service.checkpoints.layout import BASE, EXPRESSIVE, CheckpointLayout
from service.checkpoints.tiny_encoders import write_encoders
from service.errors import AudioError, CheckpointError
from service.speech.fcpe_compat import spawn_fcpe
from service.speech.hubert import load_hubert
from service.speech.pitch import load_pitch_tokenizer
from service.speech.precision import Float32Island
from service.speech.quantizer import load_quantizer, replace_blanks
from service.speech.style import load_style_encoder

EXAMPLE = Path("/work/shared/data/7143-88743-0029.flac")
if not EXAMPLE.exists():  # the repository's shared/ checkout, wherever it lives
    EXAMPLE = Path(__file__).resolve().parents[1] / "shared" / "data" / EXAMPLE.name
STRIDES_25HZ = (5, 2, 2, 2, 2, 2, 2, 2)  # [(C,10,5)] + [(C,3,2)] * 4 + [(C,2,2)] * 3


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> CheckpointLayout:
    result = CheckpointLayout(tmp_path_factory.mktemp("checkpoints"))
    write_encoders(result, seed=0, progress=quiet)
    return result


@pytest.fixture(scope="module")
def wav() -> torch.Tensor:
    samples, rate = sf.read(EXAMPLE, dtype="float32")
    assert rate == 16000 and samples.shape == (146160,)
    return torch.from_numpy(samples)


@pytest.fixture(scope="module")
def hubert(layout: CheckpointLayout):
    return load_hubert(layout.hubert)


@pytest.fixture(scope="module")
def pitch(layout: CheckpointLayout):
    return load_pitch_tokenizer(layout.pitch_dir)


def read(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def write(content: dict, path: Path) -> Path:
    torch.save(content, path)
    return path


# --- reference HuBERT forward, from docs/format.md#hubert-encoder ------------------------------


def reference_hubert(weights: dict, cfg: dict, wav: torch.Tensor) -> torch.Tensor:
    layer_norm_mode = cfg.get("extractor_mode") == "layer_norm"
    x = wav[None, None]
    for i, stride in enumerate(STRIDES_25HZ):
        conv = f"feature_extractor.conv_layers.{i}"
        x = F.conv1d(x, weights[f"{conv}.0.weight"], weights.get(f"{conv}.0.bias"), stride=stride)
        if layer_norm_mode:  # LayerNorm over channels after every conv
            norm = (weights[f"{conv}.2.1.weight"], weights[f"{conv}.2.1.bias"])
            x = F.layer_norm(x.transpose(1, 2), x.shape[1:2], *norm).transpose(1, 2)
        elif i == 0:  # GroupNorm with one group per channel after the first conv only
            x = F.group_norm(x, x.shape[1], weights[f"{conv}.2.weight"], weights[f"{conv}.2.bias"])
        x = F.gelu(x)
    x = x.transpose(1, 2)
    x = F.layer_norm(x, x.shape[-1:], weights["layer_norm.weight"], weights["layer_norm.bias"])
    x = F.linear(x, weights["post_extract_proj.weight"], weights["post_extract_proj.bias"])
    x = x + reference_pos_conv(weights, cfg, x.transpose(1, 2)).transpose(1, 2)
    pre_ln = cfg.get("layer_norm_first", False)
    if not pre_ln:
        encoder_norm = (weights["encoder.layer_norm.weight"], weights["encoder.layer_norm.bias"])
        x = F.layer_norm(x, x.shape[-1:], *encoder_norm)
    x = x[0]
    for n in range(11):  # layers 0..10; the 11th layer's output is the feature
        x = reference_layer(
            weights, f"encoder.layers.{n}", x, cfg["encoder_attention_heads"], pre_ln
        )
    return x


def reference_pos_conv(weights: dict, cfg: dict, x: torch.Tensor) -> torch.Tensor:
    groups = cfg["conv_pos_groups"]
    if cfg.get("conv_pos_batch_norm"):  # BatchNorm (running statistics) and a plain conv
        bn = "encoder.pos_conv.0"
        x = F.batch_norm(
            x,
            weights[f"{bn}.running_mean"],
            weights[f"{bn}.running_var"],
            weights[f"{bn}.weight"],
            weights[f"{bn}.bias"],
            training=False,
            eps=1e-5,
        )
        kernel, bias = weights["encoder.pos_conv.1.weight"], weights["encoder.pos_conv.1.bias"]
    else:  # weight norm over dim 2: one norm per kernel tap, over the first two axes
        g, v = weights["encoder.pos_conv.0.weight_g"], weights["encoder.pos_conv.0.weight_v"]
        kernel = torch.empty_like(v)
        for j in range(v.shape[2]):
            kernel[:, :, j] = g[0, 0, j] * v[:, :, j] / torch.sqrt((v[:, :, j] ** 2).sum())
        bias = weights["encoder.pos_conv.0.bias"]
    pos = F.conv1d(x, kernel, bias, padding=kernel.shape[2] // 2, groups=groups)
    return F.gelu(pos[:, :, :-1])  # even kernel: the last frame is dropped


def reference_layer(
    w: dict, prefix: str, x: torch.Tensor, heads: int, pre_ln: bool = False
) -> torch.Tensor:
    frames, dim = x.shape
    head_dim = dim // heads

    def linear(name: str, value: torch.Tensor) -> torch.Tensor:
        return F.linear(value, w[f"{prefix}.{name}.weight"], w[f"{prefix}.{name}.bias"])

    def norm(name: str, value: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(value, (dim,), w[f"{prefix}.{name}.weight"], w[f"{prefix}.{name}.bias"])

    def attend(value: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            linear(f"self_attn.{name}", value).reshape(frames, heads, head_dim).transpose(0, 1)
            for name in ("q_proj", "k_proj", "v_proj")
        )
        mixed = torch.softmax(q @ k.transpose(1, 2) * head_dim**-0.5, dim=-1) @ v
        return linear("self_attn.out_proj", mixed.transpose(0, 1).reshape(frames, dim))

    def feed_forward(value: torch.Tensor) -> torch.Tensor:
        return linear("fc2", F.gelu(linear("fc1", value)))

    if pre_ln:
        x = x + attend(norm("self_attn_layer_norm", x))
        return x + feed_forward(norm("final_layer_norm", x))
    h = norm("self_attn_layer_norm", x + attend(x))
    return norm("final_layer_norm", h + feed_forward(h))


# --- reference VQ-VAE encoder, from docs/format.md#pitch-tokenizer -----------------------------


def reference_vq_encoder(weights: dict, cfg: dict, x: torch.Tensor) -> torch.Tensor:
    p = cfg["encoder_params"]
    stride, prefix = p["strides_t"][0], "encoder.level_blocks.0.model"
    for b in range(p["downs_t"][0]):
        block = f"{prefix}.{b}"
        x = F.conv1d(
            x,
            weights[f"{block}.0.weight"],
            weights[f"{block}.0.bias"],
            stride=stride,
            padding=stride // 2,
        )
        for j in range(p["depth"]):
            res = f"{block}.1.model.{j}.model"
            dilation = p["dilation_growth_rate"] ** j
            h = F.conv1d(
                F.relu(x),
                weights[f"{res}.1.weight"],
                weights[f"{res}.1.bias"],
                padding=dilation,
                dilation=dilation,
            )
            x = x + F.conv1d(F.relu(h), weights[f"{res}.3.weight"], weights[f"{res}.3.bias"])
    final = f"{prefix}.{p['downs_t'][0]}"
    return F.conv1d(x, weights[f"{final}.weight"], weights[f"{final}.bias"], padding=1)


def reference_pitch_input(f0: np.ndarray, vuv: np.ndarray, normalize: bool) -> torch.Tensor:
    f0 = f0.copy()
    if normalize:
        f0[f0 != 0] -= f0[vuv != 0].mean()
    return torch.from_numpy(np.stack([f0, vuv]))[None]


# --- writer ----------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(tmp_path: Path, layout: CheckpointLayout) -> None:
    again, other = CheckpointLayout(tmp_path / "a"), CheckpointLayout(tmp_path / "b")
    write_encoders(again, seed=0, progress=quiet)
    write_encoders(other, seed=1, progress=quiet)
    files = sorted(p.relative_to(layout.root) for p in layout.root.rglob("*") if p.is_file())
    assert len(files) == 6
    for name in files:
        assert (again.root / name).read_bytes() == (layout.root / name).read_bytes(), name
    assert (other.root / files[0]).read_bytes() != (layout.root / files[0]).read_bytes()


def test_hubert_file_uses_the_official_key_layout(layout: CheckpointLayout) -> None:
    content = read(layout.hubert)
    assert set(content) == {"model_cfg", "task_cfg", "model_weight", "dictionaries_symbols"}
    cfg, weights = content["model_cfg"], content["model_weight"]
    assert cfg["conv_feature_layers"] == "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 3"
    assert {"label_embs_concat", "final_proj.weight", "final_proj.bias", "mask_emb"} <= set(weights)
    assert content["task_cfg"]["sample_rate"] == 16000
    assert content["dictionaries_symbols"][0][4:] == [str(i) for i in range(500)]


# --- HuBERT ----------------------------------------------------------------------------------


def test_hubert_features_equal_the_spec_forward(layout: CheckpointLayout, hubert, wav) -> None:
    content = read(layout.hubert)
    expected = reference_hubert(content["model_weight"], content["model_cfg"], wav)
    features = hubert.extract(wav)
    assert features.shape == (228, 48) and features.dtype == torch.float32
    torch.testing.assert_close(features, expected, atol=1e-4, rtol=0)


def to_variant_geometry(content: dict) -> None:
    """LayerNorm extractor with conv bias, pre-LN layers, BatchNorm positional conv."""
    cfg, weights = content["model_cfg"], content["model_weight"]
    cfg |= {
        "extractor_mode": "layer_norm",
        "conv_bias": True,
        "layer_norm_first": True,
        "conv_pos_batch_norm": True,
    }
    generator = torch.Generator().manual_seed(7)

    def noise(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * scale

    for i in range(len(STRIDES_25HZ)):
        conv = f"feature_extractor.conv_layers.{i}"
        weights.pop(f"{conv}.2.weight", None)
        weights.pop(f"{conv}.2.bias", None)
        dim = weights[f"{conv}.0.weight"].shape[0]
        weights[f"{conv}.0.bias"] = noise(dim)
        weights[f"{conv}.2.1.weight"] = 1 + noise(dim)
        weights[f"{conv}.2.1.bias"] = noise(dim)
    v = weights.pop("encoder.pos_conv.0.weight_v")
    weights.pop("encoder.pos_conv.0.weight_g")
    dim = v.shape[0]
    weights["encoder.pos_conv.0.weight"] = 1 + noise(dim)
    weights["encoder.pos_conv.0.bias"] = noise(dim)
    weights["encoder.pos_conv.0.running_mean"] = noise(dim)
    weights["encoder.pos_conv.0.running_var"] = 1 + noise(dim).abs()
    weights["encoder.pos_conv.0.num_batches_tracked"] = torch.tensor(1000)
    weights["encoder.pos_conv.1.weight"] = v / math.sqrt(v[0].numel() * 4)
    weights["encoder.pos_conv.1.bias"] = noise(dim)


def test_other_geometries_equal_the_spec_forward(tmp_path: Path, layout: CheckpointLayout, wav):
    content = read(layout.hubert)
    to_variant_geometry(content)
    reader = load_hubert(write(content, tmp_path / "variant.pt"))
    chunk = wav[:48000]
    expected = reference_hubert(content["model_weight"], content["model_cfg"], chunk)
    torch.testing.assert_close(reader.extract(chunk), expected, atol=1e-4, rtol=0)


def test_golden_frame_counts(hubert, wav) -> None:
    assert hubert.hop_length == 640
    assert hubert.frame_count(146160) == 228
    assert hubert.frame_count(1_600_000) == 2499
    assert hubert.extract(wav[:1280]).shape[0] == 1
    with pytest.raises(AudioError):
        hubert.extract(wav[:399])


def test_units_are_varied_on_speech(layout: CheckpointLayout, hubert, wav) -> None:
    units = load_quantizer(layout.hubert_quantizer)(hubert.extract(wav))
    assert units.dtype == torch.int64 and units.shape == (228,)
    assert int(units.min()) >= 0 and int(units.max()) < 500
    assert len(set(units.tolist())) >= 10


def test_legacy_fairseq_formats_give_the_same_features(
    tmp_path: Path, layout: CheckpointLayout, hubert, wav
) -> None:
    content = read(layout.hubert)
    cfg_file = write(
        {
            "args": None,
            "cfg": {"model": content["model_cfg"], "task": content["task_cfg"]},
            "model": content["model_weight"],
            "task_state": {},
        },
        tmp_path / "cfg.pt",
    )
    flat = argparse.Namespace(**{**content["task_cfg"], **content["model_cfg"]})
    args_file = write({"args": flat, "model": content["model_weight"]}, tmp_path / "args.pt")
    expected = hubert.extract(wav[:32000])
    for path in (cfg_file, args_file):
        assert torch.equal(load_hubert(path).extract(wav[:32000]), expected)


def test_task_normalize_standardizes_the_waveform(
    tmp_path: Path, layout: CheckpointLayout, hubert, wav
) -> None:
    content = read(layout.hubert)
    content["task_cfg"]["normalize"] = True
    normalizing = load_hubert(write(content, tmp_path / "norm.pt"))
    chunk = wav[:32000]
    standardized = (chunk - chunk.mean()) / torch.sqrt(chunk.var(unbiased=False) + 1e-5)
    torch.testing.assert_close(normalizing.extract(chunk), hubert.extract(standardized))
    assert not torch.allclose(hubert.extract(chunk), hubert.extract(standardized), atol=1e-3)


def corrupt(layout: CheckpointLayout, tmp_path: Path, change) -> Path:
    content = read(layout.hubert)
    change(content)
    return write(content, tmp_path / "broken.pt")


def rename(weights: dict, old: str, new: str) -> None:
    weights[new] = weights.pop(old)


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        (
            lambda c: rename(
                c["model_weight"], "encoder.layers.3.fc1.weight", "encoder.layers.3.fc_1.weight"
            ),
            ["encoder.layers.3.fc1.weight", "encoder.layers.3.fc_1.weight"],
        ),
        (
            lambda c: c["model_weight"].pop("encoder.layers.11.final_layer_norm.bias"),
            ["missing", "encoder.layers.11.final_layer_norm.bias"],
        ),
        (
            lambda c: c["model_weight"].update({"encoder.extra.weight": torch.zeros(2)}),
            ["unexpected", "encoder.extra.weight"],
        ),
        (
            lambda c: c["model_weight"].update({"layer_norm.bias": torch.zeros(7)}),
            ["layer_norm.bias", "shape"],
        ),
        (lambda c: c.pop("model_cfg"), ["model_cfg"]),
        (lambda c: c["model_cfg"].pop("label_rate"), ["label_rate"]),
        (
            lambda c: c["model_cfg"].update(conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 6"),
            ["hop", "320"],
        ),
        (
            lambda c: c["model_cfg"].update(conv_feature_layers="__import__('os').getcwd()"),
            ["conv_feature_layers"],
        ),
    ],
)
def test_bad_hubert_files_are_rejected(
    tmp_path: Path, layout: CheckpointLayout, change, mentions
) -> None:
    path = corrupt(layout, tmp_path, change)
    with pytest.raises(CheckpointError) as caught:
        load_hubert(path)
    assert str(path) in str(caught.value)
    for word in mentions:
        assert word in str(caught.value)


@pytest.mark.parametrize("loader", [load_hubert, load_quantizer])
def test_missing_and_non_torch_files_are_rejected(tmp_path: Path, loader) -> None:
    with pytest.raises(CheckpointError, match="not found") as caught:
        loader(tmp_path / "absent.pt")
    assert "absent.pt" in str(caught.value)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pt"):
        loader(text)


# --- quantizer -------------------------------------------------------------------------------


def test_blank_replacement_wraps_around() -> None:
    blank = 500
    assert replace_blanks(torch.tensor([blank, blank, 3, 4]), blank).tolist() == [4, 4, 3, 4]
    assert replace_blanks(torch.tensor([1, blank, blank, 2]), blank).tolist() == [1, 1, 1, 2]
    assert replace_blanks(torch.full((5,), blank), blank).tolist() == [blank] * 5


def test_linear_quantizer_replaces_predicted_blanks(tmp_path: Path) -> None:
    # vocab 3, dim = upstream = 4: O = 4, M = 0, so every layer is 4 x 4; identity weights make
    # the argmax of each one-hot frame its own index, and index 3 is the blank.
    eye = torch.eye(4)
    weights = {}
    for i in (0, 2, 4):
        weights |= {f"{i}.weight": eye, f"{i}.bias": torch.zeros(4)}
    cfg = {"vocab_size": 3, "dim": 4, "upstream_dim": 4}
    quantizer = load_quantizer(
        write({"model_cfg": cfg, "model_weight": weights}, tmp_path / "q.pt")
    )
    frames = eye[[3, 3, 1, 2, 3, 0]]
    assert quantizer(frames).tolist() == [0, 0, 1, 2, 2, 0]  # leading blanks wrap around
    assert quantizer(eye[[3, 3]]).tolist() == [3, 3]


def test_quantizer_shapes_use_floor_division(layout: CheckpointLayout) -> None:
    weights = read(layout.hubert_quantizer)["model_weight"]
    # D = U = 48, O = 501, M = -453: M // 4 = -114 and M // 2 = -227 (floor, not truncation).
    assert weights["0.weight"].shape == (162, 48)
    assert weights["2.weight"].shape == (275, 162)
    assert weights["4.weight"].shape == (501, 275)


def test_quantizer_with_a_wrong_shape_is_rejected(tmp_path: Path, layout: CheckpointLayout) -> None:
    content = read(layout.hubert_quantizer)
    content["model_weight"]["2.weight"] = torch.zeros(275, 161)
    path = write(content, tmp_path / "q.pt")
    with pytest.raises(CheckpointError, match=r"2\.weight.*shape") as caught:
        load_quantizer(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("as_numpy", [False, True])
def test_kmeans_format(tmp_path: Path, as_numpy: bool) -> None:
    generator = torch.Generator().manual_seed(3)
    centers = torch.randn(7, 5, generator=generator)
    features = torch.randn(40, 5, generator=generator)
    stored = centers.numpy() if as_numpy else centers
    quantizer = load_quantizer(
        write({"cluster_centers": stored, "n_clusters": 7}, tmp_path / "km.pt")
    )
    assert quantizer(features).tolist() == torch.cdist(features, centers).argmin(dim=1).tolist()
    bad = write({"cluster_centers": centers, "n_clusters": 6}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="n_clusters"):
        load_quantizer(bad)


# --- pitch -----------------------------------------------------------------------------------


def test_fcpe_f0_follows_the_spec_call(pitch, wav) -> None:
    f0, vuv = pitch.extract_f0(wav)
    assert f0.shape == vuv.shape == (146160 // 80 + 1,)
    assert f0.dtype == vuv.dtype == np.float32
    assert set(np.unique(vuv).tolist()) == {0.0, 1.0}
    assert 0.3 < vuv.mean() < 0.9  # read speech: mostly voiced, with pauses
    assert f0.min() >= 50.0 and f0.max() <= 1100.0  # unvoiced frames are interpolated


def test_pitch_encoder_equals_the_spec_forward(layout: CheckpointLayout, pitch, wav) -> None:
    weights = read(layout.pitch_dir / "model.pt")["model"]
    cfg = yaml.safe_load((layout.pitch_dir / "config.yaml").read_text())
    f0, vuv = pitch.extract_f0(wav)
    expected = reference_vq_encoder(weights, cfg, reference_pitch_input(f0, vuv, True))[0].T
    torch.testing.assert_close(pitch.features(f0, vuv), expected, atol=1e-4, rtol=0)
    codebook = weights["vq.level_blocks.0.k"]
    codes = pitch.quantize(f0, vuv)
    assert codes.tolist() == torch.cdist(expected, codebook).argmin(dim=1).tolist()
    assert codes.shape == (114,) and len(set(codes.tolist())) >= 4
    assert pitch(wav).tolist() == codes.tolist()


def test_pitch_without_normalization_and_with_double_width(
    tmp_path: Path, layout: CheckpointLayout, pitch, wav
) -> None:
    cfg = yaml.safe_load((layout.pitch_dir / "config.yaml").read_text())
    content = read(layout.pitch_dir / "model.pt")
    cfg["features"] = "f0_interp,vuv"
    cfg["vq_params"]["emb_width"] //= 2  # encoder output is now twice the codebook width
    codebook = content["model"]["vq.level_blocks.0.k"]
    content["model"]["vq.level_blocks.0.k"] = codebook[:, ::2].contiguous()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    write(content, tmp_path / "model.pt")
    variant = load_pitch_tokenizer(tmp_path)
    f0, vuv = pitch.extract_f0(wav[:48000])
    out = reference_vq_encoder(content["model"], cfg, reference_pitch_input(f0, vuv, False))[0].T
    half = out.shape[1] // 2
    torch.testing.assert_close(
        variant.features(f0, vuv), out[:, :half] + out[:, half:], atol=1e-4, rtol=0
    )


def test_pitch_rejects_bad_files(tmp_path: Path, layout: CheckpointLayout) -> None:
    (tmp_path / "config.yaml").write_text((layout.pitch_dir / "config.yaml").read_text())
    content = read(layout.pitch_dir / "model.pt")
    content["model"].pop("decoder.out.bias")
    write(content, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model\.pt.*decoder\.out\.bias"):
        load_pitch_tokenizer(tmp_path)
    (tmp_path / "config.yaml").write_text("features: f0\n")
    with pytest.raises(CheckpointError, match="config.yaml"):
        load_pitch_tokenizer(tmp_path)
    with pytest.raises(NotImplementedError, match="pyaapt"):
        load_pitch_tokenizer(layout.pitch_dir, extractor="pyaapt")


@pytest.mark.skipif(importlib.util.find_spec("torchaudio") is not None, reason="has torchaudio")
def test_fcpe_works_without_torchaudio_but_never_resamples(pitch, wav) -> None:
    assert "torchaudio" not in sys.modules  # the stand-in does not outlive the import
    fcpe = spawn_fcpe(torch.device("cpu"))
    with pytest.raises(RuntimeError, match="16 kHz"):
        fcpe.infer(wav[None, :8000, None], sr=8000)


# --- style -----------------------------------------------------------------------------------


def test_style_units_per_second(layout: CheckpointLayout, wav) -> None:
    style = load_style_encoder(layout.style_dir)
    units = style(wav)
    assert style.frame_count(146160) == 456 and units.shape == (10,)
    assert style.frame_count(1_600_000) == 4999
    assert int(units.min()) >= 0 and int(units.max()) < 100
    assert len(set(units.tolist())) >= 2
    # The chunk is standardized first, so the gain of the input does not matter.
    assert style(wav * 0.25).tolist() == units.tolist()
    assert style(wav[: 16000 * 3 + 400]).shape == (math.ceil(151 / 50),)


def test_style_matches_transformers_own_loader(layout: CheckpointLayout, wav) -> None:
    from transformers import Wav2Vec2ForSequenceClassification

    reference = Wav2Vec2ForSequenceClassification.from_pretrained(
        layout.style_dir, local_files_only=True
    ).eval()
    x = wav.numpy()
    x = torch.from_numpy((x - x.mean()) / np.sqrt(x.var() + 1e-7))[None]
    with torch.inference_mode():
        projected = reference.projector(reference.wav2vec2(x).last_hidden_state)[0]
        pooled = torch.stack([projected[i : i + 50].mean(0) for i in range(0, len(projected), 50)])
        expected = reference.classifier(pooled).argmax(-1)
    assert load_style_encoder(layout.style_dir)(wav).tolist() == expected.tolist()


def test_style_rejects_missing_weights(tmp_path: Path, layout: CheckpointLayout) -> None:
    (tmp_path / "config.json").write_text((layout.style_dir / "config.json").read_text())
    weights = read(layout.style_dir / "pytorch_model.bin")
    weights.pop("wav2vec2.masked_spec_embed")  # training-only: may be absent
    write(weights, tmp_path / "pytorch_model.bin")
    assert load_style_encoder(tmp_path).num_labels == 100
    weights.pop("classifier.bias")
    write(weights, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*classifier\.bias"):
        load_style_encoder(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json.*not found"):
        load_style_encoder(tmp_path)


# --- accelerator (runs only where one is present) ---------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_encoders_run_on_cuda(layout: CheckpointLayout, hubert, wav) -> None:
    on_gpu = load_hubert(layout.hubert, device="cuda")
    torch.testing.assert_close(on_gpu.extract(wav).cpu(), hubert.extract(wav), atol=1e-3, rtol=0)
    units = load_quantizer(layout.hubert_quantizer, device="cuda")(on_gpu.extract(wav))
    assert units.device.type == "cuda" and units.shape == (228,)
    assert load_pitch_tokenizer(layout.pitch_dir, device="cuda")(wav.cuda()).shape == (114,)
    assert load_style_encoder(layout.style_dir, device="cuda")(wav.cuda()).shape == (10,)


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_pitch_of_unvoiced_audio_is_all_unvoiced(pitch, kind: str) -> None:
    # torchfcpe raises when no frame is voiced; the tokenizer must still give codes.
    noise = 0.01 * torch.randn(16000, generator=torch.Generator().manual_seed(3))
    wav = torch.zeros(16000) if kind == "silence" else noise
    f0, vuv = pitch.extract_f0(wav)
    assert not vuv.any() and not f0.any()
    codes = pitch(wav)
    assert len(codes) == pitch.frame_count(16000)


# --- reduced precision (encoder_dtype) ---------------------------------------------------------


def test_bfloat16_encoders_stay_close_to_float32(layout: CheckpointLayout, hubert, wav) -> None:
    fast = load_hubert(layout.hubert, dtype="bfloat16")
    assert fast.dtype == torch.bfloat16
    want = hubert.extract(wav)
    got = fast.extract(wav)
    assert got.dtype == torch.float32 and got.shape == want.shape
    # 8 bits of mantissa through 12 layers: close, never exact (official size with random
    # weights: 97.4 % of units equal, docs/benchmarks.md "Reduced precision"). The bounds leave
    # room for CPUs that round bfloat16 differently (AMX, AVX512-BF16 or emulated).
    error = float((got - want).norm() / want.norm())
    assert 1e-4 < error < 0.05
    quantizer = load_quantizer(layout.hubert_quantizer)
    assert (quantizer(got) == quantizer(want)).float().mean() > 0.9
    exact_style = load_style_encoder(layout.style_dir)
    fast_style = load_style_encoder(layout.style_dir, dtype="bfloat16")
    assert next(fast_style._model.wav2vec2.parameters()).dtype == torch.bfloat16
    assert next(fast_style._model.classifier.parameters()).dtype == torch.float32
    fast_units, exact_units = fast_style(wav), exact_style(wav)
    assert fast_units.shape == exact_units.shape == (10,)
    assert (fast_units == exact_units).sum() >= 8


def test_bfloat16_hubert_keeps_its_positional_convolution_in_float32(layout) -> None:  # noqa: ANN001
    exact, fast = load_hubert(layout.hubert), load_hubert(layout.hubert, dtype="bfloat16")
    island = fast._model.encoder.pos_conv_embed
    assert isinstance(island, Float32Island)
    for (name, want), got in zip(
        exact._model.encoder.pos_conv_embed.state_dict().items(),
        island.inner.state_dict().values(),
        strict=True,
    ):
        assert got.dtype == torch.float32 and torch.equal(got, want), name  # not rounded


def test_bfloat16_grouped_positional_convolution_runs_in_float32() -> None:
    # torch's CPU bfloat16 grouped convolution is wrong for this geometry (the tiny HuBERT's
    # positional convolution); Float32Island keeps such a layer exact inside a bfloat16 model.
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(48, 48, kernel_size=16, padding=8, groups=4)
    x = torch.randn(1, 48, 228).bfloat16()
    want = conv(x.float())
    island = Float32Island(torch.nn.Conv1d(48, 48, kernel_size=16, padding=8, groups=4))
    island.inner.load_state_dict(conv.state_dict())
    got = island(x)
    assert got.dtype == torch.bfloat16
    assert float((got.float() - want).norm() / want.norm()) < 0.01


def test_the_worker_setting_chooses_the_encoders_precision(layout: CheckpointLayout) -> None:
    from service.speech.pipeline import SpeechStack
    from service.speech_worker.settings import SpeechWorkerSettings

    assert SpeechWorkerSettings().encoder_dtype == "float32"  # the reference's units by default
    chosen = SpeechWorkerSettings(encoder_dtype="bfloat16").encoder_dtype
    stack = SpeechStack(layout, EXPRESSIVE, encoder_dtype=chosen)
    assert stack.hubert.dtype == torch.bfloat16
    assert stack.style._model.wav2vec2.dtype == torch.bfloat16
    assert SpeechStack(layout, BASE).hubert.dtype == torch.float32
