"""Speech-side capacity: concurrent vocoder streams through the worker's scheduler, in-process.

Each simulated stream receives HuBERT units at an LM's pace (`unit_rate` units per second, in
pieces of `piece` units) and vocodes them the way the speech worker's streams do: the units that
arrived are pushed in `StreamingVocoder.slice_units` slices, each slice's chunks are planned on
a planning thread of their own (duration prediction; `WorkerState.plan`) and rendered by the
worker's `VocoderBatcher` (most urgent chunk first, batched across streams up to the batch
size), on one inference thread.
There is no HTTP, WebSocket or LM here: the figures are the speech side's own, so the
benchmark needs only torch and numpy and runs as it is on a GPU machine
(`python -m service.bench.streams --device cuda`).

Per level of concurrency, all streams start together (the worst case for first audio):

* first chunk: from a stream's first units to its first audio chunk;
* stall: how long a player that starts at the first chunk and plays every chunk back to back
  would pause waiting for audio; a level keeps real time when no stall exceeds `STALL_LIMIT`;
* batch: chunks per forward pass, and how busy the inference thread was;
* memory: peak RSS of the process (CPU) or peak allocated CUDA memory;
* with `--encode-seconds`, encodes of that much audio run back to back beside the streams on the
  same inference thread (another client's uploads, other sessions' whole turns), as the speech
  worker runs them: a chunk whose listener is about to run out of audio goes first, and an
  encode in progress steps aside for it between layers (`--deadline-lead-seconds`,
  service/speech_worker/priority.py).

Units are random codes (seeded): with random-weight checkpoints what the units say does not
matter, only how many frames they make.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import resource
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from service.bench.report import percentile, stall_of
from service.checkpoints.layout import BASE, VARIANTS, CheckpointLayout
from service.speech.precision import DTYPES
from service.speech.streaming import StreamingVocoder
from service.speech.vocoder import UnitVocoder, load_vocoder
from service.speech_worker.batcher import (
    StreamingMode,
    VocoderBatcher,
    default_batch_size,
    incremental_streams,
    urgency,
)
from service.speech_worker.priority import DEADLINE_LEAD_SECONDS, PriorityLimiter, run_in_thread

SECTION = "bench-streams"
STALL_LIMIT = 0.25
Progress = Callable[[str], None]


@dataclass(frozen=True)
class StreamConfig:
    """One configuration of the scheduler and vocoder, named as the speech worker's settings."""

    label: str
    vocoder_batch_size: int = 0  # 0 = the worker's default for the device
    vocoder_dtype: str = "float32"
    vocoder_streaming: StreamingMode = "auto"
    first_chunk_units: int = 10
    chunk_units: int = 25
    max_chunk_units: int = 100
    deadline_lead_seconds: float = DEADLINE_LEAD_SECONDS

    @property
    def flags(self) -> str:
        return (
            f"--vocoder-batch-size {self.vocoder_batch_size} --vocoder-dtype {self.vocoder_dtype} "
            f"--vocoder-streaming {self.vocoder_streaming} --max-chunk-units {self.max_chunk_units}"
            f" --deadline-lead-seconds {self.deadline_lead_seconds:g}"
        )

    def batch_size(self, device: str) -> int:
        return self.vocoder_batch_size or default_batch_size(device)

    def incremental(self, device: str) -> bool:
        return incremental_streams(self.vocoder_streaming, self.batch_size(device))


@dataclass
class StreamResult:
    first_chunk: float | None = None
    stall: float = 0.0
    audio_seconds: float = 0.0


@dataclass
class LevelResult:
    config: str
    streams: int
    results: list[StreamResult]
    wall: float
    batches: list[int] = field(default_factory=list)
    busy: float = 0.0  # seconds the inference thread spent in forward passes
    peak_memory_mb: float = 0.0
    encodes: list[float] = field(default_factory=list)  # seconds each encode beside them took
    steps_aside: int = 0  # times an encode handed the thread to a chunk

    @property
    def firsts(self) -> list[float]:
        return [r.first_chunk for r in self.results if r.first_chunk is not None]

    @property
    def worst_stall(self) -> float:
        return max((r.stall for r in self.results), default=math.inf)

    @property
    def keeps_up(self) -> bool:
        return len(self.firsts) == self.streams and self.worst_stall <= STALL_LIMIT


@dataclass
class Report:
    device: str
    threads: int
    variant: str
    checkpoints: str
    units: int
    unit_rate: float
    piece: int
    encode_seconds: float = 0.0
    levels: list[LevelResult] = field(default_factory=list)

    def largest_real_time(self, config: str) -> int | None:
        kept = [lv.streams for lv in self.levels if lv.config == config and lv.keeps_up]
        return max(kept) if kept else None


# ---- one level ------------------------------------------------------------------------------


async def run_stream(
    vocoder: UnitVocoder,
    batcher: VocoderBatcher,
    planning: Callable[..., Any],
    units: Sequence[int],
    config: StreamConfig,
    *,
    unit_rate: float,
    piece: int,
    speaker: int,
    incremental: bool,
) -> StreamResult:
    """One stream: units arrive `piece` at a time at `unit_rate`; audio is timed as it comes."""
    loop = asyncio.get_running_loop()
    stream = StreamingVocoder(
        vocoder,
        speaker=speaker,
        first_chunk_units=config.first_chunk_units,
        chunk_units=config.chunk_units,
        max_chunk_units=config.max_chunk_units,
        incremental=incremental,
    )
    result = StreamResult()
    arrivals: list[tuple[float, float]] = []
    started = loop.time()
    first_audio_at: float | None = None
    sent = 0.0
    fed = 0

    def arrived_by(now: float) -> int:
        pieces = math.floor((now - started) * unit_rate / piece) + 1
        return min(len(units), pieces * piece)

    async def render(jobs: list[Any]) -> None:
        nonlocal first_audio_at, sent
        order = urgency(sent, first_audio_at, time.monotonic())
        for chunk in await batcher.render(vocoder, jobs, order):
            now = loop.time()
            seconds = len(chunk) / vocoder.sample_rate
            if first_audio_at is None and len(chunk):
                first_audio_at = time.monotonic()
                result.first_chunk = now - started
            arrivals.append((now, seconds))
            sent += seconds

    while fed < len(units):
        available = arrived_by(loop.time())
        if available == fed:
            next_piece = started + (fed // piece) * piece / unit_rate
            await asyncio.sleep(max(0.0, next_piece - loop.time()))
            continue
        while fed < available:
            size = min(stream.slice_units(), available - fed)
            jobs = await planning(stream.push_jobs, list(units[fed : fed + size]))
            fed += size
            await render(jobs)
    await render(await planning(stream.finish_jobs))
    result.stall = stall_of(arrivals)
    result.audio_seconds = sent
    return result


async def run_level(
    vocoder: UnitVocoder,
    config: StreamConfig,
    streams: int,
    *,
    units: int,
    unit_rate: float,
    piece: int,
    device: str,
    encode: Callable[[], object] | None = None,
) -> LevelResult:
    batches: list[int] = []
    busy = [0.0]
    steps_aside = [0]

    def on_batch(size: int, seconds: float) -> None:
        batches.append(size)
        busy[0] += seconds

    def on_step_aside() -> None:
        steps_aside[0] += 1

    # One inference thread, as the worker's `inference_threads` default, and one planning
    # thread, as the worker's `WorkerState.plan`, let in by the worker's own rules.
    inference = PriorityLimiter(
        1, deadline_lead=config.deadline_lead_seconds, on_step_aside=on_step_aside
    )
    planner = PriorityLimiter(1)

    def in_thread(function: Callable[..., Any], *args: Any, **options: Any) -> Any:
        return run_in_thread(inference, function, *args, **options)

    def planning(function: Callable[..., Any], *args: Any) -> Any:
        return run_in_thread(planner, function, *args)

    batcher = VocoderBatcher(in_thread, config.batch_size(device), on_batch)
    rng = np.random.default_rng(streams)
    speakers = vocoder.num_speakers or 1
    streaming = asyncio.Event()
    encodes: list[float] = []

    async def encode_beside() -> None:
        while encode is not None and not streaming.is_set():
            started = time.perf_counter()
            await in_thread(encode, preemptible=True)
            encodes.append(time.perf_counter() - started)

    encoding = asyncio.create_task(encode_beside())
    started = time.perf_counter()
    results = await asyncio.gather(
        *[
            run_stream(
                vocoder,
                batcher,
                planning,
                rng.integers(0, vocoder.config.num_embeddings, units).tolist(),
                config,
                unit_rate=unit_rate,
                piece=piece,
                speaker=index % speakers,
                incremental=config.incremental(device),
            )
            for index in range(streams)
        ]
    )
    wall = time.perf_counter() - started
    streaming.set()
    await encoding
    level = LevelResult(config.label, streams, list(results), wall, batches, busy[0])
    level.peak_memory_mb = peak_memory_mb(device)
    level.encodes, level.steps_aside = encodes, steps_aside[0]
    return level


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux: the process's peak so far, all levels included.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def describe(level: LevelResult) -> str:
    firsts = level.firsts
    p50 = f"{percentile(firsts, 50) * 1000:.0f} ms" if firsts else "-"
    mean_batch = f"{np.mean(level.batches):.1f}" if level.batches else "-"
    return (
        f"{level.config}: {level.streams} stream(s): first chunk p50 {p50}, worst stall "
        f"{level.worst_stall:.2f} s, mean batch {mean_batch}, "
        f"{'keeps' if level.keeps_up else 'misses'} real time"
        + (
            f", {len(level.encodes)} encode(s) beside, {level.steps_aside} step(s) aside"
            if level.encodes
            else ""
        )
    )


# ---- the whole run --------------------------------------------------------------------------


def official_size_checkpoints(progress: Progress, *, encoders: bool) -> Path:
    """A fresh root with official-size vocoders of random weights, and the speech encoders if
    asked (no LM)."""
    from service.checkpoints.tiny_encoders import write_encoders
    from service.checkpoints.tiny_vocoder import write_vocoders

    root = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    write_vocoders(CheckpointLayout(root), size="official", progress=progress)
    if encoders:
        write_encoders(CheckpointLayout(root), size="official", progress=progress)
    return root


def encoding(
    layout: CheckpointLayout, variant: str, device: str, seconds: float
) -> Callable[[], object]:
    """One encode of `seconds` of audio with `variant`'s speech tokenizer, as the speech worker
    encodes an upload (what the audio says does not matter for its cost)."""
    from service.speech.pipeline import SpeechStack

    stack = SpeechStack(layout, variant, device)
    audio = np.random.default_rng(0).normal(0, 0.1, round(seconds * 16000)).astype(np.float32)
    stack.encode_units(audio[:16000])  # loaded and warmed up before any level
    return partial(stack.encode_units, audio)


def run_benchmark(
    configs: Sequence[StreamConfig],
    levels: Sequence[int],
    *,
    checkpoints: Path | None,
    variant: str,
    device: str,
    threads: int,
    units: int,
    unit_rate: float,
    piece: int,
    time_budget: float,
    progress: Progress,
    encode_seconds: float = 0.0,
) -> Report:
    torch.set_num_threads(threads)
    where = str(checkpoints) if checkpoints else "official sizes, random weights (generated)"
    report = Report(device, threads, variant, where, units, unit_rate, piece, encode_seconds)
    layout = CheckpointLayout(
        checkpoints or official_size_checkpoints(progress, encoders=encode_seconds > 0)
    )
    encode = encoding(layout, variant, device, encode_seconds) if encode_seconds > 0 else None
    style = 8 if variant == BASE else None  # the base vocoder's default style, as served
    started = time.perf_counter()
    for config in configs:
        vocoder = load_vocoder(
            layout.vocoder_dir(variant), device, default_style=style, dtype=config.vocoder_dtype
        )
        # As the speech worker does before serving (service/speech_worker/models.py).
        if config.incremental(device):
            vocoder.warm_up_incremental()
        else:
            vocoder.warm_up_streams(config.max_chunk_units)
        for streams in levels:
            if time.perf_counter() - started > time_budget:
                progress(f"time budget of {time_budget:.0f} s spent; stopping before {streams}")
                break
            level = asyncio.run(
                run_level(
                    vocoder, config, streams,
                    units=units, unit_rate=unit_rate, piece=piece, device=device,
                    encode=encode,
                )
            )  # fmt: skip
            report.levels.append(level)
            progress(describe(level))
            if not level.keeps_up:
                break
    return report


# ---- the report -----------------------------------------------------------------------------


def markdown_table(report: Report) -> str:
    header = (
        "| Configuration | Streams | First chunk p50 (ms) | p95 (ms) | Worst stall (s) "
        "| Keeps real time | Chunks per pass (mean) | Inference thread busy | Peak memory (MB) |"
    )
    rule = "|---|---:|---:|---:|---:|---|---:|---:|---:|"
    if report.encode_seconds:
        header += " Encodes beside | Encode time (mean s) | Steps aside |"
        rule += "---:|---:|---:|"
    lines = [header, rule]
    for level in report.levels:
        firsts = level.firsts
        row = "| {config} | {n} | {p50} | {p95} | {stall} | {keeps} | {batch} | {busy} | {mem} |"
        line = row.format(
            config=level.config,
            n=level.streams,
            p50=f"{percentile(firsts, 50) * 1000:.0f}" if firsts else "–",
            p95=f"{percentile(firsts, 95) * 1000:.0f}" if firsts else "–",
            stall="–" if math.isinf(level.worst_stall) else f"{level.worst_stall:.2f}",
            keeps="yes" if level.keeps_up else "no",
            batch=f"{np.mean(level.batches):.1f}" if level.batches else "–",
            busy=f"{100 * level.busy / level.wall:.0f} %" if level.wall else "–",
            mem=f"{level.peak_memory_mb:.0f}",
        )
        if report.encode_seconds:
            mean = f"{np.mean(level.encodes):.2f}" if level.encodes else "–"
            line += f" {len(level.encodes)} | {mean} | {level.steps_aside} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def markdown_section(report: Report, configs: Sequence[StreamConfig], command: str) -> str:
    from service.bench.report import machine_description

    verdicts = []
    for config in configs:
        largest = report.largest_real_time(config.label)
        verdicts.append(
            f"- {config.label} (`{config.flags}`): "
            + (f"**{largest} real-time stream(s)**" if largest else "no level kept real time")
        )
    return "\n".join(
        [
            "## Concurrent vocoder streams (`bench streams`)",
            "",
            f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
            "",
            f"- Machine: {machine_description()}; device `{report.device}`, torch "
            f"{torch.__version__}, {report.threads} intra-op thread(s), one inference thread",
            f"- Vocoder: {report.variant}, {report.checkpoints}",
            f"- Each stream gets {report.units} random units at {report.unit_rate:g} units/s "
            f"(an LM's pace; speech is 25 units/s) in pieces of {report.piece}, all streams "
            "starting together. First chunk: from a stream's first units to its first audio. "
            "Stall: how long a player starting at the first chunk would pause; a level keeps "
            f"real time when every stall is at most {STALL_LIMIT} s. Levels stop at the first "
            "that does not.",
            *(
                [
                    f"- Beside the streams, encodes of {report.encode_seconds:g} s of audio "
                    "(the same model's speech tokenizer) run back to back on the same inference "
                    "thread, preemptible as in the speech worker; steps aside: times one handed "
                    "the thread to a chunk near its deadline. The thread's busy share counts "
                    "vocoder passes only."
                ]
                if report.encode_seconds
                else []
            ),
            "",
            markdown_table(report).rstrip(),
            "",
            "Largest level that kept real time:",
            "",
            *verdicts,
        ]
    )


# ---- command line (also `spiritlm-serve bench streams`) -------------------------------------


def parse_config(text: str) -> StreamConfig:
    """`label: --flag value ...` with the speech worker's flag names."""
    label, colon, flags = text.partition(":")
    if not colon or not label.strip():
        raise ValueError(f"{text!r}: expected 'label: --flag value ...'")
    parser = argparse.ArgumentParser(prog=label.strip(), add_help=False, exit_on_error=False)
    parser.add_argument("--vocoder-batch-size", type=int, default=0)
    parser.add_argument("--vocoder-dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--vocoder-streaming", choices=get_args(StreamingMode), default="auto")
    parser.add_argument("--first-chunk-units", type=int, default=10)
    parser.add_argument("--chunk-units", type=int, default=25)
    parser.add_argument("--max-chunk-units", type=int, default=100)
    parser.add_argument("--deadline-lead-seconds", type=float, default=DEADLINE_LEAD_SECONDS)
    try:
        values = parser.parse_args(shlex.split(flags))
    except (argparse.ArgumentError, SystemExit) as error:
        raise ValueError(f"{text!r}: {error}") from None
    return StreamConfig(label.strip(), **vars(values))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda[:N]")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--checkpoints",
        type=Path,
        default=None,
        help="official-layout root (default: official-size random vocoders, generated)",
    )
    parser.add_argument("--model", choices=VARIANTS, default=BASE)
    parser.add_argument(
        "--configs",
        default=(
            "windows: --vocoder-streaming windows; incremental: --vocoder-streaming incremental"
        ),
        help="configurations compared in one run: 'label: flags; label: flags' with the speech "
        "worker's flags --vocoder-batch-size, --vocoder-dtype, --vocoder-streaming, "
        "--first-chunk-units, --chunk-units, --max-chunk-units, --deadline-lead-seconds",
    )
    parser.add_argument("--levels", default="1,2,4,8,16", help="concurrent streams to try")
    parser.add_argument("--units", type=int, default=200, help="units per stream")
    parser.add_argument("--unit-rate", type=float, default=50.0, help="units/s each stream gets")
    parser.add_argument("--piece", type=int, default=5, help="units that arrive together")
    parser.add_argument(
        "--encode-seconds",
        type=float,
        default=0.0,
        help="beside the streams, encode this many seconds of audio over and over on the same "
        "inference thread, as the worker runs uploads and whole-turn encodes (0 = none; needs "
        "the encoders: generated at official size unless --checkpoints has them)",
    )
    parser.add_argument("--time-budget", type=float, default=900.0, help="seconds for all levels")
    parser.add_argument(
        "--output", type=Path, default=None, help="markdown file whose section to replace"
    )


def run(args: argparse.Namespace, progress: Progress, command: str) -> Report:
    configs = [parse_config(part) for part in args.configs.split(";") if part.strip()]
    levels = sorted({int(part) for part in args.levels.split(",") if part.strip()})
    if not configs or not levels or min(levels) < 1:
        raise ValueError("--configs and --levels need at least one entry each (levels >= 1)")
    report = run_benchmark(
        configs,
        levels,
        checkpoints=args.checkpoints,
        variant=args.model,
        device=args.device,
        threads=args.threads,
        units=args.units,
        unit_rate=args.unit_rate,
        piece=args.piece,
        time_budget=args.time_budget,
        progress=progress,
        encode_seconds=args.encode_seconds,
    )
    print(markdown_table(report), end="", flush=True)
    if args.output is not None:
        from service.bench.sections import write_section

        write_section(args.output, SECTION, markdown_section(report, configs, command))
        progress(f"updated the {SECTION} section of {args.output}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.bench.streams", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    command = "python -m service.bench.streams " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    run(args, lambda message: print(message, file=sys.stderr, flush=True), command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
