"""How far units encoded window by window (a realtime turn, service/units/windows.py) agree
with the whole-turn units, and how much encoding is left when the turn ends.

For each audio file and each window plan, the file is encoded whole (what REST endpoints and
the CLI do) and window by window as a realtime session does it while the user speaks. Printed
per plan and variant (with `--join`, also for all files joined into one long turn):

* agreement: the share of unit frames equal to the whole-turn ones, per stream;
* tokens: the similarity of the two token strings (difflib ratio over tokens);
* at turn end: the seconds of audio the last window encodes, and its encode time against the
  whole-turn encode (what a realtime reply waits for after the user stops);
* work: all windows' encode time over the whole-turn encode time (CPU spent while speaking).

Runs in-process on the speech stack (torch and numpy only, no servers).
"""

from __future__ import annotations

import argparse
import difflib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.audio.decode import load_audio_file
from service.bench.agreement import format_shares, frames_equal
from service.checkpoints.layout import BASE, EXPRESSIVE, CheckpointLayout
from service.speech.pipeline import SpeechStack
from service.units.tokens import Units, units_to_string
from service.units.windows import WORKER_RATE, Window, WindowPlan, join_units, keep_units

SECTION = "bench-windows"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class PlanSpec:
    window: float
    left: float
    right: float

    @property
    def label(self) -> str:
        return f"window {self.window:g} s, left {self.left:g} s, right {self.right:g} s"


def parse_plans(text: str) -> list[PlanSpec]:
    """'window/left/right; ...' in seconds, e.g. '2/1/0.5; 4/2/1'."""
    plans = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        numbers = [float(value) for value in item.split("/")]
        if len(numbers) != 3 or numbers[0] <= 0 or numbers[1] < 1 or numbers[2] < 0.1:
            raise ValueError(
                f"plan {item!r}: expected window/left/right seconds, window > 0, left >= 1 "
                "and right >= 0.1 (the realtime settings' bounds)"
            )
        plans.append(PlanSpec(*numbers))
    return plans


def encode_window(stack: SpeechStack, wav: np.ndarray, window: Window) -> Units:
    """What the speech worker returns for one window (service/speech_worker/app.py)."""
    keep_from_ms, keep_to_ms = window.keep_ms(WORKER_RATE)
    return keep_units(stack.encode_units(wav[window.start : window.end]), keep_from_ms, keep_to_ms)


def windowed_units(
    stack: SpeechStack, wav: np.ndarray, plan: WindowPlan
) -> tuple[Units, list[tuple[float, float]]]:
    """The turn's units window by window, and (seconds encoded, seconds taken) per window."""
    parts: list[Units] = []
    timings: list[tuple[float, float]] = []
    kept = 0
    while True:
        window = plan.next_window(kept, len(wav)) or plan.last_window(kept)
        started = time.perf_counter()
        parts.append(encode_window(stack, wav, window))
        end = len(wav) if window.end is None else window.end
        timings.append(((end - window.start) / WORKER_RATE, time.perf_counter() - started))
        if window.keep_to is None:
            return join_units(parts, stack.expressive), timings
        kept = window.keep_to


def token_similarity(a: str, b: str) -> float:
    split = lambda s: s.replace("][", "]\n[").split("\n")  # noqa: E731
    return difflib.SequenceMatcher(None, split(a), split(b), autojunk=False).ratio()


def measure(
    layout: CheckpointLayout,
    files: Sequence[Path],
    plans: Sequence[PlanSpec],
    variants: Sequence[str],
    progress: Progress,
    join: bool = False,
) -> list[dict[str, Any]]:
    rows = []
    recordings = [(path.name, load_audio_file(path)) for path in files]
    if join and len(recordings) > 1:
        recordings.append(("all joined", np.concatenate([wav for _, wav in recordings])))
    for variant in variants:
        stack = SpeechStack(layout, variant)
        stack.load()
        for name, wav in recordings:
            stack.encode_units(wav[:WORKER_RATE])  # warm-up
            started = time.perf_counter()
            whole = stack.encode_units(wav)
            whole_seconds = time.perf_counter() - started
            whole_string = units_to_string(whole, expressive=stack.expressive)
            for spec in plans:
                plan = WindowPlan(
                    rate=WORKER_RATE,
                    expressive=stack.expressive,
                    window=spec.window,
                    left=spec.left,
                    right=spec.right,
                )
                windowed, timings = windowed_units(stack, wav, plan)
                string = units_to_string(windowed, expressive=stack.expressive)
                rows.append(
                    {
                        "variant": variant,
                        "file": name,
                        "audio_seconds": len(wav) / WORKER_RATE,
                        "plan": spec.label,
                        "agreement": frames_equal(whole, windowed, stack.expressive),
                        "tokens": token_similarity(whole_string, string),
                        "tail_audio": timings[-1][0],
                        "tail_ratio": timings[-1][1] / whole_seconds,
                        "work_ratio": sum(t for _, t in timings) / whole_seconds,
                        "whole_seconds": whole_seconds,
                    }
                )
                progress(f"{variant} {name} {spec.label}: done")
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| Variant | Audio | Plan | Frames equal (HuBERT / pitch / style) | Tokens similar "
        "| Left at turn end | Tail / whole encode | All windows / whole |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        shares = format_shares(row["agreement"])
        lines.append(
            f"| {row['variant']} | {row['file']} ({row['audio_seconds']:.1f} s) | {row['plan']} "
            f"| {shares} | {100 * row['tokens']:.1f}% | {row['tail_audio']:.2f} s "
            f"| {row['tail_ratio']:.2f} | {row['work_ratio']:.2f} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--audio", type=Path, nargs="+", required=True, help="speech files")
    parser.add_argument(
        "--plans",
        default="2/2/1; 2/4/2; 4/4/4",
        help="window/left/right seconds per plan, ';'-separated (default: %(default)s)",
    )
    parser.add_argument("--variants", default=f"{BASE},{EXPRESSIVE}", help="comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--join",
        action="store_true",
        help="also measure the files joined into one long turn (long turns are where windows "
        "start to pay)",
    )
    parser.add_argument(
        "--output", type=Path, help=f"also write the table into this file's {SECTION} section"
    )


def run(args: argparse.Namespace, progress: Progress, command: str) -> str:
    """Measure, print the table with the command that made it, and write it to `--output`."""
    torch.set_num_threads(args.threads)
    rows = measure(
        CheckpointLayout(args.checkpoints),
        args.audio,
        parse_plans(args.plans),
        [v.strip() for v in args.variants.split(",") if v.strip()],
        progress,
        join=args.join,
    )
    section = f"`{command}` ({args.threads} torch thread(s)):\n\n{format_table(rows)}\n"
    print(section)
    if args.output is not None:
        from service.bench.sections import write_section

        write_section(args.output, SECTION, section)
        progress(f"updated the {SECTION} section of {args.output}")
    return section
