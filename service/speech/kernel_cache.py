"""How many compiled CPU kernels a process keeps: the capacity of oneDNN's primitive cache.

On a CPU, torch runs convolutions (and bfloat16 matrix products) through oneDNN, which compiles
a kernel, a "primitive", for every layer shape it meets: layer, input length, precision and
memory layout, plus the reorders between layouts. It keeps the most recently used ones, as many
as `ONEDNN_PRIMITIVE_CACHE_CAPACITY` says, 1024 by default, and builds an evicted one again on
its next use. The official-size vocoder's streaming calls need several thousand: warming up all
of them (service/speech/incremental.py) evicted most, so a stream's chunks rebuilt their kernels
pass after pass. Measured on one core (docs/benchmarks.md, "The kernel cache"): a first chunk
of 31 frames took 0.115 s instead of 0.044 s, a steady 16-frame block 0.08 s instead of 0.047 s.

A kept kernel costs about 50 KB of memory, so the capacity bounds that memory: the encoders'
kernels for every new turn length also go in, and the cache fills up to its capacity over time.
oneDNN reads the variable once, when its cache is first used, so `keep_kernels` must run before
the process's first model call.
"""

from __future__ import annotations

import os

CAPACITY_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
# Room for the official-size vocoder's streaming kernels, both precisions of HuBERT and the
# turns that come and go (docs/benchmarks.md, "The kernel cache"): at most about 200 MB.
DEFAULT_KERNEL_CACHE_CAPACITY = 4096


def keep_kernels(capacity: int) -> None:
    """Make this process's oneDNN keep up to `capacity` kernels; 0 leaves the library's
    default (1024, or the capacity the environment already sets). Call it before the first
    model call: later it changes nothing."""
    if capacity:
        os.environ[CAPACITY_ENV] = str(capacity)
