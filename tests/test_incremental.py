"""The incremental conv stack (service/speech/incremental.py) against one-shot decoding."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import service.speech.incremental as incremental
from service.checkpoints.tiny_vocoder import GEOMETRIES, vocoder_config
from service.speech.hifigan import CodeHiFiGAN
from service.speech.incremental import (
    FIRST_STEP_FRAMES,
    MAX_STEP_FRAMES,
    STEP_FRAMES,
    IncrementalDecoder,
)
from service.speech.streaming import StreamingVocoder
from service.speech.vocoder import SHAPE_BUCKET_FRAMES, UnitVocoder, parse_config, shape_bucket
from tests.support.threads import torch_threads


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def random_model(channels: int, seed: int = 0, **changes: object) -> CodeHiFiGAN:
    """The official geometry (three residual blocks per stage, the official kernels, dilations
    and up-sampling) with `channels` initial channels and random weights."""
    geometry = dataclasses.replace(
        GEOMETRIES["official"], upsample_initial_channel=channels, **changes
    )
    config = parse_config(vocoder_config(geometry, expressive=False), Path("config.json"))
    torch.manual_seed(seed)
    return CodeHiFiGAN(config).eval()


@pytest.fixture(scope="module")
def narrow() -> CodeHiFiGAN:
    return random_model(32)


def frames_input(model: CodeHiFiGAN, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, model.config.model_in_dim, count, generator=generator)


def decode_in_steps(model: CodeHiFiGAN, x: torch.Tensor, steps: list[int]) -> torch.Tensor:
    decoder = IncrementalDecoder(model)
    outputs, fed = [], 0
    with torch.inference_mode():
        for index, step in enumerate(steps):
            final = index == len(steps) - 1
            out = decoder.decode(x[:, :, fed : fed + step], final=final)
            fed += step
            outputs.append(out)
            if not final:
                # What comes out is exactly what `released` promises.
                assert sum(o.shape[2] for o in outputs) == decoder.released(fed)
    return torch.cat(outputs, 2)


def random_steps(total: int, seed: int, largest: int) -> list[int]:
    rng = np.random.default_rng(seed)
    steps: list[int] = []
    while sum(steps) < total:
        steps.append(int(min(rng.integers(1, largest + 1), total - sum(steps))))
    return steps


@pytest.mark.parametrize(
    "steps",
    [[1] * 90, random_steps(90, 1, 12), random_steps(90, 2, 150), [16] * 5 + [10], [90]],
    ids=["one-frame", "small", "large", "blocks", "whole"],
)
def test_any_steps_give_the_one_shot_samples(narrow: CodeHiFiGAN, steps: list[int]) -> None:
    x = frames_input(narrow, 90, seed=3)
    with torch.inference_mode():
        want = narrow.decode(x)
    got = decode_in_steps(narrow, x, steps)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5


def test_an_odd_upsampling_padding_ends_like_one_shot() -> None:
    # kernel - stride odd (3 - 2 here): the end keeps one column more than the start drops.
    odd = random_model(32, upsample_kernel_sizes=[11, 8, 8, 8, 3])
    x = frames_input(odd, 50, seed=10)
    with torch.inference_mode():
        want = odd.decode(x)
    got = decode_in_steps(odd, x, [16, 16, 18])
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5


def test_a_failed_step_stops_the_stream(
    narrow: CodeHiFiGAN, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some layers took the step and others did not: later audio would be wrong, not late.
    decoder = IncrementalDecoder(narrow)
    x = frames_input(narrow, 48, seed=11)

    def broken(conv: torch.nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        raise MemoryError("out of memory")

    with torch.inference_mode():
        decoder.decode(x[:, :, :16])
        with monkeypatch.context() as patch:
            patch.setattr(incremental, "_valid_conv", broken)
            with pytest.raises(MemoryError):
                decoder.decode(x[:, :, 16:32])
        with pytest.raises(RuntimeError, match="failed step"):
            decoder.decode(x[:, :, 32:])


def test_lag_is_the_right_half_of_the_receptive_field(narrow: CodeHiFiGAN) -> None:
    decoder = IncrementalDecoder(narrow)
    _, right = narrow.frame_context()
    hop = narrow.hop_length
    # The receptive field is counted in whole frames; the lag is its exact sample count.
    assert (right - 1) * hop < decoder.lag <= right * hop
    assert decoder.released(right - 1) == 0
    assert decoder.released(100) == 100 * hop - decoder.lag


def test_the_kept_state_is_a_few_columns_per_layer(narrow: CodeHiFiGAN) -> None:
    # A kept tail that is a view holds the whole step's activations it was cut from (about
    # 200 MB per stream at official size): every kept tensor must own just its columns.
    decoder = IncrementalDecoder(narrow)
    x = frames_input(narrow, 4 * MAX_STEP_FRAMES, seed=4)
    with torch.inference_mode():
        for start in range(0, x.shape[2], MAX_STEP_FRAMES):
            decoder.decode(x[:, :, start : start + MAX_STEP_FRAMES])
    kept = list(kept_tensors(decoder))
    assert kept
    for tensor in kept:
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    # Each layer keeps at most its kernel's reach (or a residual path's delay): far below one
    # step's columns at the 16 kHz stage.
    widest = max(tensor.shape[2] for tensor in kept)
    assert widest < MAX_STEP_FRAMES * narrow.hop_length / 10


def kept_tensors(decoder: IncrementalDecoder) -> Iterator[torch.Tensor]:
    layers = [decoder.pre, decoder.post]
    for stage in decoder.stages:
        yield from (t for t in (stage.up.pending,) if t is not None)
        yield from (delay.held for delay in stage.outputs if delay.held is not None)
        for block in stage.blocks:
            for conv1, conv2, skip in block.pairs:
                layers += [conv1, conv2]
                if skip.held is not None:
                    yield skip.held
    yield from (layer.held for layer in layers if layer.held is not None)


def test_decoding_after_the_end_is_refused(narrow: CodeHiFiGAN) -> None:
    decoder = IncrementalDecoder(narrow)
    with torch.inference_mode():
        decoder.decode(frames_input(narrow, 20, seed=5), final=True)
        with pytest.raises(RuntimeError):
            decoder.decode(frames_input(narrow, 1, seed=6))


def test_bfloat16_channels_last_stays_close_to_float32(narrow: CodeHiFiGAN) -> None:
    fast = random_model(32)
    fast.cast_conv_stack(torch.bfloat16, channels_last=True)
    x = frames_input(narrow, 70, seed=7)
    with torch.inference_mode():
        want = narrow.decode(x)
    got = decode_in_steps(fast, x.to(torch.bfloat16), random_steps(70, 8, 40)).float()
    error = (got - want).pow(2).mean().sqrt().item()
    assert error < 0.03 * want.pow(2).mean().sqrt().item()


def test_channels_last_convolutions_get_channels_last_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Joins and zero columns keep the time-major layout, so no convolution but the first (whose
    # input is the embedding) reorders its input on a step.
    fast = random_model(32)
    fast.cast_conv_stack(torch.bfloat16, channels_last=True)
    layouts: list[bool] = []
    plain = incremental._valid_conv

    def recording(conv: torch.nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        layouts.append(x.stride(1) == 1 or x.shape[1] == 1)  # one channel: either layout
        return plain(conv, x)

    monkeypatch.setattr(incremental, "_valid_conv", recording)
    decoder = IncrementalDecoder(fast)
    x = frames_input(fast, MAX_STEP_FRAMES + 2 * STEP_FRAMES, seed=12).to(torch.bfloat16)
    with torch.inference_mode():
        decoder.decode(x[:, :, :MAX_STEP_FRAMES])  # a stream's first call (it pads its layers)
        for start in range(MAX_STEP_FRAMES, x.shape[2], STEP_FRAMES):
            layouts.clear()
            decoder.decode(x[:, :, start : start + STEP_FRAMES])
            assert layouts[0] is False and all(layouts[1:])


def test_streams_use_only_the_warmed_up_lengths(
    narrow: CodeHiFiGAN, monkeypatch: pytest.MonkeyPatch
) -> None:
    # oneDNN builds kernels per input length (slow the first time): a stream's chunks feed
    # whole blocks, in calls `warm_up` has run, and only its last window goes elsewhere.
    seen: set[tuple[int, int]] = set()
    plain = incremental._valid_conv

    def recording(conv: torch.nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        seen.add((id(conv), x.shape[2]))
        return plain(conv, x)

    monkeypatch.setattr(incremental, "_valid_conv", recording)
    vocoder = UnitVocoder(narrow, ["0", "1"], [], torch.device("cpu"), None)
    # Every first call that releases audio, and every later call length (whole blocks).
    decoder = IncrementalDecoder(narrow)
    lengths = range(FIRST_STEP_FRAMES, MAX_STEP_FRAMES + 1, FIRST_STEP_FRAMES)
    firsts = sum(decoder.released(length) > 0 for length in lengths)
    left, right = vocoder.frame_context
    windows = shape_bucket(left + right + STEP_FRAMES) // SHAPE_BUCKET_FRAMES  # last windows
    assert vocoder.warm_up_incremental() == firsts + MAX_STEP_FRAMES // STEP_FRAMES + windows
    warmed = set(seen)
    units = np.random.default_rng(9).integers(0, 100, 300).tolist()
    for first_chunk_units in (5, 10, 20, 60):  # 60: a first chunk over MAX_STEP_FRAMES
        seen.clear()
        stream = StreamingVocoder(
            vocoder, dur_pred=False, first_chunk_units=first_chunk_units, incremental=True
        )
        chunks = []
        for start in range(0, len(units), 7):
            chunks += stream.push(units[start : start + 7])
        chunks += stream.finish()
        assert seen and seen <= warmed
        with torch.inference_mode():
            want = vocoder.synthesize(units, dur_pred=False)
        assert np.abs(np.concatenate(chunks) - want).max() < 1e-4
