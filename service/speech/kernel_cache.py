"""How many compiled CPU kernels a process keeps: the capacity of oneDNN's primitive cache.

On a CPU, torch runs convolutions (and bfloat16 matrix products) through oneDNN, which compiles
a kernel, a "primitive", for every layer shape it meets: layer, input length, precision and
memory layout, plus the reorders between layouts. It keeps the most recently used ones, as many
as `ONEDNN_PRIMITIVE_CACHE_CAPACITY` says, 1024 by default, and builds an evicted one again on
its next use. The official-size vocoder's streaming calls needed about 9,700 when a first chunk
could take any length: warming them all up (service/speech/incremental.py) evicted most, and a
first chunk rebuilt its kernels unless its length had been used lately. Measured on one core
(docs/benchmarks.md, "All of vLLM on its own cores, and the kernel cache"): a first chunk of 31
frames took 0.115 s instead of 0.044 s, a 16-frame block after a few first chunks 0.08 s
instead of 0.047 s. First chunks now take six lengths, and the vocoder's warm-up builds about
2,000.

A kept kernel costs about 50 KB of memory (the vocoder's average; an estimate for the others),
so the capacity bounds that memory: the kernels of every new turn length (about 20) and of
every new one-shot decode length (about 180) go in too, and the cache fills up to its capacity
over time. The least recently used go first, so a stream's kernels, used every pass, stay; a
rarely used one (a long first chunk's) may be built again once after many new lengths. oneDNN
reads the variable once, when its cache is first used, so `keep_kernels` must run before the
process's first model call.
"""

from __future__ import annotations

import os

CAPACITY_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
# Room for the official-size vocoder's streaming kernels (1,980; 2,035 with both precisions of
# HuBERT after the base model's load; tests/test_kernel_cache.py) and for the kernels of
# requests that come and go: about 200 MB at most (docs/benchmarks.md, "All of vLLM on its own
# cores, and the kernel cache").
DEFAULT_KERNEL_CACHE_CAPACITY = 4096
MAX_KERNEL_CACHE_CAPACITY = 65536  # about 3 GB


def keep_kernels(capacity: int = DEFAULT_KERNEL_CACHE_CAPACITY) -> None:
    """Make this process's oneDNN keep up to `capacity` kernels (the speech worker's
    `kernel_cache_capacity`; the in-process benchmarks take its default). 0, or a capacity the
    environment already sets, leaves oneDNN as it is. Call it before the first model call:
    later it changes nothing."""
    if capacity and CAPACITY_ENV not in os.environ:
        os.environ[CAPACITY_ENV] = str(capacity)
