"""`bench <kind>`: the benchmarks, one sub-command per kind (one module each: bench_<kind>.py)."""

from __future__ import annotations

import argparse

from service.commands import (
    bench_hostile,
    bench_lm,
    bench_load,
    bench_precision,
    bench_realtime,
    bench_report,
    bench_speech,
    bench_streams,
    bench_windows,
)

KINDS = (
    bench_speech,
    bench_streams,
    bench_windows,
    bench_precision,
    bench_lm,
    bench_realtime,
    bench_load,
    bench_hostile,
    bench_report,
)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench",
        help="benchmarks: speech, streams, windows, precision, lm, realtime, load, hostile, report",
        description="Measure the speech stack, concurrent vocoder streams, windowed turn "
        "encoding, reduced precision, LM generation, "
        "realtime sessions or a mixed load, probe it with hostile clients, or write "
        "docs/performance.md. docs/benchmarks.md and docs/performance.md hold results.",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    for module in KINDS:
        module.register(kinds)
