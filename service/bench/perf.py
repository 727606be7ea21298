"""Measurements for the performance report, written as JSON for the plotting script.

One run measures side by side, on the same machine and checkpoints:

* the LM path (bench/lm.py's workloads): the official-style baseline (transformers `generate`,
  one request at a time, vocoding at the end) and ours (vLLM with concurrent streaming requests,
  streaming vocoder) at each concurrency level, keeping every request's timing so that the
  report can show distributions (time to first audio), not only percentiles;
* the speech models (bench/speech.py): encode/decode real-time factors and the streaming
  vocoder's first-chunk latency.

The load test (`bench load`) writes its own load.json; the report reads all three files.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from service.bench.lm import (
    Baseline,
    BenchConfig,
    Ours,
    Workload,
    _speech_prompt_tokens,
    build_workloads,
)
from service.bench.report import RequestTiming, machine_description, summarize
from service.checkpoints.layout import EXPRESSIVE, CheckpointLayout

Progress = Callable[[str], None]


def _timings(timings: list[RequestTiming], wall: float) -> dict[str, Any]:
    return {
        "wall": wall,
        "requests": [asdict(timing) for timing in timings],
        "summary": asdict(summarize(timings, wall)),
    }


def _baseline(
    layout: CheckpointLayout,
    variant: str,
    config: BenchConfig,
    workloads: list[Workload],
    device: str,
    progress: Progress,
) -> dict[str, dict[str, Any]]:
    from service.lm.tokenizer import SpiritTokenizer
    from service.speech.pipeline import SpeechStack

    tokenizer = SpiritTokenizer.from_dir(layout.lm_dir(variant))
    baseline = Baseline(tokenizer, SpeechStack(layout, variant, device=device), device)
    results = {}
    try:
        for workload in workloads:
            progress(f"baseline (transformers, one at a time): {workload.name}")
            baseline.request(config, workload, 0, seed=0)  # warm-up, not timed
            started = time.perf_counter()
            timings = [
                baseline.request(config, workload, index, seed=1000 + index)
                for index in range(config.baseline_requests)
            ]
            results[workload.name] = _timings(timings, time.perf_counter() - started)
    finally:
        del baseline
        gc.collect()
    return results


async def _ours(
    layout: CheckpointLayout,
    variant: str,
    config: BenchConfig,
    workloads: list[Workload],
    lm_url: str,
    device: str,
    progress: Progress,
) -> dict[str, dict[str, dict[str, Any]]]:
    from service.lm.client import LMClient
    from service.lm.generation import Generator
    from service.lm.tokenizer import SpiritTokenizer
    from service.speech.pipeline import SpeechStack

    tokenizer = SpiritTokenizer.from_dir(layout.lm_dir(variant))
    client = LMClient(lm_url, variant)
    generator = Generator(tokenizer, client, expressive=variant == EXPRESSIVE)
    ours = Ours(generator, SpeechStack(layout, variant, device=device))
    results: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        for workload in workloads:
            await ours.request(config, workload, 0, seed=0)  # warm-up, not timed
            results[workload.name] = {}
            for concurrency in config.concurrency:
                started = time.perf_counter()
                timings = await _level(ours, config, workload, concurrency)
                level = _timings(timings, time.perf_counter() - started)
                results[workload.name][str(concurrency)] = level
                progress(
                    f"ours {workload.name} concurrency {concurrency}: "
                    f"{level['summary']['requests_per_s']:.2f} req/s"
                )
    finally:
        ours.close()
        await client.aclose()
    return results


async def _level(
    ours: Ours, config: BenchConfig, workload: Workload, concurrency: int
) -> list[RequestTiming]:
    """`requests_at(concurrency)` requests with at most `concurrency` in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> RequestTiming:
        async with gate:
            return await ours.request(config, workload, index, seed=2000 + index)

    count = config.requests_at(concurrency)
    return list(await asyncio.gather(*(one(index) for index in range(count))))


def measure_lm(
    layout: CheckpointLayout,
    variant: str,
    config: BenchConfig,
    *,
    audio: Path,
    device: str = "cpu",
    lm_url: str | None = None,
    progress: Progress = print,
) -> dict[str, Any]:
    """Baseline first (no vLLM running yet, as in `bench lm`), then ours on a fresh vLLM."""
    from service.lm.worker import start_lm_worker
    from service.process import free_port
    from service.speech.pipeline import SpeechStack

    stack = SpeechStack(layout, variant, device=device)
    stack.load()
    speech = _speech_prompt_tokens(stack, audio)
    count = max(config.baseline_requests, *(config.requests_at(c) for c in config.concurrency))
    workloads = build_workloads(config, speech, count)
    baseline = _baseline(layout, variant, config, workloads, device, progress)
    worker = None
    if lm_url is None:
        port = free_port()
        worker = start_lm_worker(layout.lm_dir(variant), variant, port=port, progress=progress)
        lm_url = f"http://127.0.0.1:{port}"
    try:
        ours = asyncio.run(_ours(layout, variant, config, workloads, lm_url, device, progress))
    finally:
        if worker is not None:
            worker.stop()
    return {
        "model": variant,
        "config": asdict(config),
        "machine": machine_description(),
        "workloads": {
            w.name: {
                "modality": str(w.modality.value),
                "max_tokens": w.max_tokens,
                "baseline": baseline[w.name],
                "ours": ours[w.name],
            }
            for w in workloads
        },
    }


def measure_speech(audio: Path, *, device: str, repeats: int, progress: Progress) -> dict:
    """`bench speech`'s figures (tiny and official-size random weights) as plain numbers."""
    from service.bench.speech import BenchSettings, run_benchmark

    settings = BenchSettings(device, repeats)
    report = run_benchmark(audio, sizes=("tiny", "official"), settings=settings, progress=progress)
    return {
        "audio": str(report.audio),
        "audio_seconds": report.audio_seconds,
        "machine": machine_description(),
        "stages": [
            {
                "checkpoints": t.checkpoints,
                "variant": t.variant,
                "stage": t.stage,
                "audio_seconds": t.audio_seconds,
                "rtf": t.rtf,
            }
            for t in report.timings
        ],
        "first_chunks": [
            {
                "checkpoints": c.checkpoints,
                "variant": c.variant,
                "seconds": _wall(c),
                "units_needed": c.units_needed,
            }
            for c in report.first_chunks
        ],
    }


def _wall(item: Any) -> float:
    elapsed = getattr(item, "elapsed", None)
    return float(elapsed.wall if elapsed is not None else item.seconds)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
