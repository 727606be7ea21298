"""Load test: mixed REST and realtime traffic at a fixed rate, errors, latency and memory.

Requests arrive as a Poisson process at `rate` per second for `duration` seconds, each of a kind
drawn from `mix` (see load_traffic.py), with at most `max_in_flight` at once: when that many are
open, the next arrival waits, so a slow stack lowers the achieved rate instead of piling up
requests without bound. Every request is timed from its start to its last byte or event.

Alongside, the RSS of every process of the stack (gateway, speech worker, vLLM server and
engine, supervisor) is sampled every `sample_interval` seconds. Memory growth is judged after
the warm-up (`warmup` seconds, when caches fill and allocators settle): the median RSS of the
last tenth of the samples against the median of the first tenth after warm-up.

Targets: no failed request, and less than 5 % RSS growth after warm-up for every process.
"""

from __future__ import annotations

import asyncio
import csv
import json
import random
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.bench.load_traffic import KINDS, Result, Traffic, available_kinds, run_one
from service.bench.processes import RssSample, RssSampler

Progress = Callable[[str], None]

DEFAULT_MIX = {
    "generate-text": 2.0,
    "generate-speech": 2.0,
    "transcription": 1.0,
    "speech": 2.0,
    "tokenize": 2.0,
    "realtime": 1.0,
}
MAX_RSS_GROWTH_PERCENT = 5.0
PROGRESS_SECONDS = 30.0


@dataclass(frozen=True)
class LoadConfig:
    duration: float = 600.0
    rate: float = 1.0  # arrivals per second, all kinds together
    warmup: float | None = None  # default: a quarter of the run, at most 60 s
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    max_in_flight: int = 16
    sample_interval: float | None = None  # default: 5 s, at least 20 samples per run
    timeout: float = 120.0
    text_tokens: int = 16
    speech_tokens: int = 50
    seed: int = 0
    max_rss_growth: float = MAX_RSS_GROWTH_PERCENT

    def warmup_seconds(self) -> float:
        return self.warmup if self.warmup is not None else min(60.0, self.duration / 4)

    def interval(self) -> float:
        if self.sample_interval is not None:
            return self.sample_interval
        return max(0.5, min(5.0, self.duration / 20))

    def check(self) -> None:
        if self.duration <= 0 or self.rate <= 0 or self.max_in_flight < 1 or self.timeout <= 0:
            raise ValueError("duration, rate, timeout must be > 0 and max_in_flight >= 1")
        if not 0 <= self.warmup_seconds() < self.duration:
            raise ValueError(f"warm-up {self.warmup_seconds()} s must be shorter than the run")
        unknown = sorted(set(self.mix) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown traffic kind(s) {unknown}; known: {sorted(KINDS)}")
        if not any(weight > 0 for weight in self.mix.values()):
            raise ValueError("the traffic mix has no kind with a positive weight")


@dataclass(frozen=True)
class Record:
    kind: str
    started: float  # seconds since the start of the run
    latency: float
    ok: bool
    first_audio: float | None
    error: str | None


@dataclass
class LoadRun:
    config: LoadConfig
    url: str
    kinds: list[str]
    notes: list[str]
    wall: float
    records: list[Record]
    rss: list[RssSample]
    after: dict[str, float | None]  # leak gauges once the traffic stopped
    servers: dict[str, float | None] = field(default_factory=dict)  # the servers' own figures


def parse_mix(text: str) -> dict[str, float]:
    """``kind=weight,kind=weight`` (a bare kind means weight 1)."""
    mix: dict[str, float] = {}
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        name, _, weight = part.partition("=")
        try:
            mix[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--mix: {part!r} is not kind=weight") from None
    return mix


# ---- running


class _Runner:
    def __init__(
        self, config: LoadConfig, traffic: Traffic, kinds: list[str], progress: Progress
    ) -> None:
        self.config = config
        self.traffic = traffic
        self.kinds = kinds
        self.weights = [config.mix.get(kind, 0.0) for kind in kinds]
        self.progress = progress
        self.records: list[Record] = []
        self.gate = asyncio.Semaphore(config.max_in_flight)
        self.in_flight = 0
        self.started = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.started

    async def _one(self, kind: str) -> None:
        started = self.now()
        self.in_flight += 1
        try:
            result: Result = await run_one(kind, self.traffic)
        finally:
            self.in_flight -= 1
            self.gate.release()
        self.records.append(
            Record(kind, started, self.now() - started, result.ok, result.first_audio, result.error)
        )

    async def arrivals(self) -> None:
        rng = random.Random(self.config.seed)
        tasks: set[asyncio.Task[None]] = set()
        next_at = 0.0
        while next_at < self.config.duration:
            await asyncio.sleep(max(0.0, next_at - self.now()))
            await self.gate.acquire()
            kind = rng.choices(self.kinds, self.weights)[0]
            task = asyncio.create_task(self._one(kind))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += rng.expovariate(self.config.rate)
        if tasks:
            await asyncio.gather(*tasks)

    async def report_progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            failed = sum(1 for record in self.records if not record.ok)
            self.progress(
                f"[{self.now():.0f} s] {len(self.records)} requests done, {failed} failed, "
                f"{self.in_flight} in flight"
            )


async def _sample_rss(sampler: RssSampler, interval: float) -> None:
    while True:
        await asyncio.to_thread(sampler.sample)
        await asyncio.sleep(interval)


async def run_load(
    url: str,
    config: LoadConfig,
    *,
    speech_audio: bytes,
    sampler: RssSampler | None = None,
    api_key: str | None = None,
    model: str | None = None,
    progress: Progress = print,
) -> LoadRun:
    """Drive the gateway at `url` with the configured traffic; sample memory with `sampler`."""
    config.check()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=config.max_in_flight + 8)
    timeout = httpx.Timeout(config.timeout, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        traffic = Traffic(
            url.rstrip("/"),
            http,
            speech_audio,
            headers=headers,
            model=model,
            text_tokens=config.text_tokens,
            speech_tokens=config.speech_tokens,
            timeout=config.timeout,
        )
        wanted = [kind for kind, weight in config.mix.items() if weight > 0]
        kinds, notes = await available_kinds(traffic, wanted)
        for note in notes:
            progress(note)
        if not kinds:
            raise ValueError("none of the traffic kinds is served by this gateway")
        runner = _Runner(config, traffic, kinds, progress)
        background = [asyncio.create_task(runner.report_progress())]
        if sampler is not None:
            sampler.started = runner.started
            background.append(asyncio.create_task(_sample_rss(sampler, config.interval())))
        try:
            await runner.arrivals()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        wall = runner.now()
        if sampler is not None:
            await asyncio.to_thread(sampler.sample)  # the state right after the traffic
        after = await leak_gauges(http, traffic.base_url, headers)
        servers = await server_figures(http, traffic.base_url, headers)
    return LoadRun(
        config,
        url,
        kinds,
        notes,
        wall,
        sorted(runner.records, key=lambda record: record.started),
        sampler.samples if sampler is not None else [],
        after,
        servers,
    )


# ---- what is left after the traffic


def metric_sum(text: str, name: str) -> float | None:
    """Sum of a Prometheus metric's samples (all label sets); None when absent."""
    pattern = rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+([0-9.eE+-]+)$"
    values = [float(match.group(1)) for match in re.finditer(pattern, text, re.M)]
    return sum(values) if values else None


async def _scrape(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> str:
    try:
        response = await http.get(url, headers=headers, timeout=10)
    except httpx.HTTPError:
        return ""
    return response.text if response.status_code == 200 else ""


async def leak_gauges(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], settle: float = 15.0
) -> dict[str, float | None]:
    """In-flight gauges of the gateway and its workers once they have settled (up to `settle`).

    The gateway counts the /metrics request that reads the gauge, so an idle gateway shows 1;
    the figure reported here has that request taken off.
    """
    deadline = time.monotonic() + settle
    while True:
        gauges = await _gauges(http, url, headers)
        busy = [value for value in gauges.values() if value]
        if not busy or time.monotonic() > deadline:
            return gauges
        await asyncio.sleep(0.5)


async def _ready(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> dict[str, Any]:
    """The gateway's /ready answer (its worker lists); empty when it cannot be read."""
    try:
        ready = (await http.get(f"{url}/ready", headers=headers, timeout=10)).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return ready if isinstance(ready, dict) else {}


async def _gauges(
    http: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> dict[str, float | None]:
    text = await _scrape(http, f"{url}/metrics", headers)
    in_flight = metric_sum(text, "spiritlm_requests_in_flight")
    gauges: dict[str, float | None] = {
        "gateway_in_flight": None if in_flight is None else in_flight - 1,
        "gateway_realtime_sessions": metric_sum(text, "spiritlm_realtime_sessions_active"),
    }
    ready = await _ready(http, url, headers)
    for worker in ready.get("speech_workers", {}):
        text = await _scrape(http, f"{worker}/metrics", {})
        gauges[f"speech_active_streams {worker}"] = metric_sum(
            text, "spiritlm_speech_active_streams"
        )
    for worker in ready.get("lm_workers", {}):
        text = await _scrape(http, f"{worker}/metrics", {})
        gauges[f"vllm_running {worker}"] = metric_sum(text, "vllm:num_requests_running")
    return gauges


def histogram_mean(text: str, name: str, labels: str = "") -> float | None:
    """Mean of a Prometheus histogram (all series whose labels contain `labels`)."""
    total = count = 0.0
    pattern = rf"^{re.escape(name)}_(sum|count)\{{([^}}]*)\}}\s+([0-9.eE+-]+)$"
    for match in re.finditer(pattern, text, re.M):
        if labels in match.group(2):
            if match.group(1) == "sum":
                total += float(match.group(3))
            else:
                count += float(match.group(3))
    return total / count if count else None


async def server_figures(
    http: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> dict[str, float | None]:
    """What the servers measured themselves over the run (means of their histograms)."""
    gateway = await _scrape(http, f"{url}/metrics", headers)
    figures = {
        "gateway: time to first audio, mean (s)": histogram_mean(
            gateway, "spiritlm_time_to_first_audio_seconds"
        ),
        "gateway: real-time factor, mean": histogram_mean(gateway, "spiritlm_real_time_factor"),
    }
    ready = await _ready(http, url, headers)
    for worker in ready.get("speech_workers", {}):
        text = await _scrape(http, f"{worker}/metrics", {})
        rtf = "spiritlm_speech_real_time_factor"
        figures.update(
            {
                "speech worker: streaming RTF, mean": histogram_mean(text, rtf, '"stream"'),
                "speech worker: encode RTF, mean": histogram_mean(text, rtf, '"encode"'),
                "speech worker: stream first audio, mean (s)": histogram_mean(
                    text, "spiritlm_speech_stream_first_audio_seconds"
                ),
            }
        )
    return figures


# ---- summary


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    array = np.asarray(values, dtype=np.float64)
    return {f"p{q}": float(np.percentile(array, q)) for q in (50, 95, 99)}


def endpoint_summary(records: list[Record], kinds: list[str]) -> dict[str, dict[str, Any]]:
    summary = {}
    for kind in kinds:
        mine = [record for record in records if record.kind == kind]
        firsts = [r.first_audio for r in mine if r.ok and r.first_audio is not None]
        summary[kind] = {
            "requests": len(mine),
            "errors": sum(1 for record in mine if not record.ok),
            "latency": percentiles([record.latency for record in mine if record.ok]),
            "first_audio": percentiles(firsts),
        }
    return summary


def rss_growth(samples: list[RssSample], warmup: float) -> list[dict[str, Any]]:
    """Per process: RSS after warm-up, at the end, growth in percent, and the peak."""
    by_pid: dict[int, list[RssSample]] = {}
    for sample in samples:
        by_pid.setdefault(sample.pid, []).append(sample)
    rows = []
    for pid, mine in sorted(by_pid.items(), key=lambda item: item[1][0].role):
        settled = sorted((s for s in mine if s.seconds >= warmup), key=lambda s: s.seconds)
        if len(settled) < 2:
            continue
        window = max(1, len(settled) // 10)
        start = statistics.median(s.rss for s in settled[:window])
        end = statistics.median(s.rss for s in settled[-window:])
        rows.append(
            {
                "pid": pid,
                "role": mine[0].role,
                "rss_after_warmup": int(start),
                "rss_end": int(end),
                "growth_percent": (end - start) / start * 100 if start else None,
                "rss_peak": max(s.rss for s in mine),
                "samples": len(settled),
            }
        )
    return rows


def summarize_run(run: LoadRun) -> dict[str, Any]:
    records = run.records
    failed = [record for record in records if not record.ok]
    memory = rss_growth(run.rss, run.config.warmup_seconds())
    worst = max((row["growth_percent"] or 0.0 for row in memory), default=None)
    return {
        "url": run.url,
        "kinds": run.kinds,
        "notes": run.notes,
        "wall_seconds": run.wall,
        "requests": len(records),
        "errors": len(failed),
        "achieved_rate": len(records) / run.wall if run.wall else 0.0,
        "endpoints": endpoint_summary(records, run.kinds),
        "error_messages": Counter(f"{r.kind}: {r.error}" for r in failed).most_common(10),
        "rss": memory,
        "worst_rss_growth_percent": worst,
        "after": run.after,
        "servers": run.servers,
        "targets": {
            "errors_zero": not failed,
            "rss_growth_below": run.config.max_rss_growth,
            "rss_growth_ok": worst is None or worst < run.config.max_rss_growth,
        },
    }


# ---- output


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _mib(value: int) -> str:
    return f"{value / 2**20:.0f}"


def markdown(summary: dict[str, Any], config: LoadConfig) -> str:
    lines = [
        f"{summary['requests']} requests in {summary['wall_seconds']:.0f} s "
        f"({summary['achieved_rate']:.2f}/s; asked {config.rate:g}/s, at most "
        f"{config.max_in_flight} in flight), **{summary['errors']} failed**.",
        "",
        "| endpoint | requests | errors | latency p50 (s) | p95 | p99 "
        "| first audio p50 (s) | p95 | p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, row in summary["endpoints"].items():
        latency, first = row["latency"], row["first_audio"]
        lines.append(
            f"| {kind} | {row['requests']} | {row['errors']} | {_seconds(latency['p50'])} | "
            f"{_seconds(latency['p95'])} | {_seconds(latency['p99'])} | "
            f"{_seconds(first['p50'])} | {_seconds(first['p95'])} | {_seconds(first['p99'])} |"
        )
    if summary["rss"]:
        lines += [
            "",
            f"RSS after the {config.warmup_seconds():.0f} s warm-up and at the end (medians of "
            "the first and last tenth of the samples):",
            "",
            "| process | pid | after warm-up (MiB) | end (MiB) | growth | peak (MiB) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in summary["rss"]:
            growth = row["growth_percent"]
            lines.append(
                f"| {row['role']} | {row['pid']} | {_mib(row['rss_after_warmup'])} | "
                f"{_mib(row['rss_end'])} | {'-' if growth is None else f'{growth:+.1f} %'} | "
                f"{_mib(row['rss_peak'])} |"
            )
    if summary["error_messages"]:
        lines += ["", "Failures (most frequent first):", ""]
        lines += [f"- {count} x {message}" for message, count in summary["error_messages"]]
    if summary["notes"]:
        lines += ["", *[f"- {note}" for note in summary["notes"]]]
    after = ", ".join(
        f"{name} {'-' if value is None else f'{value:g}'}"
        for name, value in summary["after"].items()
    )
    lines += ["", f"After the traffic: {after}."]
    figures = [f"{name} {value:.3f}" for name, value in summary["servers"].items() if value]
    if figures:
        lines += ["", "Measured by the servers: " + "; ".join(figures) + "."]
    return "\n".join(lines) + "\n"


def write_outputs(run: LoadRun, summary: dict[str, Any], directory: Path) -> list[Path]:
    """load.json (config, summary, RSS timeline), load-requests.csv, load-rss.csv."""
    directory.mkdir(parents=True, exist_ok=True)
    report = {
        "config": asdict(run.config),
        "summary": summary,
        "rss_samples": [asdict(sample) for sample in run.rss],
    }
    paths = [directory / "load.json", directory / "load-requests.csv", directory / "load-rss.csv"]
    paths[0].write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    with paths[1].open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["kind", "started_s", "latency_s", "ok", "first_audio_s", "error"])
        for r in run.records:
            writer.writerow([r.kind, f"{r.started:.3f}", f"{r.latency:.4f}", int(r.ok),
                             "" if r.first_audio is None else f"{r.first_audio:.4f}",
                             r.error or ""])  # fmt: skip
    with paths[2].open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["seconds", "pid", "role", "rss_bytes"])
        for s in run.rss:
            writer.writerow([f"{s.seconds:.2f}", s.pid, s.role, s.rss])
    return paths
