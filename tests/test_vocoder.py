"""HiFi-GAN unit vocoder: loading, input preparation, one-shot and streaming synthesis."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from service.checkpoints.layout import BASE, EXPRESSIVE, CheckpointLayout
from service.checkpoints.tiny_vocoder import write_vocoders
from service.errors import CheckpointError
from service.speech.incremental import FIRST_STEP_FRAMES
from service.speech.streaming import StreamingVocoder
from service.speech.torch_files import fold_weight_norm
from service.speech.vocoder import (
    SHAPE_BUCKET_FRAMES,
    FrameCodes,
    UnitVocoder,
    load_vocoder,
    shape_bucket,
    upsample_codes,
)
from tests.support.threads import torch_threads

HOP = 640


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions run fastest on one thread, above all on a busy shared machine."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> CheckpointLayout:
    root = tmp_path_factory.mktemp("checkpoints")
    result = CheckpointLayout(root)
    write_vocoders(result, seed=0, progress=lambda _: None)
    return result


@pytest.fixture(scope="module")
def base(layout: CheckpointLayout) -> UnitVocoder:
    return load_vocoder(layout.vocoder_dir(BASE))


@pytest.fixture(scope="module")
def expressive(layout: CheckpointLayout) -> UnitVocoder:
    return load_vocoder(layout.vocoder_dir(EXPRESSIVE), default_style=None)


def random_codes(seed: int, count: int, high: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, high, count).tolist()


# ------------------------------------------------------------------ an independent forward pass


def folded(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """w = g * v / ||v||, norm over all axes but 0 (docs/format.md#unit-vocoder)."""
    g, v = state[f"{name}.weight_g"], state[f"{name}.weight_v"]
    norms = torch.sqrt((v**2).sum(dim=(1, 2), keepdim=True))
    return g * v / norms


def spec_durations(state: dict[str, torch.Tensor], cfg: dict, units: list[int]) -> list[int]:
    k = cfg["dur_predictor_params"]["var_pred_kernel_size"]
    hidden = cfg["dur_predictor_params"]["var_pred_hidden_dim"]
    x = state["dict.weight"][torch.tensor(units)].T[None]
    h = F.conv1d(
        x,
        state["dur_predictor.conv1.0.weight"],
        state["dur_predictor.conv1.0.bias"],
        padding=(k - 1) // 2,
    ).relu()
    h = F.layer_norm(
        h.transpose(1, 2),
        (hidden,),
        state["dur_predictor.ln1.weight"],
        state["dur_predictor.ln1.bias"],
    ).transpose(1, 2)
    h = F.conv1d(
        h, state["dur_predictor.conv2.0.weight"], state["dur_predictor.conv2.0.bias"], padding=1
    ).relu()
    h = F.layer_norm(
        h.transpose(1, 2),
        (hidden,),
        state["dur_predictor.ln2.weight"],
        state["dur_predictor.ln2.bias"],
    )
    log_d = (h @ state["dur_predictor.proj.weight"].T + state["dur_predictor.proj.bias"]).view(-1)
    return [max(1, int(torch.round(torch.exp(v) - 1))) for v in log_d]


def spec_resblock(
    state: dict, name: str, x: torch.Tensor, k: int, dilations: list[int]
) -> torch.Tensor:
    for m, d in enumerate(dilations):
        t = F.conv1d(
            F.leaky_relu(x, 0.1),
            folded(state, f"{name}.convs1.{m}"),
            state[f"{name}.convs1.{m}.bias"],
            dilation=d,
            padding=(k * d - d) // 2,
        )
        t = F.conv1d(
            F.leaky_relu(t, 0.1),
            folded(state, f"{name}.convs2.{m}"),
            state[f"{name}.convs2.{m}.bias"],
            padding=(k - 1) // 2,
        )
        x = x + t
    return x


def spec_generator(state: dict, cfg: dict, x: torch.Tensor) -> torch.Tensor:
    x = F.conv1d(x, folded(state, "conv_pre"), state["conv_pre.bias"], padding=3)
    kernels = list(zip(cfg["resblock_kernel_sizes"], cfg["resblock_dilation_sizes"], strict=True))
    for i, (u, k) in enumerate(
        zip(cfg["upsample_rates"], cfg["upsample_kernel_sizes"], strict=True)
    ):
        x = F.conv_transpose1d(
            F.leaky_relu(x, 0.1),
            folded(state, f"ups.{i}"),
            state[f"ups.{i}.bias"],
            stride=u,
            padding=(k - u) // 2,
        )
        outs = [
            spec_resblock(state, f"resblocks.{i * len(kernels) + j}", x, kr, dil)
            for j, (kr, dil) in enumerate(kernels)
        ]
        x = sum(outs) / len(kernels)
    x = F.conv1d(
        F.leaky_relu(x, 0.01), folded(state, "conv_post"), state["conv_post.bias"], padding=3
    )
    return torch.tanh(x).view(-1)


def spec_synthesize(
    directory: Path,
    units: list[int],
    pitch: list[int] | None,
    style: list[int] | None,
    speaker: int,
    global_style: int | None,
    dur_pred: bool,
) -> np.ndarray:
    """Spec 2.6 written out with plain tensor ops on the files (no service model code)."""
    cfg = json.loads((directory / "config.json").read_text())
    state = torch.load(directory / "generator.pt", weights_only=True)["generator"]
    n = len(units)
    if dur_pred:
        durations = spec_durations(state, cfg, units)
        index = [i for i, d in enumerate(durations) for _ in range(d)]
        frame_pitch = None if pitch is None else [pitch[i] for i in index]
        frame_style = None if style is None else [style[i] for i in index]
    else:
        index = list(range(n))
        r_pitch = round(cfg.get("f0_hop_size", 1) / cfg["code_hop_size"])
        r_style = round(cfg.get("style_hop_size", 1) / cfg["code_hop_size"])
        frame_pitch = (
            None if pitch is None else [pitch[min(i // r_pitch, len(pitch) - 1)] for i in index]
        )
        frame_style = (
            None if style is None else [style[min(i // r_style, len(style) - 1)] for i in index]
        )
    frames = len(index)
    parts = [state["dict.weight"][torch.tensor([units[i] for i in index])]]
    if frame_pitch is not None:
        parts.append(state["f0_dict.weight"][torch.tensor(frame_pitch)])
    if frame_style is not None:
        parts.append(state["style_dict.weight"][torch.tensor(frame_style)])
    parts.append(state["spkr.weight"][speaker].expand(frames, -1))
    if global_style is not None:
        parts.append(state["style.weight"][global_style].expand(frames, -1))
    x = torch.cat(parts, dim=1).T[None]
    with torch.no_grad():
        return spec_generator(state, cfg, x).numpy()


@pytest.mark.parametrize("dim", [0, 2])  # HiFi-GAN's convs; HuBERT's positional conv
def test_fold_weight_norm_matches_torch(dim: int) -> None:
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(6, 8, 5), dim=dim)
    with torch.no_grad():
        conv.parametrizations.weight.original0.uniform_(0.5, 2.0)
    g = conv.parametrizations.weight.original0.detach()
    v = conv.parametrizations.weight.original1.detach()
    torch.testing.assert_close(fold_weight_norm(g, v, dim=dim), conv.weight.detach())


def test_base_matches_spec_forward_with_duration_prediction(base, layout):
    units = random_codes(1, 40, 500)
    got = base.synthesize(units, speaker=1)
    want = spec_synthesize(layout.vocoder_dir(BASE), units, None, None, 1, 8, True)
    assert got.dtype == np.float32 and got.ndim == 1
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dur_pred", [True, False])
def test_expressive_matches_spec_forward(expressive, layout, dur_pred):
    units = random_codes(2, 60, 500)
    pitch = random_codes(3, 60 if dur_pred else 30, 64)
    style = random_codes(4, 60 if dur_pred else 3, 100)
    got = expressive.synthesize(units, pitch, style, speaker=3, dur_pred=dur_pred)
    want = spec_synthesize(layout.vocoder_dir(EXPRESSIVE), units, pitch, style, 3, None, dur_pred)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_global_style_changes_base_output(base):
    units = random_codes(5, 20, 500)
    default = base.synthesize(units)
    assert np.array_equal(default, base.synthesize(units, global_style=8))
    assert not np.allclose(default, base.synthesize(units, global_style=3))


# ------------------------------------------------------------------ input preparation


def test_output_length_is_frames_times_hop(base, expressive):
    units = random_codes(6, 50, 500)
    durations = base.durations(units)
    assert len(durations) == 50
    assert min(durations) >= 1 and len(set(durations)) > 1  # the tiny predictor varies
    assert len(base.synthesize(units)) == sum(durations) * HOP
    assert len(base.synthesize(units, dur_pred=False)) == 50 * HOP
    raw = expressive.synthesize(units, random_codes(7, 25, 64), [5, 6], dur_pred=False)
    assert len(raw) == 50 * HOP
    assert base.hop_length == HOP and base.sample_rate == 16000


def test_deduplication_rule(base):
    units = [5, 5, 5, 9, 9, 5, 12, 12]
    collapsed = [5, 9, 5, 12]
    # Collapsed only with duration prediction and when the caller says they are not yet.
    assert np.array_equal(base.synthesize(units, deduplicated=False), base.synthesize(collapsed))
    assert len(base.synthesize(units)) == sum(base.durations(units)) * HOP
    assert len(base.synthesize(units, dur_pred=False, deduplicated=False)) == len(units) * HOP


def test_negative_units_are_dropped_after_deduplication(base):
    assert np.array_equal(base.synthesize([5, -1, 7]), base.synthesize([5, 7]))
    # [5, -1, 5] has no consecutive repeat, so both 5s survive de-duplication.
    assert np.array_equal(base.synthesize([5, -1, 5], deduplicated=False), base.synthesize([5, 5]))


def test_code_forms_are_equivalent(base):
    units = [3, 14, 15, 92, 65]
    want = base.synthesize(units)
    assert np.array_equal(base.synthesize("3 14 15 92 65"), want)
    assert np.array_equal(base.synthesize(np.array(units)), want)
    assert np.array_equal(base.synthesize(torch.tensor(units)), want)


def test_empty_units_give_empty_audio(base, expressive):
    assert base.synthesize([]).shape == (0,)
    assert base.synthesize([-1, -1]).shape == (0,)
    assert expressive.synthesize([], [], [], dur_pred=False).shape == (0,)


def test_upsampling_rule():
    assert upsample_codes([1, 2, 3], 2, 7, "pitch") == [1, 1, 2, 2, 3, 3, 3]  # pad with last
    assert upsample_codes([1, 2, 3], 2, 5, "pitch") == [1, 1, 2, 2, 3]  # truncate
    assert upsample_codes([4], 25, 30, "style") == [4] * 30
    with pytest.raises(ValueError, match="at most 2"):
        upsample_codes([1, 2], 2, 7, "pitch")  # |2*2 - 7| = 3 > 2
    with pytest.raises(ValueError, match="at most 25"):
        upsample_codes([1, 2, 3], 25, 40, "style")  # |75 - 40| > 25


def test_upsampling_precondition_in_synthesis(expressive):
    units = random_codes(8, 20, 500)
    with pytest.raises(ValueError, match="pitch"):
        expressive.synthesize(units, [1] * 7, [1], dur_pred=False)
    with pytest.raises(ValueError, match="style"):
        expressive.synthesize(units, [1] * 10, [1, 2, 3], dur_pred=False)


def test_duration_prediction_requires_aligned_pitch_and_style(expressive):
    units = random_codes(9, 10, 500)
    with pytest.raises(ValueError, match="9 pitch codes for 10 units"):
        expressive.synthesize(units, [1] * 9, [1] * 10)
    with pytest.raises(ValueError, match="style"):
        expressive.synthesize(units, [1] * 10, [1] * 4)
    with pytest.raises(ValueError, match="pitch"):
        expressive.synthesize(units, None, [1] * 10)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"speaker": 4}, "speaker 4"),
        ({"speaker": -1}, "valid speakers are 0..3"),
        ({"global_style": 12}, "valid styles are 0..11"),
    ],
)
def test_out_of_range_ids(base, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        base.synthesize([1, 2, 3], **kwargs)


def test_out_of_range_codes(base, expressive):
    with pytest.raises(ValueError, match="unit 501 .* 0..500"):
        base.synthesize([1, 501])
    with pytest.raises(ValueError, match="pitch code 64"):
        expressive.synthesize([1, 2], [0, 64], [0, 0])
    with pytest.raises(ValueError, match="no pitch-code table"):
        base.synthesize([1, 2], [0, 1])
    with pytest.raises(ValueError, match="speaker 9"):
        StreamingVocoder(base, speaker=9)


def test_vocoder_attributes(base, expressive):
    assert base.speakers == ["ex01_default", "ex02_default", "ex03_default", "ex04_default"]
    assert len(base.styles) == 12 and base.styles[8] == "conv-default"
    assert expressive.styles == []
    assert (base.multistyle, base.has_pitch, base.has_style_codes) == (True, False, False)
    assert (expressive.multistyle, expressive.has_pitch, expressive.has_style_codes) == (
        False,
        True,
        True,
    )
    assert base.has_duration and expressive.has_duration
    assert base.num_speakers == 4
    assert (expressive.hubert_to_f0, expressive.hubert_to_style) == (2, 25)


# ------------------------------------------------------------------ strict loading


@pytest.fixture
def vocoder_copy(layout: CheckpointLayout, tmp_path: Path) -> Path:
    target = tmp_path / "vocoder"
    shutil.copytree(layout.vocoder_dir(EXPRESSIVE), target)
    return target


def rewrite_state(directory: Path, edit) -> None:
    path = directory / "generator.pt"
    blob = torch.load(path, weights_only=True)
    edit(blob["generator"])
    torch.save(blob, path)


def rewrite_config(directory: Path, edit) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def expect_checkpoint_error(directory: Path, file: str, *needles: str) -> None:
    with pytest.raises(CheckpointError) as info:
        load_vocoder(directory)
    assert info.value.path == directory / file
    for needle in needles:
        assert needle in str(info.value)


def test_missing_key(vocoder_copy):
    rewrite_state(vocoder_copy, lambda s: s.pop("resblocks.2.convs2.1.weight_v"))
    expect_checkpoint_error(
        vocoder_copy, "generator.pt", "missing keys", "resblocks.2.convs2.1.weight_v"
    )


def test_unexpected_key(vocoder_copy):
    rewrite_state(vocoder_copy, lambda s: s.update({"f0_quant_embed.weight": torch.zeros(3, 16)}))
    expect_checkpoint_error(
        vocoder_copy, "generator.pt", "unexpected keys", "f0_quant_embed.weight"
    )


def test_unfolded_weight_is_unexpected(vocoder_copy):
    def edit(state):
        state["conv_pre.weight"] = state.pop("conv_pre.weight_v")

    rewrite_state(vocoder_copy, edit)
    expect_checkpoint_error(vocoder_copy, "generator.pt", "conv_pre.weight_v", "conv_pre.weight")


def test_wrong_shape(vocoder_copy):
    rewrite_state(vocoder_copy, lambda s: s.update({"f0_dict.weight": torch.zeros(32, 16)}))
    expect_checkpoint_error(
        vocoder_copy, "generator.pt", "wrong shapes", "f0_dict.weight", "(64, 16)"
    )


def test_missing_generator_entry(vocoder_copy):
    torch.save({"model": {}}, vocoder_copy / "generator.pt")
    expect_checkpoint_error(vocoder_copy, "generator.pt", "'generator'")


def test_corrupt_generator(vocoder_copy):
    (vocoder_copy / "generator.pt").write_bytes(b"not a checkpoint")
    expect_checkpoint_error(vocoder_copy, "generator.pt", "cannot be read")


@pytest.mark.parametrize("name", ["config.json", "generator.pt", "speakers.txt"])
def test_missing_file(vocoder_copy, name):
    (vocoder_copy / name).unlink()
    expect_checkpoint_error(vocoder_copy, name, "missing")


def test_bad_json(vocoder_copy):
    (vocoder_copy / "config.json").write_text("{not json")
    expect_checkpoint_error(vocoder_copy, "config.json", "JSON")


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda c: c.pop("upsample_rates"), ["'upsample_rates'", "missing"]),
        (lambda c: c.pop("embedding_dim"), ["'embedding_dim'", "missing"]),
        (lambda c: c.update(model_in_dim=48), ["'model_in_dim'", "48", "64"]),
        (lambda c: c.update(f0=True), ["continuous F0 conditioning is not supported"]),
        (lambda c: c.update(resblock_dilation_sizes=[[1, 3]]), ["exactly 3"]),
        (lambda c: c.pop("f0_hop_size"), ["'f0_hop_size'"]),
        (lambda c: c["dur_predictor_params"].pop("var_pred_kernel_size"), ["var_pred_kernel_size"]),
        (lambda c: c.update(upsample_kernel_sizes=[11, 8]), ["'upsample_kernel_sizes'"]),
    ],
)
def test_bad_config(vocoder_copy, edit, needles):
    rewrite_config(vocoder_copy, edit)
    expect_checkpoint_error(vocoder_copy, "config.json", *needles)


def test_same_seed_gives_identical_files(layout, tmp_path):
    again = CheckpointLayout(tmp_path / "again")
    other = CheckpointLayout(tmp_path / "other")
    write_vocoders(again, seed=0, progress=lambda _: None)
    write_vocoders(other, seed=1, progress=lambda _: None)
    for variant in (BASE, EXPRESSIVE):
        files = sorted(p.name for p in layout.vocoder_dir(variant).iterdir())
        assert files == sorted(p.name for p in again.vocoder_dir(variant).iterdir())
        for name in files:
            first = (layout.vocoder_dir(variant) / name).read_bytes()
            assert first == (again.vocoder_dir(variant) / name).read_bytes(), name
        generator = (layout.vocoder_dir(variant) / "generator.pt").read_bytes()
        assert generator != (other.vocoder_dir(variant) / "generator.pt").read_bytes()


def test_official_config_geometry():
    from service.checkpoints.tiny_vocoder import GEOMETRIES, vocoder_config

    config = vocoder_config(GEOMETRIES["official"], expressive=True)
    assert math.prod(config["upsample_rates"]) == 640
    assert config["upsample_initial_channel"] == 512
    assert config["resblock_kernel_sizes"] == [3, 7, 11]
    assert config["model_in_dim"] == 4 * config["embedding_dim"] == 512


# ------------------------------------------------------------------ receptive fields


def test_derived_frame_context_is_exact(base):
    """Changing one frame changes exactly the samples of frames [j - right, j + left]."""
    left, right = base.frame_context
    conditioning = base.conditioning(2, None)
    units = random_codes(10, 40, 500)
    changed = list(units)
    changed[20] = (units[20] + 1) % 500
    before = base.render(FrameCodes(units, None, None), conditioning)
    after = base.render(FrameCodes(changed, None, None), conditioning)
    touched = np.nonzero(before != after)[0]
    assert touched[0] // HOP == 20 - right
    assert touched[-1] // HOP == 20 + left


def test_derived_duration_context_is_exact(base):
    left, right = base.duration_context
    units = random_codes(11, 30, 500)
    changed = list(units)
    changed[15] = (units[15] + 7) % 500
    with torch.inference_mode():
        a = base.model.log_durations(torch.tensor([units]))[0]
        b = base.model.log_durations(torch.tensor([changed]))[0]
    touched = torch.nonzero(a != b).view(-1).tolist()
    assert (touched[0], touched[-1]) == (15 - right, 15 + left)


# ------------------------------------------------------------------ streaming


def push_sizes(pattern: str, total: int, seed: int) -> list[int]:
    if pattern == "one":
        return [1] * total
    if pattern == "all":
        return [total]
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < total:
        sizes.append(int(rng.integers(1, 8)))
    return sizes


def stream_aligned(stream: StreamingVocoder, units, pitch, style, sizes) -> list[np.ndarray]:
    chunks, start = [], 0
    for size in sizes:
        end = start + size
        chunks += stream.push(
            units[start:end],
            None if pitch is None else pitch[start:end],
            None if style is None else style[start:end],
        )
        start = end
    return chunks + stream.finish()


def assert_same_audio(chunks: list[np.ndarray], want: np.ndarray) -> None:
    got = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want), initial=0.0) < 1e-4


# Both ways of rendering a stream's chunks: windows with their receptive field, or one
# incremental conv stack per stream (service/speech/incremental.py).
WAYS = pytest.mark.parametrize("incremental", [False, True], ids=["windows", "incremental"])


@WAYS
@pytest.mark.parametrize("pattern", ["one", "random", "all"])
def test_streaming_base_equals_one_shot(base, pattern, incremental):
    units = random_codes(12, 90, 500)
    want = base.synthesize(units, speaker=0, global_style=5)
    stream = StreamingVocoder(
        base,
        speaker=0,
        global_style=5,
        first_chunk_units=6,
        chunk_units=9,
        incremental=incremental,
    )
    chunks = stream_aligned(stream, units, None, None, push_sizes(pattern, 90, 13))
    assert len(chunks) > 3
    assert_same_audio(chunks, want)


@WAYS
@pytest.mark.parametrize("pattern", ["one", "random"])
def test_streaming_expressive_with_durations_equals_one_shot(expressive, pattern, incremental):
    units, pitch, style = (
        random_codes(14, 70, 500),
        random_codes(15, 70, 64),
        random_codes(16, 70, 100),
    )
    want = expressive.synthesize(units, pitch, style)
    stream = StreamingVocoder(
        expressive, first_chunk_units=10, chunk_units=8, incremental=incremental
    )
    chunks = stream_aligned(stream, units, pitch, style, push_sizes(pattern, 70, 17))
    assert len(chunks) > 3
    assert_same_audio(chunks, want)


@WAYS
@pytest.mark.parametrize("pattern", ["one", "random"])
def test_streaming_expressive_raw_units_equals_one_shot(expressive, pattern, incremental):
    # 81 units, 41 pitch codes (12.5 Hz) and 4 style codes (1 Hz): padding and truncation apply.
    units, pitch, style = (
        random_codes(18, 81, 500),
        random_codes(19, 41, 64),
        random_codes(20, 4, 100),
    )
    want = expressive.synthesize(units, pitch, style, dur_pred=False)
    stream = StreamingVocoder(
        expressive, dur_pred=False, first_chunk_units=10, chunk_units=12, incremental=incremental
    )
    chunks, start = [], 0
    for size in push_sizes(pattern, 81, 21):
        end = min(start + size, 81)
        chunks += stream.push(
            units[start:end],
            pitch[math.ceil(start / 2) : math.ceil(end / 2)],
            style[math.ceil(start / 25) : math.ceil(end / 25)],
        )
        start = end
    chunks += stream.finish()
    assert len(chunks) > 3
    assert_same_audio(chunks, want)


@WAYS
def test_streaming_deduplicates_across_pushes(base, incremental):
    units = [4, 4, 4, 8, 8, -1, 8, 3, 3, 3, 3, 9] * 5
    want = base.synthesize(units, deduplicated=False)
    stream = StreamingVocoder(
        base, deduplicated=False, first_chunk_units=3, chunk_units=4, incremental=incremental
    )
    assert_same_audio(stream_aligned(stream, units, None, None, push_sizes("one", 60, 0)), want)


def push_until_audio(stream: StreamingVocoder, units: list[int]) -> tuple[int, list[np.ndarray]]:
    """Push one unit at a time; return how many went in before audio came out, and the audio."""
    for count, unit in enumerate(units, start=1):
        chunks = stream.push([unit])
        if chunks:
            return count, chunks
    raise AssertionError("no audio before the end of the units")


def test_first_chunk_timing_with_durations(base):
    first, units = 10, random_codes(22, 60, 500)
    stream = StreamingVocoder(base, first_chunk_units=first, chunk_units=5)
    left, right = base.frame_context
    _, dur_right = base.duration_context
    ends = np.cumsum(base.durations(units))
    # Frames of unit j are final once unit j + dur_right has arrived; the chunk also needs
    # `right` frames of look-ahead past its last frame.
    last_needed = int(np.argmax(ends >= ends[first - 1] + right))
    expected = last_needed + 1 + dur_right
    count, chunks = push_until_audio(stream, units)
    assert count == expected
    assert count <= stream.latency_units
    assert len(chunks[0]) == ends[first - 1] * HOP
    later = stream.push(units[count : count + 20])
    assert len(later[0]) == (ends[first + 4] - ends[first - 1]) * HOP  # then 5 units per chunk


@pytest.mark.parametrize("first", [3, 10])
def test_first_chunk_timing_incremental(base, first):
    # The first units' frames and the decoder's lag past them (its right padding, at most the
    # receptive field's right half), rounded up to whole FIRST_STEP_FRAMES (the lengths whose
    # kernels are built), and the durations' context.
    units = random_codes(22, 60, 500)
    stream = StreamingVocoder(base, first_chunk_units=first, chunk_units=5, incremental=True)
    decoder = base.incremental_decoder()
    _, dur_right = base.duration_context
    ends = np.cumsum(base.durations(units))
    needed = ends[first - 1] + -(-decoder.lag // HOP)
    frames = -(-needed // FIRST_STEP_FRAMES) * FIRST_STEP_FRAMES
    last_needed = int(np.argmax(ends >= frames))
    count, chunks = push_until_audio(stream, units)
    assert count == last_needed + 1 + dur_right
    assert count <= stream.latency_units
    assert [len(c) for c in chunks] == [frames * HOP - decoder.lag]


def test_first_chunk_timing_without_durations(expressive):
    first, units = 10, random_codes(23, 60, 500)
    _, right = expressive.frame_context
    stream = StreamingVocoder(expressive, dur_pred=False, first_chunk_units=first, chunk_units=7)
    assert stream.push([], random_codes(24, 30, 64), random_codes(25, 3, 100)) == []
    count, chunks = push_until_audio(stream, units)
    assert count == first + right == stream.latency_units
    assert [len(c) for c in chunks] == [first * HOP]
    later = stream.push(units[count:])
    assert all(len(c) == 7 * HOP for c in later)
    rest = stream.finish()
    total = sum(len(c) for c in chunks + later + rest)
    assert total == 60 * HOP


def test_streaming_reports_length_errors_at_finish(expressive):
    stream = StreamingVocoder(expressive)
    stream.push([1, 2, 3], [4, 5], [6, 7, 8])
    with pytest.raises(ValueError, match="2 pitch codes for 3 units"):
        stream.finish()


@WAYS
def test_streaming_empty_and_closed(base, incremental):
    stream = StreamingVocoder(base, incremental=incremental)
    assert stream.push([]) == []
    assert stream.finish() == []
    with pytest.raises(RuntimeError):
        stream.push([1])


@pytest.mark.parametrize("pattern", ["one", "random", "all"])
def test_coalesced_chunks_equal_one_shot(base, pattern):
    units = random_codes(26, 120, 500)
    want = base.synthesize(units, speaker=0, global_style=5)
    stream = StreamingVocoder(
        base, speaker=0, global_style=5, first_chunk_units=6, chunk_units=9, max_chunk_units=40
    )
    chunks = stream_aligned(stream, units, None, None, push_sizes(pattern, 120, 27))
    assert_same_audio(chunks, want)


def test_a_stream_that_fell_behind_catches_up_in_larger_chunks(base):
    units = random_codes(28, 150, 500)
    ends = np.cumsum(base.durations(units))
    stream = StreamingVocoder(base, first_chunk_units=5, chunk_units=5, max_chunk_units=30)
    count, first = push_until_audio(stream, units)
    assert [len(c) for c in first] == [ends[4] * HOP]  # the first chunk stays small
    assert stream.slice_units() == stream.chunk_cap() == 5  # a worker pushes one chunk's worth
    # 100 units arrive at once: each chunk takes at least as many units as the stream emitted
    # before it (at least 5: the cap doubles), plus the ready units that still fit in the
    # padded length of that window's forward pass (free audio), and at most 30.
    later = stream.push(units[count : count + 100])
    chunk_ends = np.cumsum([len(c) // HOP for c in [*first, *later]])
    unit_counts = np.diff(np.searchsorted(ends, chunk_ends) + 1, prepend=0)
    assert unit_counts[:5].tolist() == [5, 12, 30, 30, 28]
    assert len(later) < 100 // 5 and max(unit_counts) == 30
    left, right = base.frame_context
    emitted = 5
    for count_k in unit_counts[1:-1]:
        start_frame = max(0, ends[emitted - 1] - left)
        smallest = min(30, max(5, emitted))
        padded = shape_bucket(ends[emitted + smallest - 1] + right - start_frame)
        # No more compute than the chunk's smallest size needs: its pass's padded length.
        assert ends[emitted + count_k - 1] + right - start_frame <= padded
        assert count_k >= smallest
        emitted += count_k
    assert stream.slice_units() == 30
    rest = stream.push(units[count + 100 :]) + stream.finish()
    assert sum(len(c) for c in first + later + rest) == ends[-1] * HOP


def test_coalescing_needs_a_cap_of_at_least_chunk_units(base):
    with pytest.raises(ValueError, match="max_chunk_units"):
        StreamingVocoder(base, chunk_units=10, max_chunk_units=9)


def test_bfloat16_vocoder_stays_close_to_float32(layout):
    units = random_codes(29, 80, 500)
    exact = load_vocoder(layout.vocoder_dir(BASE))
    fast = load_vocoder(layout.vocoder_dir(BASE), dtype="bfloat16")
    assert fast.compute_dtype == torch.bfloat16
    assert fast.model.dict.weight.dtype == torch.float32  # embeddings and durations stay exact
    assert fast.durations(units) == exact.durations(units)
    want = exact.synthesize(units)
    got = fast.synthesize(units)
    assert got.dtype == np.float32 and got.shape == want.shape
    # bfloat16 keeps 8 bits of mantissa: an error floor around -40 dB of the signal (measured
    # at official size in docs/benchmarks.md), never exact.
    assert 1e-4 < rms(got - want) < 0.03 * rms(want)
    # The streaming path runs the same bfloat16 windows.
    stream = StreamingVocoder(fast, first_chunk_units=6, chunk_units=9)
    streamed = np.concatenate(stream_aligned(stream, units, None, None, push_sizes("one", 80, 0)))
    assert rms(streamed - want) < 0.03 * rms(want)


def rms(signal: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(signal, dtype=np.float64))))


def test_padding_leaves_the_samples_past_the_receptive_field(base):
    left, right = base.frame_context
    codes = random_codes(30, 60, 500)
    frames = FrameCodes(codes, None, None)
    conditioning = base.conditioning(0, None)
    alone = base.render(frames, conditioning)
    shifted = base.render(frames, conditioning, pad_left=13)
    assert shifted.shape == alone.shape
    assert np.abs(shifted[left * HOP :] - alone[left * HOP :]).max() < 1e-4
    [padded] = base.render_batch([(frames, conditioning)], 64 + 32)
    assert len(padded) == 60 * HOP
    assert np.abs(padded[: (60 - right) * HOP] - alone[: (60 - right) * HOP]).max() < 1e-4


def test_warm_up_runs_every_bucketed_length(base):
    assert shape_bucket(1) == shape_bucket(SHAPE_BUCKET_FRAMES) == SHAPE_BUCKET_FRAMES
    assert shape_bucket(SHAPE_BUCKET_FRAMES + 1) == 2 * SHAPE_BUCKET_FRAMES
    assert base.warm_up(2 * SHAPE_BUCKET_FRAMES + 5) == 3
