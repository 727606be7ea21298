"""`bench realtime`: concurrent realtime voice sessions, streamed vs. whole-reply audio."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import tempfile
from pathlib import Path

from service.commands.common import log
from service.errors import SpiritError

# The speech file in the repository (LibriSpeech 7143-88743-0029, 9.135 s).
DEFAULT_AUDIO = Path(__file__).resolve().parents[2] / "tests" / "data" / "7143-88743-0029.flac"


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SpiritError(f"--levels {text!r}: expected comma-separated session counts") from None
    if not levels or any(level < 1 for level in levels):
        raise SpiritError(f"--levels {text!r}: expected positive session counts, e.g. 1,2,4,8")
    return sorted(set(levels))


def command_line(args: argparse.Namespace) -> str:
    argv = ["bench", "realtime", "--levels", args.levels, "--max-tokens", str(args.max_tokens)]
    argv += ["--time-budget", str(args.time_budget)]
    for flag, value in (("--url", args.url), ("--audio", args.audio), ("--output", args.output)):
        if value is not None:
            argv += [flag, str(value)]
    return "spiritlm-serve " + shlex.join(argv)


def run(args: argparse.Namespace) -> int:
    from service.bench.realtime import SECTION, markdown_table, run_benchmark
    from service.bench.sections import write_section

    levels = parse_levels(args.levels)
    audio = Path(args.audio or DEFAULT_AUDIO)
    if not audio.is_file():
        raise SpiritError(f"{audio}: audio file not found (give one with --audio)")
    if args.max_tokens < 1:
        raise SpiritError("--max-tokens must be at least 1")

    def measure(url: str, target: str):  # noqa: ANN202
        return asyncio.run(
            run_benchmark(
                url,
                audio,
                levels,
                max_tokens=args.max_tokens,
                time_budget=args.time_budget,
                progress=log,
                target=target,
            )
        )

    if args.url:
        url = args.url.rstrip("/")
        report = measure(url, f"the running gateway at {url}")
    else:
        from service.bench.stack import LocalStack

        logs = Path(tempfile.mkdtemp(prefix="bench-realtime-"))
        with LocalStack(logs) as stack:
            stack.start(progress=log)
            report = measure(
                stack.url,
                "a local stack started by the command (`spiritlm-serve up`: one "
                "vLLM worker, one speech worker, the gateway; embedded tiny checkpoints)",
            )
        log(f"stack logs: {logs}")
    from service.bench.realtime import markdown_section

    print(markdown_table(report), end="", flush=True)
    if args.output is not None:
        write_section(args.output, SECTION, markdown_section(report, command_line(args)))
        log(f"updated the {SECTION} section of {args.output}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "realtime",
        help="benchmark concurrent realtime voice sessions (first-audio latency, real time)",
    )
    parser.add_argument(
        "--url", default=None, help="a running gateway (default: start a local stack)"
    )
    parser.add_argument("--audio", type=Path, default=None, help="speech file (default: 9.1 s)")
    parser.add_argument(
        "--levels", default="1,2,4,8", help="concurrent sessions to try, in order (default 1,2,4,8)"
    )
    parser.add_argument("--max-tokens", type=int, default=100, help="reply length in tokens")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=300.0,
        help="seconds after which no further level starts (default 300)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="markdown file whose section of this benchmark to replace",
    )
    parser.set_defaults(handler=run)
