"""The worker keeps the compiled kernels its streams use (service/speech/kernel_cache.py).

oneDNN reads its cache capacity once per process, so each case runs in a fresh interpreter with
oneDNN's verbose log on, and counts the kernels streams build after the vocoder's warm-up: none
when they are all kept, some when the cache is too small to keep them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.checkpoints.layout import CheckpointLayout
from service.speech.kernel_cache import CAPACITY_ENV, DEFAULT_KERNEL_CACHE_CAPACITY

ROOT = Path(__file__).resolve().parent.parent
WARMED_UP = "-- warmed up --"
STREAMED = "-- streamed --"
ONEDNN_DEFAULT_CAPACITY = 1024

# Streams units through incremental vocoders as stream sessions do. C's stdout (oneDNN's log)
# is flushed at each marker so that the two streams' lines keep their order in the pipe.
STREAM_UNITS = f"""
libc.fflush(None)
print({WARMED_UP!r}, flush=True)
units = np.random.default_rng(3).integers(0, 100, 240).tolist()
for first_chunk_units in (5, 10):
    stream = StreamingVocoder(vocoder, first_chunk_units=first_chunk_units, incremental=True)
    for start in range(0, len(units), 6):
        stream.push(units[start : start + 6])
    stream.finish()
libc.fflush(None)
print({STREAMED!r}, flush=True)
"""
IMPORTS = """
import ctypes, dataclasses, sys
import numpy as np
import torch
from service.speech.streaming import StreamingVocoder
libc = ctypes.CDLL(None)
torch.set_num_threads(1)
"""

# The worker's own start-up: SpeechModels.load applies kernel_cache_capacity (argv[2]).
IN_THE_WORKER = (
    IMPORTS
    + """
from service.checkpoints.layout import BASE
from service.speech_worker.models import SpeechModels
from service.speech_worker.settings import SpeechWorkerSettings

settings = SpeechWorkerSettings(
    checkpoints_dir=sys.argv[1], models=[BASE], kernel_cache_capacity=int(sys.argv[2])
)
models = SpeechModels(settings)
models.load()
vocoder = models.get(BASE).vocoder
"""
    + STREAM_UNITS
)

# The official vocoder geometry (layers, kernels, dilations, up-sampling) at full width, which
# decides how many kernels there are; random weights.
AT_OFFICIAL_SIZE = (
    IMPORTS
    + """
from pathlib import Path
from service.checkpoints.tiny_vocoder import GEOMETRIES, vocoder_config
from service.speech.hifigan import CodeHiFiGAN
from service.speech.kernel_cache import keep_kernels
from service.speech.vocoder import UnitVocoder, parse_config

keep_kernels(int(sys.argv[2]))
config = parse_config(vocoder_config(GEOMETRIES["official"], expressive=False), Path("c.json"))
model = CodeHiFiGAN(config).eval()
vocoder = UnitVocoder(model, ["0", "1"], [], torch.device("cpu"), None)
vocoder.warm_up_incremental()
"""
    + STREAM_UNITS
)


def kernels_built_by_streams(script: str, layout: CheckpointLayout, capacity: int) -> int:
    # The worker's defaults: none of this environment's settings (SPIRITLM_*) or cache size.
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SPIRITLM_") and name != CAPACITY_ENV
    }
    env.update(ONEDNN_VERBOSE="profile_create", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", script, str(layout.root), str(capacity)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    lines = done.stdout.splitlines()
    warm_up = lines[: lines.index(WARMED_UP)]
    streamed = lines[lines.index(WARMED_UP) + 1 : lines.index(STREAMED)]
    if not any("cache_miss" in line for line in warm_up):
        pytest.skip("torch does not run these convolutions through oneDNN here")
    return sum("cache_miss" in line for line in streamed)


def test_the_worker_sets_the_capacity_before_its_models_load(layout: CheckpointLayout) -> None:
    # With room for a handful, the streams' kernels had been evicted: the setting reaches oneDNN.
    assert kernels_built_by_streams(IN_THE_WORKER, layout, 16) > 0
    assert kernels_built_by_streams(IN_THE_WORKER, layout, DEFAULT_KERNEL_CACHE_CAPACITY) == 0


def test_the_default_keeps_every_kernel_of_official_size_streams(
    layout: CheckpointLayout,
) -> None:
    # oneDNN's own default is too small for them (docs/benchmarks.md, "All of vLLM on its own
    # cores, and the kernel cache").
    assert kernels_built_by_streams(AT_OFFICIAL_SIZE, layout, ONEDNN_DEFAULT_CAPACITY) > 0
    assert kernels_built_by_streams(AT_OFFICIAL_SIZE, layout, DEFAULT_KERNEL_CACHE_CAPACITY) == 0
