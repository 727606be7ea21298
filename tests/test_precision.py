"""service/speech/precision.py: the channels-last convolution layout and when it is used."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from service.checkpoints.layout import BASE, CheckpointLayout
from service.speech.hubert import load_hubert
from service.speech.precision import (
    ChannelsLastConv1d,
    ChannelsLastConvTranspose1d,
    Float32Island,
    channels_last_pays,
    set_channels_last,
)
from service.speech.style import load_style_encoder
from service.speech.vocoder import load_vocoder


def _time_major(x: torch.Tensor) -> bool:
    return x.stride(1) == 1 and x.shape[1] > 1


@pytest.mark.parametrize(
    ("kwargs", "length"),
    [
        ({"kernel_size": 7, "padding": 3}, 40),
        ({"kernel_size": 3, "padding": 5, "dilation": 5}, 33),
        ({"kernel_size": 3, "stride": 2}, 41),  # HuBERT's feature extractor
        ({"kernel_size": 10, "stride": 5, "bias": False}, 80),
        ({"kernel_size": 5, "padding": 2, "groups": 4}, 25),
    ],
)
def test_channels_last_conv1d_equals_conv1d(kwargs: dict, length: int) -> None:
    torch.manual_seed(0)
    plain = nn.Conv1d(8, 12, **kwargs)
    fast = copy.deepcopy(plain)
    set_channels_last(fast, True)
    assert type(fast) is ChannelsLastConv1d
    x = torch.randn(2, 8, length)
    with torch.inference_mode():
        want = plain(x)
        got = fast(x)
        # A time-major input (what the previous channels-last layer hands on) gives the same.
        again = fast(x.transpose(1, 2).contiguous().transpose(1, 2))
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, want, atol=1e-5, rtol=1e-5)
    assert _time_major(got)  # the next convolution reads it without a copy


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 7, "padding": 3},  # HiFi-GAN's conv_pre / conv_post
        {"kernel_size": 11, "padding": 25, "dilation": 5},  # a dilated resblock conv
        {"kernel_size": 3, "stride": 2, "bias": False},  # HuBERT's feature extractor
    ],
)
def test_channels_last_conv1d_in_bfloat16_stays_close_to_float32(kwargs: dict) -> None:
    # bfloat16 is where the layout is used (`channels_last_pays`); a CPU kernel that got a
    # geometry wrong would be far off, not off by rounding (see Float32Island).
    torch.manual_seed(3)
    exact = nn.Conv1d(32, 48, **kwargs)
    fast = copy.deepcopy(exact).to(torch.bfloat16)
    set_channels_last(fast, True)
    x = torch.randn(2, 32, 120)
    with torch.inference_mode():
        want = exact(x)
        got = fast(x.to(torch.bfloat16)).float()
    assert float((got - want).norm() / want.norm()) < 1e-2


def test_channels_last_convolutions_take_unbatched_input_like_the_plain_ones() -> None:
    torch.manual_seed(4)
    conv, transposed = nn.Conv1d(4, 6, 3, padding=1), nn.ConvTranspose1d(4, 6, 4, stride=2)
    fast_conv, fast_transposed = copy.deepcopy(conv), copy.deepcopy(transposed)
    set_channels_last(fast_conv, True)
    set_channels_last(fast_transposed, True)
    x = torch.randn(4, 10)
    with torch.inference_mode():
        torch.testing.assert_close(fast_conv(x), conv(x))
        torch.testing.assert_close(fast_transposed(x), transposed(x))


@pytest.mark.parametrize(("kernel", "stride"), [(11, 5), (8, 4), (4, 2)])  # HiFi-GAN's
def test_channels_last_conv_transpose1d_equals_conv_transpose1d(kernel: int, stride: int) -> None:
    torch.manual_seed(1)
    plain = nn.ConvTranspose1d(16, 8, kernel, stride=stride, padding=(kernel - stride) // 2)
    fast = copy.deepcopy(plain)
    set_channels_last(fast, True)
    assert type(fast) is ChannelsLastConvTranspose1d
    x = torch.randn(2, 16, 19)
    with torch.inference_mode():
        want, got = plain(x), fast(x)
        sized = fast(x, output_size=[want.shape[-1] + 1])
        want_sized = plain(x, output_size=[want.shape[-1] + 1])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sized, want_sized, atol=1e-5, rtol=1e-5)


def test_set_channels_last_round_trip_keeps_weights_and_skips_float32_islands() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv1d(4, 4, 3, padding=1),
        nn.Sequential(nn.ConvTranspose1d(4, 4, 4, stride=2, padding=1)),
        Float32Island(nn.Conv1d(4, 4, 3, padding=1)),
    )
    before = {name: value.clone() for name, value in model.state_dict().items()}
    set_channels_last(model, True)
    assert type(model[0]) is ChannelsLastConv1d
    assert type(model[1][0]) is ChannelsLastConvTranspose1d
    assert type(model[2].inner) is nn.Conv1d  # islands keep their own layout
    assert not model[0].weight.is_contiguous()  # time-major memory, same values
    set_channels_last(model, False)
    assert type(model[0]) is nn.Conv1d and type(model[1][0]) is nn.ConvTranspose1d
    assert model[0].weight.is_contiguous()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_channels_last_is_used_for_bfloat16_on_a_cpu_only() -> None:
    assert channels_last_pays("bfloat16", torch.device("cpu"))
    assert not channels_last_pays("float32", torch.device("cpu"))
    assert not channels_last_pays("bfloat16", torch.device("cuda"))  # not measured there


def _conv_types(module: nn.Module) -> set[type]:
    return {type(m) for m in module.modules() if isinstance(m, nn.Conv1d | nn.ConvTranspose1d)}


def test_float32_models_keep_the_plain_layout(layout: CheckpointLayout) -> None:
    # The defaults' results must keep matching the reference's convolutions bit for bit.
    vocoder = load_vocoder(layout.vocoder_dir(BASE))
    assert _conv_types(vocoder.model) == {nn.Conv1d, nn.ConvTranspose1d}
    hubert = load_hubert(layout.hubert)
    assert _conv_types(hubert._model) == {nn.Conv1d}


def test_bfloat16_models_run_their_convolutions_channels_last(layout: CheckpointLayout) -> None:
    vocoder = load_vocoder(layout.vocoder_dir(BASE), dtype="bfloat16")
    stack = (vocoder.model.conv_pre, vocoder.model.ups, vocoder.model.resblocks)
    assert set().union(*(_conv_types(part) for part in stack)) == {
        ChannelsLastConv1d,
        ChannelsLastConvTranspose1d,
    }
    assert _conv_types(vocoder.model.dur_predictor) == {nn.Conv1d}  # float32, exact durations
    hubert = load_hubert(layout.hubert, dtype="bfloat16")
    assert _conv_types(hubert._model.feature_extractor) == {ChannelsLastConv1d}
    assert _conv_types(hubert._model.encoder.pos_conv_embed) == {nn.Conv1d}  # float32 island
    style = load_style_encoder(layout.style_dir, dtype="bfloat16")._model.wav2vec2
    assert _conv_types(style.feature_extractor) == {ChannelsLastConv1d}
    assert isinstance(style.encoder.pos_conv_embed, Float32Island)  # kept as it was


def test_channels_last_bfloat16_vocoder_matches_the_plain_bfloat16_one(
    layout: CheckpointLayout,
) -> None:
    units = [(7 * n) % 100 for n in range(60)]
    fast = load_vocoder(layout.vocoder_dir(BASE), dtype="bfloat16")
    got = fast.synthesize(units)
    set_channels_last(fast.model, False)
    want = fast.synthesize(units)
    assert got.shape == want.shape
    # Both round to bfloat16 between layers; only the kernels' summation order may differ.
    assert float(abs(got - want).max()) < 0.01
