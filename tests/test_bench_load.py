"""The load test tool: its bookkeeping on known data, and a short real run against the stack.

The real run drives the session's gateway (`--url`) for 20 s with every kind of traffic and
checks what the tool reports: no failed request, every kind exercised, percentiles that agree
with the per-request CSV, RSS samples of the gateway and its workers (found from their ports),
and nothing left in flight afterwards.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from service.bench.load import (
    LoadConfig,
    Record,
    endpoint_summary,
    histogram_mean,
    metric_sum,
    parse_mix,
    rss_growth,
)
from service.bench.processes import RssSample
from service.checkpoints.layout import BASE
from service.cli import parse_args
from tests.support.servers import Servers


def test_parse_mix() -> None:
    assert parse_mix("speech=2, tokenize ,realtime=0.5") == {
        "speech": 2.0,
        "tokenize": 1.0,
        "realtime": 0.5,
    }
    with pytest.raises(ValueError, match="kind=weight"):
        parse_mix("speech=lots")


@pytest.mark.parametrize(
    "config, problem",
    [
        (LoadConfig(duration=0), "must be > 0"),
        (LoadConfig(duration=10, warmup=10), "warm-up"),
        (LoadConfig(mix={"telepathy": 1.0}), "unknown traffic kind"),
        (LoadConfig(mix={"speech": 0.0}), "no kind with a positive weight"),
    ],
)
def test_config_is_checked(config: LoadConfig, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        config.check()


def test_rss_growth_ignores_warmup_and_uses_window_medians() -> None:
    samples = []
    for second in range(100):
        # Grows during the 20 s warm-up, then flat with one spike, then 10 % higher at the end.
        rss = 100 + min(second, 20) * 5 if second < 80 else 220
        if second == 50:
            rss = 900
        samples.append(RssSample(float(second), 7, "gateway", rss))
    [row] = rss_growth(samples, warmup=20.0)
    assert row["rss_after_warmup"] == 200 and row["rss_end"] == 220
    assert row["growth_percent"] == pytest.approx(10.0)
    assert row["rss_peak"] == 900


def test_endpoint_summary_counts_failures_and_skips_them_in_latency() -> None:
    records = [Record("speech", float(i), float(i + 1), True, 0.5 * i, None) for i in range(10)]
    records.append(Record("speech", 11.0, 999.0, False, None, "boom"))
    summary = endpoint_summary(records, ["speech", "tokenize"])
    assert summary["speech"]["requests"] == 11 and summary["speech"]["errors"] == 1
    assert summary["speech"]["latency"]["p99"] < 11  # the failed 999 s is not a latency
    assert summary["speech"]["first_audio"]["p50"] == pytest.approx(2.25)
    assert summary["tokenize"] == {
        "requests": 0,
        "errors": 0,
        "latency": {"p50": None, "p95": None, "p99": None},
        "first_audio": {"p50": None, "p95": None, "p99": None},
    }


def test_metric_sum_reads_labelled_and_plain_samples() -> None:
    text = '# HELP x\nfoo 2\nfoo{a="1"} 3.5\nfoo_total 9\nbar{b="2"} 1e3\n'
    assert metric_sum(text, "foo") == 5.5
    assert metric_sum(text, "bar") == 1000.0
    assert metric_sum(text, "baz") is None


def test_histogram_mean_filters_by_label() -> None:
    text = (
        'rtf_sum{model="a",operation="stream"} 6.0\nrtf_count{model="a",operation="stream"} 3\n'
        'rtf_sum{model="a",operation="encode"} 1.0\nrtf_count{model="a",operation="encode"} 4\n'
        'rtf_bucket{le="1.0"} 7\n'
    )
    assert histogram_mean(text, "rtf", 'operation="stream"') == 2.0
    assert histogram_mean(text, "rtf") == 1.0
    assert histogram_mean(text, "rtf", "decode") is None


def run_command(argv: list[str]) -> int:
    args = parse_args(argv)
    return args.handler(args)


@pytest.mark.slow
def test_short_run_against_the_stack(servers: Servers, tmp_path: Path) -> None:
    gateway = servers.gateway(BASE)
    output = tmp_path / "load"
    code = run_command(
        ["bench", "load", "--url", gateway, "--duration", "20", "--rate", "0.5", "--seed", "3",
         "--speech-tokens", "20", "--text-tokens", "8", "--timeout", "90",
         "--mix", "generate-text,generate-speech,transcription,speech,tokenize,realtime",
         "--output-dir", str(output)]
    )  # fmt: skip
    report = json.loads((output / "load.json").read_text())
    summary = report["summary"]
    assert summary["errors"] == 0, summary["error_messages"]
    assert code == 0 or not summary["targets"]["rss_growth_ok"]
    with (output / "load-requests.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == summary["requests"] >= 5
    kinds = {row["kind"] for row in rows}
    assert len(kinds) >= 3, kinds
    for kind in kinds:
        latencies = [float(row["latency_s"]) for row in rows if row["kind"] == kind]
        expected = float(np.percentile(latencies, 50))
        assert summary["endpoints"][kind]["latency"]["p50"] == pytest.approx(expected, abs=1e-3)
        if kind in ("generate-speech", "speech", "realtime"):
            assert summary["endpoints"][kind]["first_audio"]["p50"] > 0
    roles = {sample["role"] for sample in report["rss_samples"]}
    assert {"gateway", "speech worker", "lm worker (vLLM API server)"} <= roles, roles
    assert summary["after"]["gateway_in_flight"] == 0
    assert all(value == 0 for name, value in summary["after"].items() if value is not None)
    assert summary["servers"]["speech worker: encode RTF, mean"] > 0
