"""Markdown of the LM benchmark: one table per workload, the targets, the docs section."""

from __future__ import annotations

import datetime

from service.bench.lm import BenchResult, WorkloadResult
from service.bench.report import Summary, machine_description
from service.lm.prompt import OutputModality

THROUGHPUT_TARGET = 5.0  # ours / baseline requests per second at concurrency 16
THROUGHPUT_LEVEL = 16
FIRST_AUDIO_TARGET = 0.25  # ours time to first audio / baseline full response time


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(ours: float | None, baseline: float | None, digits: int = 1, unit: str = "x") -> str:
    if ours is None or not baseline:
        return "-"
    return f"{ours / baseline:.{digits}f}{unit}"


def _row(system: str, concurrency: int, s: Summary, baseline: Summary, speech: bool) -> str:
    cells = [
        system,
        str(concurrency),
        str(s.requests),
        f"{s.requests_per_s:.2f}",
        f"{s.tokens_per_s:.0f}",
        _seconds(s.latency_p50),
        _seconds(s.latency_p95),
        _seconds(s.first_p50),
        _seconds(s.first_p95),
        _ratio(s.requests_per_s, baseline.requests_per_s),
        _ratio(s.tokens_per_s, baseline.tokens_per_s),
        _ratio(s.first_p50, baseline.latency_p50, 2, unit=""),
    ]
    if speech:
        cells.append(f"{s.audio_seconds:.1f}")
    return "| " + " | ".join(cells) + " |"


def workload_table(model: str, result: WorkloadResult) -> str:
    workload = result.workload
    speech = workload.modality is OutputModality.SPEECH
    first = "first audio" if speech else "first text"
    headers = [
        "system",
        "concurrency",
        "requests",
        "req/s",
        "gen tok/s",
        "latency p50 (s)",
        "latency p95 (s)",
        f"{first} p50 (s)",
        f"{first} p95 (s)",
        "req/s vs baseline",
        "tok/s vs baseline",
        f"{first} p50 / baseline response p50",
    ]
    if speech:
        headers.append("audio per request (s)")
    lines = [
        f"### {workload.name} ({model}, {workload.modality.value} output, "
        f"max {workload.max_tokens} tokens)",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        _row("baseline: transformers, sequential", 1, result.baseline, result.baseline, speech),
    ]
    for concurrency, summary in sorted(result.ours.items()):
        lines.append(_row("ours: vLLM, streaming", concurrency, summary, result.baseline, speech))
    return "\n".join(lines)


def targets(result: BenchResult) -> str:
    """The LM benchmark's two targets, each reported as met or not, with the measured ratio.

    The targets are `THROUGHPUT_TARGET` and `FIRST_AUDIO_TARGET` above.
    """
    lines = []
    for item in result.workloads:
        ours = item.ours.get(THROUGHPUT_LEVEL)
        if ours is None:
            lines.append(f"- {item.workload.name}: concurrency {THROUGHPUT_LEVEL} was not run.")
            continue
        ratio = ours.requests_per_s / item.baseline.requests_per_s
        verdict = "met" if ratio >= THROUGHPUT_TARGET else "NOT met"
        lines.append(
            f"- Throughput at concurrency {THROUGHPUT_LEVEL}, {item.workload.name}: "
            f"{ratio:.1f}x the baseline's requests/s (target >= {THROUGHPUT_TARGET:.0f}x): "
            f"**{verdict}**."
        )
    for item in result.workloads:
        if item.workload.modality is not OutputModality.SPEECH:
            continue
        response = item.baseline.latency_p50
        for concurrency, summary in sorted(item.ours.items()):
            if summary.first_p50 is None:
                lines.append(f"- First audio at concurrency {concurrency}: no audio produced.")
                continue
            share = summary.first_p50 / response
            verdict = "met" if share < FIRST_AUDIO_TARGET else "NOT met"
            lines.append(
                f"- Time to first audio at concurrency {concurrency} ({item.workload.name}, "
                f"{summary.audio_seconds:.1f} s of audio per request): p50 "
                f"{summary.first_p50:.2f} s = {share:.2f} of the baseline's full response time "
                f"{response:.2f} s (target < {FIRST_AUDIO_TARGET}): **{verdict}**."
            )
    return "\n".join(lines)


def markdown(result: BenchResult) -> str:
    tables = [workload_table(result.model, item) for item in result.workloads]
    return "\n\n".join([*tables, "#### Targets", targets(result)])


def section(result: BenchResult, table: str, command: str) -> str:
    """The docs/benchmarks.md section: what was run, where, and the numbers."""
    config = result.config
    today = datetime.date.today().isoformat()
    server = f"the running one at {result.lm_url}" if result.lm_url else "started by the bench"
    start, end = (f"{x:.1f}" if x is not None else "?" for x in result.load)
    return f"""## LM generation

- Date: {today}
- Machine: {machine_description()}; 1-minute load average {start} at the start, {end} at the
  end (other jobs shared the cores)
- Command: `{command}`
- Model: {result.model}; vLLM server: {server}. Sampling: temperature {config.temperature},
  top_p {config.top_p}, a distinct seed and a distinct prompt per request (no prefix-cache reuse).
- Baseline: the official implementation's path: `LlamaForCausalLM.generate` (float32) with the
  banned ids of docs/format.md#banned-ids-per-output-modality (plus the padding rows, as
  ours) as `bad_words_ids`,
  {config.baseline_requests} request(s) one at a time, then `SpeechStack.decode` of the whole
  speech output; "first audio" is the full response time.
- Ours: `Generator.stream` on vLLM (token ids in/out, `allowed_token_ids`), `concurrency`
  requests in flight ({config.requests} per level, at least the concurrency), speech vocoded as
  it streams by one `StreamingVocoder` per request on one vocoder thread in the bench process.
  "first audio" is when the first audio chunk is ready.
- Latencies are per request from its own start; throughput is over the wall time of the level.
- Read with care: the checkpoints are the embedded tiny random-weight ones unless the command
  names real ones, so per-token compute is tiny and the ratios mostly measure serving overhead
  (batching, streaming, per-step framework cost, the baseline's `bad_words_ids` processing of
  32k single-token lists for speech output), not 7B-model compute. The cores were shared with
  other jobs (load averages above), so single runs vary by tens of percent.

{table}
"""
