"""Points between a model's layers where a long call lets more urgent work run first.

A whole-turn encode holds the speech worker's inference thread for most of a second at official
size (a long upload for many seconds), and a listener whose reply is playing cannot wait that
long for its next chunk. The speech worker therefore runs encodes and one-shot syntheses with a
step-aside function (`WorkerState.run`, service/speech_worker/state.py). The models call
`yield_point` before each of their layers; there it hands the thread to a chunk whose listener
is about to run out of audio (service/speech_worker/priority.py) and returns once the thread
is back. Nothing is computed differently: the same layers run on the same tensors, only paused
between them, so units and audio are bit for bit what an uninterrupted call gives.

Outside such a call (the CLI, tests, a stream's own chunks) a yield point does nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator

from torch import nn

StepAside = Callable[[], None]

_local = threading.local()


def yield_point() -> None:
    """Let more urgent work run now, if this thread's call was started to allow it."""
    step_aside: StepAside | None = getattr(_local, "step_aside", None)
    if step_aside is not None:
        step_aside()


@contextlib.contextmanager
def stepping_aside(step_aside: StepAside) -> Iterator[None]:
    """Within the block, this thread's yield points call `step_aside`."""
    previous = getattr(_local, "step_aside", None)
    _local.step_aside = step_aside
    try:
        yield
    finally:
        _local.step_aside = previous


def add_yield_points(*layer_lists: Iterable[nn.Module]) -> None:
    """A yield point before every forward call of each module given (a model's layers)."""
    for layers in layer_lists:
        for layer in layers:
            layer.register_forward_pre_hook(_before_layer)


def _before_layer(module: nn.Module, args: tuple[object, ...]) -> None:
    yield_point()
