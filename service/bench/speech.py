"""Speech-stack benchmark: encode and decode real-time factors, streaming first-chunk latency.

Measured for each checkpoint set (the tiny test checkpoints, random weights at the official
sizes, or a given official-layout directory) on one speech file:

* encode RTF = encode time / input duration. Base: HuBERT + quantizer; expressive: the same plus
  the pitch tokenizer (FCPE + VQ-VAE) and the style encoder, which are also timed on their own.
* decode RTF = one-shot vocoder time / output duration, for the token string of the encoded file
  (duration prediction) and, for the expressive model, its raw units (no duration prediction).
* streaming first-chunk latency = time from pushing the first unit to getting the first audio
  chunk, with the units of the token string pushed one at a time, back to back. It is the
  vocoder's share of the time to first audio; the LM adds the time it takes to generate the
  `units needed`.

Every figure is the median of `repeats` runs after one untimed warm-up run.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.audio.decode import load_audio_file
from service.checkpoints.layout import BASE, EXPRESSIVE, VARIANTS, CheckpointLayout
from service.errors import SpiritError
from service.speech.pipeline import SpeechStack
from service.units.tokens import Units, string_to_units, units_to_string

SAMPLE_RATE = 16000
SECTION = "bench-speech"  # the marker of its section in docs/benchmarks.md
SHORT_NAMES = {BASE: "base", EXPRESSIVE: "expressive"}
SIZE_LABELS = {"tiny": "tiny (test sizes)", "official": "official sizes, random weights"}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchSettings:
    device: str = "cpu"
    repeats: int = 3
    first_chunk_units: int = 10
    chunk_units: int = 25


@dataclass(frozen=True)
class Elapsed:
    """Median wall-clock seconds and process CPU seconds (summed over threads) of some runs.

    CPU time barely moves when other processes compete for the cores, wall time does: both are
    reported so that figures from a busy shared machine can still be read.
    """

    wall: float
    cpu: float

    @classmethod
    def median(cls, samples: Sequence[tuple[float, float]]) -> Elapsed:
        return cls(
            statistics.median(wall for wall, _ in samples),
            statistics.median(cpu for _, cpu in samples),
        )


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


@dataclass(frozen=True)
class Timing:
    """One timed stage, for `audio_seconds` of (input or output) audio."""

    checkpoints: str
    variant: str
    stage: str
    audio_seconds: float
    elapsed: Elapsed

    @property
    def rtf(self) -> float:
        return self.elapsed.wall / self.audio_seconds if self.audio_seconds else float("nan")


@dataclass(frozen=True)
class FirstChunk:
    """Streaming start-up: latency and the units pushed before the first chunk."""

    checkpoints: str
    variant: str
    elapsed: Elapsed
    units_needed: int
    worst_case_units: int
    chunk_seconds: float


@dataclass
class Report:
    audio: Path
    audio_seconds: float
    settings: BenchSettings
    timings: list[Timing] = field(default_factory=list)
    first_chunks: list[FirstChunk] = field(default_factory=list)
    # 1-minute load averages at the start and the end: how busy the machine was.
    load: tuple[float, float] | None = None


# ------------------------------------------------------------------------------- timing


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], Any], settings: BenchSettings) -> tuple[Elapsed, Any]:
    """Median time of `fn` over the repeats after one warm-up call, and its last result."""
    result = fn()  # first-call allocations and lazy initialisation stay out of the figures
    samples = []
    for _ in range(settings.repeats):
        synchronize(settings.device)
        start = clock()
        result = fn()
        synchronize(settings.device)
        samples.append(since(start))
    return Elapsed.median(samples), result


def load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


# ------------------------------------------------------------------------------- stages


def bench_encoding(
    label: str,
    stacks: dict[str, SpeechStack],
    wav: np.ndarray,
    settings: BenchSettings,
    progress: Progress,
) -> tuple[list[Timing], dict[str, Units]]:
    """Encode timings of both variants and the expressive components; the units per variant."""
    seconds = len(wav) / SAMPLE_RATE
    stages = {
        BASE: "encode: HuBERT + quantizer",
        EXPRESSIVE: "encode: HuBERT + quantizer + pitch + style",
    }
    timings, units = [], {}
    for variant, stack in stacks.items():
        progress(f"[{label}] {SHORT_NAMES[variant]} {stages[variant]}")
        median, units[variant] = median_time(partial(stack.encode_units, wav), settings)
        timings.append(Timing(label, variant, stages[variant], seconds, median))
    expressive = stacks[EXPRESSIVE]
    tensor = torch.from_numpy(wav).to(settings.device)
    components = (
        ("encode, pitch only: FCPE + VQ-VAE", expressive.pitch),
        ("encode, style only: wav2vec2", expressive.style),
    )
    for stage, component in components:
        progress(f"[{label}] expressive {stage}")
        median, _ = median_time(partial(component, tensor), settings)
        timings.append(Timing(label, EXPRESSIVE, stage, seconds, median))
    return timings, units


def decode_cases(units: dict[str, Units]) -> list[tuple[str, str, str | Units]]:
    """(variant, stage, code): the paths a served request takes.

    The paths are listed in docs/format.md#vocoding-and-duration-prediction.
    """
    return [
        (
            BASE,
            "decode: token string, duration prediction",
            units_to_string(units[BASE], expressive=False),
        ),
        (
            EXPRESSIVE,
            "decode: token string, duration prediction",
            units_to_string(units[EXPRESSIVE], expressive=True),
        ),
        (EXPRESSIVE, "decode: raw units, no duration prediction", units[EXPRESSIVE]),
    ]


def bench_decoding(
    label: str,
    stacks: dict[str, SpeechStack],
    units: dict[str, Units],
    settings: BenchSettings,
    progress: Progress,
) -> list[Timing]:
    timings = []
    for variant, stage, code in decode_cases(units):
        progress(f"[{label}] {SHORT_NAMES[variant]} {stage}")
        median, wav = median_time(partial(stacks[variant].decode, code), settings)
        timings.append(Timing(label, variant, stage, len(wav) / SAMPLE_RATE, median))
    return timings


def first_chunk_once(
    stack: SpeechStack, units: Units, settings: BenchSettings
) -> tuple[tuple[float, float], int, int, int]:
    """((wall, cpu) seconds, units pushed, worst-case units, first-chunk samples), fresh stream."""
    stream = stack.streaming_vocoder(
        first_chunk_units=settings.first_chunk_units, chunk_units=settings.chunk_units
    )
    start = clock()
    for index, unit in enumerate(units.hubert):
        pitch = [units.pitch[index]] if stack.expressive and units.pitch else None
        style = [units.style[index]] if stack.expressive and units.style else None
        chunks = stream.push([unit], pitch, style)
        if chunks:  # numpy output: the device work is already finished
            return since(start), index + 1, stream.latency_units, len(chunks[0])
    chunks = stream.finish()  # fewer units than the first chunk needs: the end releases it
    return since(start), len(units.hubert), stream.latency_units, len(chunks[0])


def bench_first_chunk(
    label: str,
    stacks: dict[str, SpeechStack],
    units: dict[str, Units],
    settings: BenchSettings,
    progress: Progress,
) -> list[FirstChunk]:
    results = []
    for variant, stack in stacks.items():
        progress(f"[{label}] {SHORT_NAMES[variant]} streaming first chunk")
        # The LM emits aligned units: the token string's decoding, as a served stream gets it.
        aligned = string_to_units(units_to_string(units[variant], expressive=stack.expressive))
        runs = [first_chunk_once(stack, aligned, settings) for _ in range(settings.repeats + 1)]
        latency = Elapsed.median([run[0] for run in runs[1:]])
        _, needed, worst, samples = runs[-1]
        results.append(FirstChunk(label, variant, latency, needed, worst, samples / SAMPLE_RATE))
    return results


# ------------------------------------------------------------------------------- driver


def checkpoint_sets(
    sizes: Sequence[str], checkpoints: Path | None, workdir: Path, progress: Progress
) -> list[tuple[str, CheckpointLayout]]:
    """(label, layout) of every set to measure; generated sets go under `workdir`."""
    from service.checkpoints.make import check_files, make_checkpoints

    sets = []
    for size in sizes:
        root = workdir / size
        progress(f"writing {size}-size checkpoints with random weights to {root}")
        sets.append((SIZE_LABELS[size], make_checkpoints(root, size=size, progress=lambda _: None)))
    if checkpoints is not None:
        layout = CheckpointLayout(Path(checkpoints))
        for variant in VARIANTS:
            check_files(layout, variant, lm=False, speech=True)
        sets.append((f"`{checkpoints}`", layout))
    return sets


def run_benchmark(
    audio: Path,
    *,
    sizes: Sequence[str] = ("tiny", "official"),
    checkpoints: Path | None = None,
    settings: BenchSettings | None = None,
    progress: Progress = print,
) -> Report:
    settings = settings or BenchSettings()
    wav = load_audio_file(audio)
    if len(wav) < SAMPLE_RATE:
        raise SpiritError(f"{audio}: {len(wav) / SAMPLE_RATE:.2f} s of audio; give at least 1 s")
    report = Report(Path(audio), len(wav) / SAMPLE_RATE, settings)
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-speech-") as workdir:
        for label, layout in checkpoint_sets(sizes, checkpoints, Path(workdir), progress):
            stacks = {v: SpeechStack(layout, v, device=settings.device) for v in VARIANTS}
            for stack in stacks.values():
                stack.load()
            timings, units = bench_encoding(label, stacks, wav, settings, progress)
            report.timings += timings
            report.timings += bench_decoding(label, stacks, units, settings, progress)
            report.first_chunks += bench_first_chunk(label, stacks, units, settings, progress)
    load_end = load_average()
    if load_start is not None and load_end is not None:
        report.load = (load_start, load_end)
    return report


# ------------------------------------------------------------------------------- report


def timing_table(report: Report) -> str:
    lines = [
        "| Checkpoints | Model | Stage | Audio (s) | Wall time (s) | RTF | CPU time (s) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for t in report.timings:
        lines.append(
            f"| {t.checkpoints} | {SHORT_NAMES[t.variant]} | {t.stage} | "
            f"{t.audio_seconds:.2f} | {t.elapsed.wall:.3f} | {t.rtf:.3f} | {t.elapsed.cpu:.3f} |"
        )
    return "\n".join(lines)


def first_chunk_table(report: Report) -> str:
    lines = [
        "| Checkpoints | Model | First chunk latency (ms) | CPU time (ms) | Units needed "
        "| Worst case (units) | First chunk audio (ms) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in report.first_chunks:
        lines.append(
            f"| {c.checkpoints} | {SHORT_NAMES[c.variant]} | {c.elapsed.wall * 1000:.1f} | "
            f"{c.elapsed.cpu * 1000:.1f} | {c.units_needed} | {c.worst_case_units} | "
            f"{c.chunk_seconds * 1000:.0f} |"
        )
    return "\n".join(lines)


def markdown_tables(report: Report) -> str:
    return f"{timing_table(report)}\n\n{first_chunk_table(report)}\n"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_lines(device: str) -> list[str]:
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    lines = [
        f"- CPU: {cpu_model()}, {cores} logical cores ({usable} usable by the run)",
        f"- torch {torch.__version__}, intra-op threads: {torch.get_num_threads()}, "
        f"device `{device}`",
    ]
    if torch.device(device).type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(torch.device(device))}")
    elif torch.cuda.is_available():
        lines.append("- GPU: not measured (run with `--device cuda`)")
    else:
        lines.append("- GPU: not measured (no GPU lent)")
    return lines


def load_line(report: Report) -> str:
    if report.load is None:
        return "- load average: unknown"
    start, end = report.load
    line = f"- load average (1 min): {start:.2f} at the start, {end:.2f} at the end"
    if max(start, end) > (os.cpu_count() or 1):
        line += " (other processes competed for the cores: wall times are inflated)"
    return line


RTF_NOTE = (
    "RTF = wall time / audio duration (input audio for encoding, output audio for decoding); "
    "below 1 is faster than real time. CPU time is the process's, summed over its threads: it "
    "hardly changes when other processes compete for the cores, and on an otherwise idle machine "
    "the wall time lies between CPU time / threads and CPU time. Random weights give random "
    "units, so decoded lengths differ from those of real checkpoints (the RTF is per second of "
    "output)."
)
STREAMING_NOTE = (
    "Latency is the time from the first push to the first audio chunk, i.e. the vocoder's share "
    "of the time to first audio; *units needed* is how many units had to be pushed (the LM must "
    "generate them first), *worst case* the bound for any durations."
)


def markdown_section(report: Report, command: str, machine: Sequence[str]) -> str:
    s = report.settings
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    audio = (
        f"Audio: `{report.audio.name}`, {report.audio_seconds:.3f} s. Each figure is the median "
        f"of {s.repeats} timed run(s) after one warm-up run. {RTF_NOTE}"
    )
    streaming = (
        "Streaming: the units of the encoded file's token string pushed one at a time, back to "
        f"back; first chunk after {s.first_chunk_units} units, then every {s.chunk_units}. "
        f"{STREAMING_NOTE}"
    )
    parts = [
        "## Speech stack (`bench speech`)",
        f"Command: `{command}` ({date})",
        "\n".join([*machine, load_line(report)]),
        audio,
        timing_table(report),
        streaming,
        first_chunk_table(report),
    ]
    return "\n\n".join(parts)
