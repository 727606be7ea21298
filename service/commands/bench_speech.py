"""`bench speech`: time the speech stack (encode, decode, streaming start) and report it."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from service.commands.common import checked_device, log
from service.config import Settings
from service.errors import SpiritError

SIZES = ("tiny", "official")
# The speech file in the repository (LibriSpeech 7143-88743-0029, 9.135 s).
DEFAULT_AUDIO = Path(__file__).resolve().parents[2] / "tests" / "data" / "7143-88743-0029.flac"


def parse_sizes(text: str) -> list[str]:
    sizes = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [size for size in sizes if size not in SIZES]
    if unknown:
        raise SpiritError(f"--sizes {text!r}: expected a comma-separated subset of {SIZES}")
    return sizes


def command_line(args: argparse.Namespace) -> str:
    """The run as one explicit command line (defaults spelled out), to repeat it exactly."""
    argv = ["bench", "speech", "--device", args.device, "--repeats", str(args.repeats)]
    argv += ["--sizes", args.sizes, "--first-chunk-units", str(args.first_chunk_units)]
    argv += ["--chunk-units", str(args.chunk_units)]
    if args.audio is not None:
        argv += ["--audio", str(args.audio)]
    if args.checkpoints is not None:
        argv += ["--checkpoints", str(args.checkpoints)]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    if args.output is not None:
        argv += ["--output", str(args.output)]
    return "spiritlm-serve " + shlex.join(argv)


def run(args: argparse.Namespace) -> int:
    sizes = parse_sizes(args.sizes)
    if not sizes and args.checkpoints is None:
        raise SpiritError("nothing to measure: give --sizes and/or --checkpoints")
    if args.repeats < 1 or args.first_chunk_units < 1 or args.chunk_units < 1:
        raise SpiritError("--repeats, --first-chunk-units and --chunk-units must be at least 1")
    audio = args.audio or DEFAULT_AUDIO
    if not Path(audio).is_file():
        raise SpiritError(f"{audio}: audio file not found (give one with --audio)")
    if args.checkpoints is not None and not Path(args.checkpoints).is_dir():
        raise SpiritError(f"{args.checkpoints}: checkpoint directory does not exist")
    from service.speech.kernel_cache import keep_kernels

    keep_kernels()  # the speech worker's kernel cache, before any model call
    device = checked_device(args.device)

    import torch

    from service.bench.sections import write_section
    from service.bench.speech import (
        SECTION,
        BenchSettings,
        machine_lines,
        markdown_section,
        markdown_tables,
        run_benchmark,
    )

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    machine = machine_lines(device)  # before the run: the load average is the one it started in
    settings = BenchSettings(device, args.repeats, args.first_chunk_units, args.chunk_units)
    report = run_benchmark(
        Path(audio), sizes=sizes, checkpoints=args.checkpoints, settings=settings, progress=log
    )
    print(markdown_tables(report), end="", flush=True)
    if args.output is not None:
        write_section(args.output, SECTION, markdown_section(report, command_line(args), machine))
        log(f"updated the {SECTION} section of {args.output}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    defaults = Settings.model_fields
    parser = commands.add_parser(
        "speech",
        help="benchmark encode/decode real-time factors and streaming first-chunk latency",
    )
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda[:N]")
    parser.add_argument("--audio", type=Path, default=None, help="speech file (default: 9.1 s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median)")
    parser.add_argument(
        "--sizes",
        default=",".join(SIZES),
        help="random-weight checkpoint sizes to generate and measure: tiny,official ('' for none)",
    )
    parser.add_argument(
        "--checkpoints", type=Path, default=None, help="also measure this official-layout root"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--first-chunk-units", type=int, default=defaults["first_chunk_units"].default
    )
    parser.add_argument("--chunk-units", type=int, default=defaults["chunk_units"].default)
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="markdown file whose section of this benchmark to replace",
    )
    parser.set_defaults(handler=run)
