"""Yield points between model layers (service/speech/yielding.py).

A long call that steps aside at its yield points must give bit for bit what it gives without
them, even when other model work runs on its thread in between (a stream's chunk, which is what
the speech worker runs there).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.checkpoints.layout import EXPRESSIVE, CheckpointLayout
from service.speech.hubert import OUTPUT_LAYER
from service.speech.pipeline import SpeechStack
from service.speech.yielding import stepping_aside, yield_point


@pytest.fixture(scope="module")
def stack(layout: CheckpointLayout) -> SpeechStack:
    stack = SpeechStack(layout, EXPRESSIVE)
    stack.load()
    return stack


@pytest.fixture(scope="module")
def wav(speech_file: Path) -> np.ndarray:
    audio, rate = sf.read(speech_file, dtype="float32")
    assert rate == 16000
    return audio[: 4 * rate]


def interleaving(stack: SpeechStack, calls: list[str]) -> Callable[[], None]:
    """A step-aside function that renders other audio in another thread and waits for it, as
    the speech worker does when a long call hands its place to a stream's chunk."""
    other_units = stack.encode_units(np.cos(np.arange(8000, dtype=np.float32) / 5))

    def step_aside() -> None:
        calls.append("stepped aside")
        with ThreadPoolExecutor(1) as other:
            other.submit(stack.decode, other_units, speaker=1).result()

    return step_aside


def test_an_encode_stepping_aside_between_layers_gives_the_same_units(
    stack: SpeechStack, wav: np.ndarray
) -> None:
    alone = stack.encode_units(wav)
    calls: list[str] = []
    with stepping_aside(interleaving(stack, calls)):
        interleaved = stack.encode_units(wav)
    assert interleaved == alone
    # HuBERT's conv and transformer layers, FCPE's encoder layers, the style encoder's layers.
    hubert = stack.hubert.settings
    fcpe = len(stack.pitch._fcpe.model.net.encoder_layers)
    style = stack.style._model.config.num_hidden_layers
    assert len(calls) >= len(hubert.conv_layers) + OUTPUT_LAYER + fcpe + style


def test_a_synthesis_stepping_aside_between_layers_gives_the_same_audio(
    stack: SpeechStack,
) -> None:
    units = stack.encode_units(np.sin(np.arange(16000 * 2, dtype=np.float32) / 9))
    alone = stack.decode(units)
    calls: list[str] = []
    with stepping_aside(interleaving(stack, calls)):
        interleaved = stack.decode(units)
    assert np.array_equal(interleaved, alone)
    assert len(calls) >= len(stack.vocoder.model.ups)


def test_yield_points_do_nothing_outside_a_call_that_allows_it(stack: SpeechStack) -> None:
    calls: list[str] = []
    with stepping_aside(lambda: calls.append("stepped aside")):
        yield_point()
        with stepping_aside(lambda: calls.append("inner")):
            yield_point()
        yield_point()  # the outer function is back
    yield_point()
    assert calls == ["stepped aside", "inner", "stepped aside"]
