"""scripts/make_performance_report.py: every axis of every plot shows tick labels.

The script runs in the report venv (matplotlib; scripts/install_report_tools.sh makes it, and
the test skips, saying why, only when it cannot be installed) on small results of every kind it
reads, among them a load test whose first-audio times all lie within one decade (0.3 to 0.6 s):
a log axis with ticks at powers of ten only shows no number there. Each PNG records the tick
labels it shows (its `TickLabels` text chunk), read back here with the standard library.
"""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from service.bench.realtime import LevelResult, Report, SessionResult, markdown_section
from tests.support.paths import REPO

SCRIPT = REPO / "scripts" / "make_performance_report.py"
FIRST_AUDIO = [0.31, 0.34, 0.38, 0.41, 0.45, 0.52, 0.58]


@pytest.fixture(scope="module")
def report_python() -> Path:
    install = subprocess.run(
        ["bash", str(REPO / "scripts" / "install_report_tools.sh")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    python = REPO / install.stdout.strip().splitlines()[-1] if install.stdout.strip() else None
    if install.returncode != 0 or python is None or not python.is_file():
        reason = (install.stderr or install.stdout).strip().splitlines()[-3:]
        pytest.skip("matplotlib could not be installed: " + " | ".join(reason))
    return python


def png_text(path: Path) -> dict[str, str]:
    """The tEXt/iTXt chunks of a PNG file."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    texts, offset = {}, 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            texts[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _language, _, rest = rest.partition(b"\0")
            _translated, _, value = rest.partition(b"\0")
            texts[key.decode("latin-1")] = (
                zlib.decompress(value) if compressed else value
            ).decode()
    return texts


def numbers(labels: list[str]) -> list[float]:
    return [float(label.replace("\u2212", "-")) for label in labels]


def level(sessions: int, streaming: bool, first: float, stall: float) -> LevelResult:
    results = [
        SessionResult(status="completed", latency=first + 0.05 * index, audio_seconds=4.0,
                      stall=stall if index == 0 else 0.0, speed=1.5 if streaming else None)
        for index in range(sessions)
    ]  # fmt: skip
    return LevelResult(sessions, streaming, results, wall=10.0, speech_rss=900 * 2**20,
                       gateway_rss=300 * 2**20)  # fmt: skip


def realtime_reports() -> list[Report]:
    reports = []
    for label, slow in (("per-stream", 1.0), ("batched", 0.4)):
        report = Report("http://127.0.0.1:1", "a stack", Path("speech.flac"), 9.1, 100,
                        label=label, speech_cores=1)  # fmt: skip
        for sessions in (1, 2, 4):
            report.levels.append(level(sessions, True, 0.3 * sessions * slow, 0.05 * sessions))
            report.levels.append(level(sessions, False, 1.0 * sessions, 0.0))
        reports.append(report)
    return reports


def write_inputs(root: Path) -> tuple[Path, Path, Path]:
    results, load_dir = root / "results", root / "load"
    results.mkdir()
    load_dir.mkdir()
    summary = {"requests": 4, "requests_per_s": 1.0, "tokens_per_s": 50.0, "latency_p50": 1.0,
               "latency_p95": 1.2, "first_p50": 0.2, "first_p95": 0.3}  # fmt: skip
    timings = [{"first_output": 0.2 + 0.01 * i} for i in range(4)]
    workload = {"max_tokens": 50, "modality": "speech",
                "baseline": {"summary": {**summary, "requests_per_s": 0.5}, "requests": timings},
                "ours": {str(c): {"summary": {**summary, "requests_per_s": 0.6 * c},
                                  "requests": timings} for c in (1, 4, 16)}}  # fmt: skip
    (results / "lm.json").write_text(json.dumps(
        {"workloads": {"text-to-speech": workload}, "machine": "test", "command": "x"}
    ))  # fmt: skip
    stages = [{"checkpoints": "tiny", "variant": v, "stage": stage, "rtf": rtf,
               "audio_seconds": 9.1} for v in ("spirit-lm-base-7b", "spirit-lm-expressive-7b")
              for stage, rtf in (("encode", 0.05), ("decode", 0.3))]  # fmt: skip
    (results / "speech.json").write_text(json.dumps({
        "stages": stages, "audio_seconds": 9.1, "machine": "test",
        "first_chunks": [{"checkpoints": "tiny", "variant": "b", "seconds": 0.02,
                          "units_needed": 25}]}))  # fmt: skip
    quantiles = {"p50": 0.4, "p95": 0.5, "p99": 0.6}
    endpoints = {kind: {"requests": 7, "errors": 0, "latency": quantiles, "first_audio": quantiles}
                 for kind in ("speech", "realtime")}  # fmt: skip
    load = {
        "summary": {"endpoints": endpoints, "requests": 14, "wall_seconds": 60.0,
                    "achieved_rate": 0.23, "errors": 0, "worst_rss_growth_percent": 1.0,
                    "rss": [], "error_messages": [], "after": {}},
        "config": {"rate": 0.25, "max_in_flight": 8, "max_rss_growth": 10.0, "warmup": 10.0,
                   "duration": 60.0},
        "rss_samples": [{"seconds": t, "pid": 7, "role": "gateway", "rss": (200 + t) * 2**20}
                        for t in range(0, 60, 5)],
    }  # fmt: skip
    (load_dir / "load.json").write_text(json.dumps(load))
    with (load_dir / "load-requests.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["kind", "ok", "first_audio_s"])
        writer.writeheader()
        for kind in ("speech", "realtime"):
            for value in FIRST_AUDIO:
                writer.writerow({"kind": kind, "ok": "1", "first_audio_s": value})
    benchmarks = root / "benchmarks.md"
    benchmarks.write_text(
        "# Benchmarks\n\n<!-- bench-realtime:start -->\n"
        + markdown_section("spiritlm-serve bench realtime --levels 1,2,4", *realtime_reports())
        + "\n<!-- bench-realtime:end -->\n"
    )
    return results, load_dir, benchmarks


def test_every_axis_of_every_plot_has_tick_labels(report_python: Path, tmp_path: Path) -> None:
    results, load_dir, benchmarks = write_inputs(tmp_path)
    output, images = tmp_path / "docs" / "performance.md", tmp_path / "docs" / "img"
    done = subprocess.run(
        [str(report_python), str(SCRIPT), "--results", str(results), "--load", str(load_dir),
         "--output", str(output), "--img-dir", str(images), "--benchmarks", str(benchmarks)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    plots = {path.name: json.loads(png_text(path)["TickLabels"]) for path in images.glob("*.png")}
    assert set(plots) == {
        f"perf-{name}.png"
        for name in ("throughput", "first-audio", "rtf", "load-latency", "load-rss", "realtime")
    }
    for name, axes in plots.items():
        assert axes, name
        for entry in axes:
            for which in ("x", "y"):
                assert entry[which], f"{name}: {entry['title']!r} has no {which} tick labels"
                if not entry[f"{which}categories"]:  # a scale: its label names the unit
                    assert entry[f"{which}label"], f"{name}: {entry['title']!r}: no {which} label"
    # The load test's first-audio CDF: numbers inside the measured range on its time axis.
    cdf = next(e for e in plots["perf-first-audio.png"] if "CDF" in e["title"])
    ticks = numbers(cdf["x"])
    assert len(ticks) >= 2
    assert min(FIRST_AUDIO) * 0.8 <= min(ticks) and max(ticks) <= max(FIRST_AUDIO) * 1.25
    # The realtime plot: sessions on x, one p50 and one p95 line per stack, stalls per stack.
    first, stall = plots["perf-realtime.png"]
    assert first["x"] == stall["x"] == ["1", "2", "4"]
    assert first["legend"] == ["per-stream: p50", "per-stream: p95", "batched: p50", "batched: p95"]
    assert stall["legend"][:2] == ["per-stream", "batched"]
    assert max(numbers(first["y"])) >= 0.3 * 4 * 1.0  # the slowest p95 is inside the view
    text = output.read_text()
    assert "![realtime sessions](img/perf-realtime.png)" in text
    assert "spiritlm-serve bench realtime --levels 1,2,4" in text


def test_an_axis_without_tick_labels_is_refused(report_python: Path, tmp_path: Path) -> None:
    """The check in `save` itself: the old CDF setup (no labels off powers of ten) fails."""
    probe = (
        "import sys, pathlib, matplotlib.ticker as t\n"
        f"sys.path.insert(0, {str(SCRIPT.parent)!r})\n"
        "import make_performance_report as r\n"
        "figure, ax = r.plt.subplots()\n"
        "ax.plot([0.31, 0.58], [0, 1])\n"
        "ax.set_xscale('log')\n"
        "ax.xaxis.set_major_formatter(t.FormatStrFormatter('%g'))\n"
        "ax.xaxis.set_minor_formatter(t.NullFormatter())\n"
        "r.save(figure, pathlib.Path(sys.argv[1]))\n"
    )
    done = subprocess.run(
        [str(report_python), "-c", probe, str(tmp_path / "bad.png")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "the x axis" in done.stderr and "fewer than 2" in done.stderr
    assert not (tmp_path / "bad.png").exists()
