#!/usr/bin/env python3
"""docs/performance.md and its plots from the JSON results of the benchmarks.

Inputs (each optional; a missing one leaves its section saying how to produce it):
  RESULTS/lm.json      spiritlm-serve bench report (baseline vs ours per concurrency)
  RESULTS/speech.json  spiritlm-serve bench report (speech model real-time factors)
  LOAD/load.json       spiritlm-serve bench load (errors, latency, RSS over time)
  BENCHMARKS           docs/benchmarks.md: the table of its `bench realtime` section

Every axis of every plot carries tick labels: log axes get `ReadableLogLocator`, and `save`
refuses a figure with an unlabelled axis. Each PNG records the tick labels it shows in its
`TickLabels` text chunk (JSON, one entry per axes), which tests/test_performance_report.py reads.

Needs matplotlib, which the project venv does not carry: run it with the report venv's python
(scripts/install_report_tools.sh prints it), as `spiritlm-serve bench report` does. Only the
standard library, numpy and matplotlib are used, so the project need not be importable.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

SPEECH_KINDS = ("generate-speech", "speech", "realtime")
COLORS = {"ours": "#1f77b4", "baseline": "#d62728"}
REPO = Path(__file__).resolve().parents[1]
REALTIME_SECTION = "bench-realtime"  # service/bench/realtime.py SECTION
STALL_LIMIT = 0.25  # service/bench/realtime.py STALL_LIMIT


def load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ---- readable axes -------------------------------------------------------------------------


class ReadableLogLocator(matplotlib.ticker.Locator):
    """Ticks of a log axis at 1, 2 and 5 times the powers of ten within the view.

    matplotlib's default puts major ticks only at powers of ten, so an axis spanning less than a
    decade (0.3 to 0.9 s, say) shows none; with minor labels switched off it shows no number at
    all. Where even 1-2-5 leaves fewer than two ticks in view, evenly spaced round values are
    used instead.
    """

    def __call__(self) -> list[float]:
        low, high = sorted(self.axis.get_view_interval())
        return self.tick_values(low, high)

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        low, high = sorted((vmin, vmax))
        if high <= 0:
            return []
        low = max(low, high * 1e-9)
        decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
        ticks = [m * 10.0**d for d in decades for m in (1, 2, 5)]
        inside = [t for t in ticks if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]
        if len(inside) > 8:  # many decades: the powers of ten suffice
            inside = [t for t in inside if np.isclose(t, 10.0 ** np.round(np.log10(t)))]
        if len(inside) >= 2:
            return inside
        even = matplotlib.ticker.MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10])
        return [t for t in even.tick_values(low, high) if low <= t <= high and t > 0]


def number(value: float, _position: float | None = None) -> str:
    return f"{value:g}"


def log_axis(ax: plt.Axes, which: str) -> None:
    """A log scale on axis `which` ("x" or "y") with numbers as tick labels."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_locator(ReadableLogLocator())
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(number))
    axis.set_minor_locator(matplotlib.ticker.LogLocator(subs="all"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def tick_labels(figure: plt.Figure) -> list[dict[str, Any]]:
    """What each axes shows (after drawing): title, tick labels and label of x and y, legend."""
    figure.canvas.draw()
    shown = []
    for ax in figure.axes:
        legend = ax.get_legend()
        entry: dict[str, Any] = {
            "title": ax.get_title(),
            "legend": [text.get_text() for text in legend.get_texts()] if legend else [],
        }
        for which, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            low, high = sorted(axis.get_view_interval())
            entry[which] = [
                label.get_text()
                for tick, label in zip(axis.get_majorticklocs(), axis.get_ticklabels(), strict=True)
                if label.get_visible() and label.get_text().strip()
                and low - 1e-12 * abs(low) <= tick <= high + 1e-12 * abs(high)
            ]  # fmt: skip
            entry[f"{which}label"] = axis.get_label_text()
            # Ticks placed one per category (bars, boxes) rather than along a scale.
            entry[f"{which}categories"] = isinstance(
                axis.get_major_locator(), matplotlib.ticker.FixedLocator
            )
        shown.append(entry)
    return shown


def check_tick_labels(shown: list[dict[str, Any]], path: Path) -> None:
    """Every axis shows numbers, at least two (a scale needs two), or its category names."""
    for entry in shown:
        for which in ("x", "y"):
            needed = 1 if entry[f"{which}categories"] else 2
            if len(entry[which]) < needed:
                raise RuntimeError(
                    f"{path.name}: the {which} axis of {entry['title'] or 'a plot'!r} "
                    f"({entry[which + 'label']!r}) shows {len(entry[which])} tick label(s), "
                    f"fewer than {needed}: {entry[which]}"
                )


def save(figure: plt.Figure, path: Path) -> None:
    figure.tight_layout()
    shown = tick_labels(figure)
    check_tick_labels(shown, path)
    figure.savefig(path, dpi=110, metadata={"TickLabels": json.dumps(shown)})
    plt.close(figure)


# ---- LM: throughput and time to first audio ------------------------------------------------


def throughput_plot(lm: dict[str, Any], path: Path) -> None:
    workloads = lm["workloads"]
    figure, axes = plt.subplots(1, len(workloads), figsize=(5.2 * len(workloads), 3.8))
    for ax, (name, workload) in zip(np.atleast_1d(axes), workloads.items(), strict=False):
        levels = sorted(workload["ours"], key=int)
        x = [int(level) for level in levels]
        y = [workload["ours"][level]["summary"]["requests_per_s"] for level in levels]
        base = workload["baseline"]["summary"]["requests_per_s"]
        ax.plot(x, y, "o-", color=COLORS["ours"], label="ours: vLLM + streaming vocoder")
        ax.axhline(base, ls="--", color=COLORS["baseline"],
                   label="baseline: transformers, one at a time")  # fmt: skip
        for xi, yi in zip(x, y, strict=False):
            ax.annotate(f"{yi / base:.1f}x", (xi, yi), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=8)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(v) for v in x])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel("requests per second")
        ax.set_title(f"{name} ({workload['max_tokens']} tokens)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper left")
    save(figure, path)


def first_audio_plot(lm: dict[str, Any] | None, load_report: dict[str, Any] | None,
                     path: Path) -> bool:  # fmt: skip
    panels = []
    speech = lm["workloads"].get("text-to-speech") if lm else None
    if speech:
        panels.append("lm")
    firsts = load_first_audio(load_report) if load_report else {}
    if firsts:
        panels.append("load")
    if not panels:
        return False
    figure, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 3.9))
    axes = np.atleast_1d(axes)
    for ax, panel in zip(axes, panels, strict=False):
        if panel == "lm":
            levels = sorted(speech["ours"], key=int)
            data = [[r["first_output"] for r in speech["ours"][lv]["requests"]
                     if r["first_output"] is not None] for lv in levels]  # fmt: skip
            base = [r["first_output"] for r in speech["baseline"]["requests"]]
            ax.boxplot([base, *data], tick_labels=["baseline", *[f"ours c={lv}" for lv in levels]],
                       showfliers=True)  # fmt: skip
            log_axis(ax, "y")
            ax.set_ylabel("seconds to first audio")
            ax.set_title("text-to-speech: first audio per request")
            ax.tick_params(axis="x", labelsize=8)
        else:
            for kind, values in firsts.items():
                values = np.sort(values)
                ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post",
                        label=f"{kind} (n={len(values)})")  # fmt: skip
            log_axis(ax, "x")
            ax.set_xlabel("seconds to first audio")
            ax.set_ylabel("fraction of requests")
            ax.set_title("load test: first audio (CDF)")
            ax.legend(fontsize=8)
    save(figure, path)
    return True


def load_first_audio(report: dict[str, Any]) -> dict[str, list[float]]:
    requests = report.get("requests") or []
    out: dict[str, list[float]] = {}
    for row in requests:
        if row["ok"] and row["first_audio"] is not None and row["kind"] in SPEECH_KINDS:
            out.setdefault(row["kind"], []).append(row["first_audio"])
    return out


def lm_tables(lm: dict[str, Any]) -> list[str]:
    lines = []
    for name, workload in lm["workloads"].items():
        base = workload["baseline"]["summary"]
        first = "first audio" if workload["modality"] == "speech" else "first text"
        lines += [
            f"**{name}** ({workload['max_tokens']} tokens per request):",
            "",
            f"| system | concurrency | requests | req/s | vs baseline | gen tok/s "
            f"| latency p50 (s) | p95 | {first} p50 (s) | p95 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        rows = [("baseline", "1 (sequential)", base)]
        rows += [("ours", level, workload["ours"][level]["summary"])
                 for level in sorted(workload["ours"], key=int)]  # fmt: skip
        for system, level, s in rows:
            lines.append(
                f"| {system} | {level} | {s['requests']} | {s['requests_per_s']:.2f} | "
                f"{s['requests_per_s'] / base['requests_per_s']:.1f}x | {s['tokens_per_s']:.0f} | "
                f"{fmt(s['latency_p50'])} | {fmt(s['latency_p95'])} | {fmt(s['first_p50'])} | "
                f"{fmt(s['first_p95'])} |"
            )
        lines.append("")
    return lines


# ---- speech models -------------------------------------------------------------------------


def rtf_plot(speech: dict[str, Any], path: Path) -> None:
    stages = speech["stages"]
    sets = list(dict.fromkeys(stage["checkpoints"] for stage in stages))
    labels = list(dict.fromkeys(f"{short(s['variant'])}: {s['stage']}" for s in stages))
    figure, ax = plt.subplots(figsize=(9.5, 0.45 * len(labels) + 1.6))
    height = 0.8 / len(sets)
    for index, name in enumerate(sets):
        values = {f"{short(s['variant'])}: {s['stage']}": s["rtf"] for s in stages
                  if s["checkpoints"] == name}  # fmt: skip
        y = np.arange(len(labels)) + index * height
        ax.barh(y, [values.get(label, np.nan) for label in labels], height=height, label=name)
    ax.axvline(1.0, color="black", lw=0.8, ls="--")
    ax.text(1.0, -0.6, " real time", fontsize=8, va="top")
    ax.set_yticks(np.arange(len(labels)) + 0.4 - height / 2, labels, fontsize=8)
    ax.invert_yaxis()
    log_axis(ax, "x")
    ax.set_xlabel("real-time factor (compute seconds per audio second; < 1 is faster)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(sets))
    save(figure, path)


def short(variant: str) -> str:
    return "expressive" if "expressive" in variant else "base"


def speech_tables(speech: dict[str, Any]) -> list[str]:
    lines = ["| checkpoints | model | stage | audio (s) | RTF |", "|---|---|---|---:|---:|"]
    for s in speech["stages"]:
        lines.append(f"| {s['checkpoints']} | {short(s['variant'])} | {s['stage']} | "
                     f"{s['audio_seconds']:.2f} | {s['rtf']:.3f} |")  # fmt: skip
    lines += ["", "| checkpoints | model | streaming first chunk (ms) | units needed |",
              "|---|---|---:|---:|"]  # fmt: skip
    for c in speech["first_chunks"]:
        lines.append(f"| {c['checkpoints']} | {short(c['variant'])} | {c['seconds'] * 1000:.1f} "
                     f"| {c['units_needed']} |")  # fmt: skip
    return lines


# ---- load test -----------------------------------------------------------------------------


def load_plots(report: dict[str, Any], latency_path: Path, rss_path: Path) -> None:
    summary = report["summary"]
    kinds = list(summary["endpoints"])
    figure, ax = plt.subplots(figsize=(8.5, 3.6))
    width = 0.27
    for index, q in enumerate(("p50", "p95", "p99")):
        values = [summary["endpoints"][k]["latency"][q] or np.nan for k in kinds]
        ax.bar(np.arange(len(kinds)) + (index - 1) * width, values, width, label=q)
    ax.set_xticks(np.arange(len(kinds)), kinds, fontsize=8)
    log_axis(ax, "y")
    ax.set_ylabel("latency of successful requests (s)")
    ax.set_title("load test: latency per endpoint")
    ax.legend(fontsize=8)
    save(figure, latency_path)

    figure, ax = plt.subplots(figsize=(8.5, 3.8))
    by_pid: dict[int, list[tuple[float, int, str]]] = {}
    for sample in report["rss_samples"]:
        by_pid.setdefault(sample["pid"], []).append(
            (sample["seconds"], sample["rss"], sample["role"])
        )
    for pid, rows in sorted(by_pid.items(), key=lambda item: -item[1][-1][1]):
        rows.sort()
        ax.plot([r[0] for r in rows], [r[1] / 2**20 for r in rows], label=f"{rows[0][2]} ({pid})")
    ax.axvspan(0, report["config_warmup"], color="grey", alpha=0.15, label="warm-up")
    ax.set_xlabel("seconds since the start of the traffic")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title("load test: memory of every process of the stack")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    save(figure, rss_path)


def load_tables(report: dict[str, Any]) -> list[str]:
    s, config = report["summary"], report["config"]
    lines = [
        f"{s['requests']} requests in {s['wall_seconds']:.0f} s ({s['achieved_rate']:.2f}/s; "
        f"asked {config['rate']:g}/s with at most {config['max_in_flight']} in flight): "
        f"**{s['errors']} failed** (target 0). Worst RSS growth after the "
        f"{report['config_warmup']:.0f} s warm-up: **{fmt(s['worst_rss_growth_percent'], 1)} %** "
        f"(target < {config['max_rss_growth']:g} %).",
        "",
        "| endpoint | requests | errors | latency p50 (s) | p95 | p99 | first audio p50 (s) "
        "| p95 | p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, row in s["endpoints"].items():
        lat, first = row["latency"], row["first_audio"]
        lines.append(
            f"| {kind} | {row['requests']} | {row['errors']} | {fmt(lat['p50'])} | "
            f"{fmt(lat['p95'])} | {fmt(lat['p99'])} | {fmt(first['p50'])} | "
            f"{fmt(first['p95'])} | {fmt(first['p99'])} |"
        )
    lines += ["", "| process | after warm-up (MiB) | end (MiB) | growth | peak (MiB) |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for row in s["rss"]:
        growth = row["growth_percent"]
        lines.append(
            f"| {row['role']} | {row['rss_after_warmup'] / 2**20:.0f} | "
            f"{row['rss_end'] / 2**20:.0f} | {'-' if growth is None else f'{growth:+.1f} %'} | "
            f"{row['rss_peak'] / 2**20:.0f} |"
        )
    if s["error_messages"]:
        lines += ["", "Failures, most frequent first:", ""]
        lines += [f"- {count} x {message[:200]}" for message, count in s["error_messages"]]
    if s.get("notes"):
        lines += ["", *[f"- {note}" for note in s["notes"]]]
    after = ", ".join(
        f"{name} = {'-' if value is None else f'{value:g}'}" for name, value in s["after"].items()
    )
    lines += ["", f"Left over after the traffic (leak check): {after}."]
    figures = [f"{name}: {value:.3f}" for name, value in s.get("servers", {}).items() if value]
    if figures:
        lines += ["", "Measured by the servers themselves over the run: " + "; ".join(figures)
                  + "."]  # fmt: skip
    return lines


def load_requests(load_dir: Path) -> list[dict[str, Any]]:
    """Per-request rows of load-requests.csv (for the first-audio distribution)."""
    import csv

    path = load_dir / "load-requests.csv"
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as handle:
        return [
            {"kind": row["kind"], "ok": row["ok"] == "1",
             "first_audio": float(row["first_audio_s"]) if row["first_audio_s"] else None}
            for row in csv.DictReader(handle)
        ]  # fmt: skip


# ---- realtime sessions (the table of `bench realtime` in docs/benchmarks.md) ---------------


def realtime_results(path: Path) -> dict[str, Any] | None:
    """The command and the table rows (column name -> cell) of the `bench realtime` section."""
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    section = re.search(
        rf"<!-- {REALTIME_SECTION}:start -->(.*?)<!-- {REALTIME_SECTION}:end -->", text, re.S
    )
    if not section:
        return None
    body = section.group(1)
    command = re.search(r"^Command: `([^`]+)`", body, re.M)
    table = [line.strip() for line in body.splitlines() if line.strip().startswith("|")]
    if len(table) < 3:
        return None
    header = cells(table[0])
    rows = [dict(zip(header, cells(line), strict=False)) for line in table[2:]]
    needed = {"Sessions", "Audio out", "First audio p50 (s)", "p95 (s)", "Worst stall (s)"}
    if not needed <= set(header):
        raise RuntimeError(f"{path}: the {REALTIME_SECTION} table lacks {needed - set(header)}")
    return {"command": command.group(1) if command else None, "rows": rows}


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def seconds_cell(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # "–": no reply, or no stall figure
        return float("nan")


def realtime_plot(realtime: dict[str, Any], path: Path) -> None:
    """First audio p50/p95 and worst stall against sessions, streamed replies, one line a stack."""
    streamed = [row for row in realtime["rows"] if row["Audio out"] == "streamed"]
    stacks = list(dict.fromkeys(row.get("Stack", "") for row in streamed))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    figure, (first, stall) = plt.subplots(1, 2, figsize=(11, 3.9))
    levels = sorted({int(row["Sessions"]) for row in streamed})
    for index, stack in enumerate(stacks):
        rows = sorted((r for r in streamed if r.get("Stack", "") == stack),
                      key=lambda r: int(r["Sessions"]))  # fmt: skip
        x = [int(r["Sessions"]) for r in rows]
        color = colors[index % len(colors)]
        name = f"{stack}: " if stack else ""
        first.plot(x, [seconds_cell(r["First audio p50 (s)"]) for r in rows], "o-",
                   color=color, label=f"{name}p50")  # fmt: skip
        first.plot(x, [seconds_cell(r["p95 (s)"]) for r in rows], "s--", color=color,
                   label=f"{name}p95")  # fmt: skip
        stall.plot(x, [seconds_cell(r["Worst stall (s)"]) for r in rows], "o-", color=color,
                   label=stack or "streamed")  # fmt: skip
    stall.axhline(STALL_LIMIT, color="black", lw=0.8, ls=":",
                  label=f"keeps real time up to {STALL_LIMIT:g} s")  # fmt: skip
    for ax, ylabel, title in (
        (first, "seconds to first audio", "realtime sessions: first audio"),
        (stall, "worst stall of a session (s)", "realtime sessions: worst playback stall"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(level) for level in levels])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("concurrent sessions")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    save(figure, path)


# ---- findings: the numbers the sections are about -----------------------------------------


def findings(lm: dict | None, load_report: dict | None) -> list[str]:
    lines = []
    for name, workload in (lm or {}).get("workloads", {}).items():
        base = workload["baseline"]["summary"]
        levels = sorted(workload["ours"], key=int)
        best = max(levels, key=lambda lv: workload["ours"][lv]["summary"]["requests_per_s"])
        top = workload["ours"][best]["summary"]
        lines.append(
            f"- {name}: ours peaks at {top['requests_per_s']:.2f} req/s with {best} requests in "
            f"flight, {top['requests_per_s'] / base['requests_per_s']:.1f}x the sequential "
            f"baseline's {base['requests_per_s']:.2f} req/s."
        )
        one = workload["ours"][levels[0]]["summary"]
        if workload["modality"] == "speech" and one["first_p50"] is not None:
            lines.append(
                f"- {name}: with {levels[0]} request in flight the first audio comes after "
                f"{one['first_p50']:.2f} s (p50), against {base['latency_p50']:.2f} s for the "
                f"baseline, whose audio exists only when the whole response is done "
                f"({one['first_p50'] / base['latency_p50'] * 100:.0f} %)."
            )
    if load_report:
        s = load_report["summary"]
        lines.append(
            f"- Load test: {s['errors']} of {s['requests']} requests failed; the largest RSS "
            f"growth of a process after warm-up was {fmt(s['worst_rss_growth_percent'], 1)} %."
        )
    return lines


# ---- the document --------------------------------------------------------------------------

INTRO = """# Performance

Measured on the project's build machine: **CPU only**. No GPU was lent to this task, so there
are no GPU figures here; on a GPU the same commands measure the GPU path (`--device cuda`, the
CUDA vLLM build). The checkpoints are the embedded tiny ones (random weights in the official
layout; the speech section also has official-size random weights): the *shape* of the results
(how throughput scales with concurrency, how soon audio starts, whether memory stays flat) is
what these runs show; absolute numbers for the 7B model on a GPU are a different matter.

The machine is shared: 2 cores with other jobs running (the load averages are in the machine
lines), so absolute times are pessimistic and noisy. Every figure of one section comes from one
run, in which baseline and ours were measured side by side on the same machine.
"""


def document(lm: dict | None, speech: dict | None, load_report: dict | None,
             overload: dict | None, images: dict[str, str],
             overload_dir: Path | None = None, realtime: dict | None = None) -> str:  # fmt: skip
    parts = [INTRO, "## Reproduce", "", "```bash"]
    parts += ["# LM baseline vs ours, speech RTF, then this file and the plots",
              (lm or speech or {}).get("command", "spiritlm-serve bench report"),
              "# the load test (10 minutes; its load.json is read by bench report)",
              (load_report or {}).get("summary", {}).get("command",
                                                         "spiritlm-serve bench load"),
              *(["# realtime sessions (its table goes into docs/benchmarks.md)",
                 realtime["command"]] if realtime and realtime["command"] else []),
              "# only re-plot from existing results (here with the higher-rate run too)",
              "spiritlm-serve bench report --measure ''"
              + (f" --overload-dir {overload_dir}" if overload_dir else ""), "```", ""]  # fmt: skip
    summary = findings(lm, load_report)
    if summary:
        parts += ["## Summary", "", *summary, ""]
    parts += ["## Throughput against concurrency", ""]
    if lm:
        parts += [
            "Baseline = what the reference implementation does: transformers `generate`, one "
            "request at a time, the whole output vocoded at the end. Ours = the vLLM worker "
            "with that many streaming requests in flight and the streaming vocoder. Same "
            "checkpoints, prompts and sampling (temperature 0.9, top-p 0.95).",
            "", f"Machine: {lm['machine']}", "",
            f"![throughput]({images['throughput']})", "", *lm_tables(lm),
        ]  # fmt: skip
    else:
        parts += ["_Not measured yet: run `spiritlm-serve bench report --measure lm`._", ""]
    parts += ["## Time to first audio", ""]
    if "first_audio" in images:
        parts += [
            "Left: the LM benchmark's text-to-speech requests (the baseline returns audio only "
            "when the whole response is ready, so its first audio is its full latency). Right: "
            "the load test's speech requests, with all the other traffic around them.",
            "", f"![time to first audio]({images['first_audio']})", "",
        ]  # fmt: skip
    else:
        parts += ["_No data yet._", ""]
    parts += ["## Realtime voice sessions", ""]
    if realtime and "realtime" in images:
        parts += [
            "Concurrent voice sessions over WS /v1/realtime, streamed replies, one line per "
            "stack configuration; from the `bench realtime` section of "
            f"[benchmarks.md]({realtime['link']}), which has the full table (the whole-reply "
            "baseline, "
            "per-stream real-time factors, peak memory) and how it was measured. A level keeps "
            f"real time while no session's playback stalls more than {STALL_LIMIT:g} s.",
            "", f"![realtime sessions]({images['realtime']})", "",
        ]  # fmt: skip
    else:
        parts += ["_Not measured yet: run `spiritlm-serve bench realtime --output "
                  "docs/benchmarks.md`._", ""]  # fmt: skip
    parts += ["## Speech models: real-time factors", ""]
    if speech:
        parts += [
            f"On {speech['audio_seconds']:.1f} s of speech; median of the repeats. "
            f"Machine: {speech['machine']}", "",
            f"![real-time factors]({images['rtf']})", "", *speech_tables(speech), "",
        ]  # fmt: skip
    else:
        parts += ["_Not measured yet: run `spiritlm-serve bench report --measure speech`._", ""]
    parts += ["## Load test", ""]
    if load_report:
        parts += [
            "Mixed traffic, Poisson arrivals: /v1/generate (text, and speech streamed as SSE), "
            "/v1/audio/transcriptions, /v1/audio/speech (SSE), /v1/speech/tokenize and "
            "realtime sessions (WS /v1/realtime: one text turn answered in speech), against "
            "a stack started by the tool (`spiritlm-serve up`, tiny checkpoints). A request "
            "fails on any non-200 status, an error event, a stream without its final event, "
            "or no answer within the timeout.", "",
            *load_tables(load_report), "",
            f"![latency]({images['load_latency']})", "", f"![memory]({images['load_rss']})", "",
        ]  # fmt: skip
    else:
        parts += ["_Not run yet: `spiritlm-serve bench load` writes .cache/perf/load._", ""]
    if overload:
        outcome = (
            "Requests that cannot be served within the timeout fail; memory still stays flat and "
            "nothing is left in flight afterwards."
            if overload["summary"]["errors"]
            else "Every request was still served in time; memory stays flat and nothing is left "
            "in flight afterwards."
        )
        parts += [
            "### At a higher rate", "",
            "The same test at a higher rate (`"
            + overload["summary"].get("command", "spiritlm-serve bench load") + "`). " + outcome,
            "", *load_tables(overload), "",
        ]  # fmt: skip
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path(".cache/perf"))
    parser.add_argument("--load", type=Path, default=Path(".cache/perf/load"))
    parser.add_argument(
        "--overload", type=Path, default=None, help="bench load output of a higher-rate run"
    )
    parser.add_argument("--output", type=Path, default=Path("docs/performance.md"))
    parser.add_argument("--img-dir", type=Path, default=Path("docs/img"))
    parser.add_argument(
        "--benchmarks", type=Path, default=REPO / "docs" / "benchmarks.md",
        help="markdown file whose bench-realtime section holds the realtime table",
    )  # fmt: skip
    args = parser.parse_args(argv)
    lm = load(args.results / "lm.json")
    speech = load(args.results / "speech.json")
    load_report = load(args.load / "load.json")
    overload = load(args.overload / "load.json") if args.overload else None
    for report in (load_report, overload):
        if report:
            config = report["config"]
            report["config_warmup"] = config["warmup"] or min(60.0, config["duration"] / 4)
    args.img_dir.mkdir(parents=True, exist_ok=True)
    relative = Path(os.path.relpath(args.img_dir.resolve(), args.output.resolve().parent))
    images: dict[str, str] = {}

    def target(name: str) -> Path:
        images[name.replace("-", "_")] = str(relative / f"perf-{name}.png")
        return args.img_dir / f"perf-{name}.png"

    if lm:
        throughput_plot(lm, target("throughput"))
    if load_report:
        load_report["requests"] = load_requests(args.load)
        load_plots(load_report, target("load-latency"), target("load-rss"))
    if first_audio_plot(lm, load_report, args.img_dir / "perf-first-audio.png"):
        images["first_audio"] = str(relative / "perf-first-audio.png")
    if speech:
        rtf_plot(speech, target("rtf"))
    realtime = realtime_results(args.benchmarks)
    if realtime:
        realtime["link"] = os.path.relpath(args.benchmarks.resolve(), args.output.resolve().parent)
    if realtime and any(row["Audio out"] == "streamed" for row in realtime["rows"]):
        realtime_plot(realtime, target("realtime"))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    text = document(lm, speech, load_report, overload, images, args.overload, realtime)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} and {len(images)} plots in {args.img_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
