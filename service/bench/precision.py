"""bfloat16 against float32 for the speech models (settings `encoder_dtype`, `vocoder_dtype`).

For each variant, on one speech file, both precisions in one run:

* encoders: the file encoded with the tokenizer in float32 (the reference's precision) and in
  bfloat16; the median time of each, the speed-up, and the share of unit frames equal to the
  float32 ones, per stream (HuBERT, and for the expressive model pitch and style; the pitch
  tokenizer always runs in float32, so its column is a control and reads 100 %);
* vocoder: the float32 units vocoded one-shot in float32 and in bfloat16; the median time of
  each, the speed-up, the signal-to-error ratio and the largest sample error;
* layout: bfloat16 on a CPU runs its convolutions channels-last (`channels_last_pays` in
  service/speech/precision.py); the bfloat16 encode and vocode are timed again with the plain
  layout, so the table shows what that rule buys.

Runs in-process on the speech stack (torch and numpy only, no servers).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.audio.decode import load_audio_file
from service.bench.agreement import format_shares, frames_equal
from service.bench.speech import SAMPLE_RATE, BenchSettings, median_time
from service.checkpoints.layout import BASE, EXPRESSIVE, CheckpointLayout
from service.speech.pipeline import SpeechStack
from service.speech.precision import set_channels_last
from service.units.tokens import units_to_string

SECTION = "bench-precision"
Progress = Callable[[str], None]


def median_seconds(work: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time over `repeats` runs after one untimed warm-up (bench speech's rule),
    and the last result."""
    elapsed, result = median_time(work, BenchSettings(repeats=repeats))
    return elapsed.wall, result


def signal_to_error_db(exact: np.ndarray, fast: np.ndarray) -> float:
    error = np.sum(np.square(fast - exact, dtype=np.float64))
    signal = np.sum(np.square(exact, dtype=np.float64))
    return float("inf") if error == 0 else float(10 * np.log10(signal / error))


def measure(
    layout: CheckpointLayout,
    wav: np.ndarray,
    variants: Sequence[str],
    repeats: int,
    progress: Progress,
) -> list[dict[str, Any]]:
    rows = []
    for variant in variants:
        exact = SpeechStack(layout, variant)
        fast = SpeechStack(layout, variant, encoder_dtype="bfloat16", vocoder_dtype="bfloat16")
        for stack in (exact, fast):
            stack.load()
        progress(f"{variant}: encoding in float32 and bfloat16")
        exact_seconds, exact_units = median_seconds(partial(exact.encode_units, wav), repeats)
        fast_seconds, fast_units = median_seconds(partial(fast.encode_units, wav), repeats)
        tokens = units_to_string(exact_units, expressive=exact.expressive)
        progress(f"{variant}: vocoding in float32 and bfloat16")
        exact_decode, exact_audio = median_seconds(partial(exact.decode, tokens), repeats)
        fast_decode, fast_audio = median_seconds(partial(fast.decode, tokens), repeats)
        if exact_audio.shape != fast_audio.shape:
            raise AssertionError(f"{variant}: the vocoders' outputs differ in length")
        progress(f"{variant}: bfloat16 again, convolutions in the plain layout")
        # The models are cached per process and shared between the variants (one HuBERT):
        # their layout is put back before anything else uses them.
        _conv_layout(fast, channels_last=False)
        try:
            plain_seconds, _ = median_seconds(partial(fast.encode_units, wav), repeats)
            plain_decode, _ = median_seconds(partial(fast.decode, tokens), repeats)
        finally:
            _conv_layout(fast, channels_last=True)
        rows.append(
            {
                "variant": variant,
                "encode": (exact_seconds, fast_seconds),
                "plain_layout": (plain_seconds, plain_decode),
                "frames_equal": frames_equal(exact_units, fast_units, exact.expressive),
                "decode": (exact_decode, fast_decode),
                "snr_db": signal_to_error_db(exact_audio, fast_audio),
                "max_error": float(np.max(np.abs(fast_audio - exact_audio))),
            }
        )
    return rows


def _conv_layout(stack: SpeechStack, *, channels_last: bool) -> None:
    """Switch the stack's bfloat16 models (on a CPU) between the two convolution layouts."""
    models = [stack.hubert._model, stack.vocoder.model]
    if stack.expressive:
        models.append(stack.style._model)
    for model in models:
        set_channels_last(model, channels_last)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| Variant | Encode float32 (s) | bfloat16 (s) | Speed-up | bfloat16, plain layout (s) "
        "| Frames equal (HuBERT / pitch / style) | Vocode float32 (s) | bfloat16 (s) | Speed-up "
        "| bfloat16, plain layout (s) | Signal / error | Max error |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        (encode32, encode16), (decode32, decode16) = row["encode"], row["decode"]
        plain_encode, plain_decode = row["plain_layout"]
        shares = format_shares(row["frames_equal"])
        lines.append(
            f"| {row['variant']} | {encode32:.3f} | {encode16:.3f} | {encode32 / encode16:.2f}x "
            f"| {plain_encode:.3f} | {shares} | {decode32:.3f} | {decode16:.3f} "
            f"| {decode32 / decode16:.2f}x | {plain_decode:.3f} | {row['snr_db']:.1f} dB "
            f"| {row['max_error']:.4f} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--audio", type=Path, required=True, help="speech file")
    parser.add_argument("--variants", default=f"{BASE},{EXPRESSIVE}", help="comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--output", type=Path, help=f"also write the table into this file's {SECTION} section"
    )


def run(args: argparse.Namespace, progress: Progress, command: str) -> str:
    """Measure, print the table with the command that made it, and write it to `--output`."""
    if args.repeats < 1:
        raise ValueError("--repeats must be at least 1")
    torch.set_num_threads(args.threads)
    wav = load_audio_file(args.audio)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    rows = measure(CheckpointLayout(args.checkpoints), wav, variants, args.repeats, progress)
    section = (
        f"`{command}` ({args.threads} torch thread(s), {args.audio.name}, "
        f"{len(wav) / SAMPLE_RATE:.1f} s; vocoded: the float32 units' token string, duration "
        f"prediction on):\n\n{format_table(rows)}\n"
    )
    print(section)
    if args.output is not None:
        from service.bench.sections import write_section

        write_section(args.output, SECTION, section)
        progress(f"updated the {SECTION} section of {args.output}")
    return section
