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


def parse_stacks(text: str | None) -> list[tuple[str, list[str]]]:
    """`label: flags; label: flags` -> [(label, up flags)]; none = one stack, default flags."""
    if not text:
        return [("", [])]
    stacks = []
    for part in text.split(";"):
        label, colon, flags = part.partition(":")
        if not colon or not label.strip():
            raise SpiritError(
                f"--stacks {text!r}: expected 'label: flags; label: flags', e.g. "
                "'per-chunk: --max-chunk-units 25; coalesced: --max-chunk-units 100'"
            )
        stacks.append((label.strip(), shlex.split(flags)))
    return stacks


def command_line(args: argparse.Namespace) -> str:
    argv = ["bench", "realtime", "--levels", args.levels, "--max-tokens", str(args.max_tokens)]
    argv += ["--time-budget", str(args.time_budget)]
    options = (
        ("--url", args.url),
        ("--audio", args.audio),
        ("--checkpoints", args.checkpoints),
        ("--stacks", args.stacks),
        ("--silence-ms", args.silence_ms),
        ("--output", args.output),
    )
    for flag, value in options:
        if value is not None:
            argv += [flag, str(value)]
    if args.no_baseline:
        argv.append("--no-baseline")
    if args.push_to_talk:
        argv.append("--push-to-talk")
    return "spiritlm-serve " + shlex.join(argv)


def run(args: argparse.Namespace) -> int:
    from service.bench.realtime import (
        SECTION,
        SILENCE_MS,
        Report,
        markdown_table,
        run_benchmark,
    )
    from service.bench.sections import write_section

    levels = parse_levels(args.levels)
    stacks = parse_stacks(args.stacks)
    audio = Path(args.audio or DEFAULT_AUDIO)
    if not audio.is_file():
        raise SpiritError(f"{audio}: audio file not found (give one with --audio)")
    if args.max_tokens < 1:
        raise SpiritError("--max-tokens must be at least 1")
    if args.silence_ms is not None and args.silence_ms < 1:
        raise SpiritError("--silence-ms must be at least 1")
    if args.push_to_talk and args.silence_ms is not None:
        raise SpiritError("--silence-ms sets the server VAD, which --push-to-talk turns off")
    if args.url and (args.stacks or args.checkpoints):
        raise SpiritError("--stacks and --checkpoints configure a local stack: not with --url")

    def measure(url: str, target: str, label: str = "") -> Report:
        return asyncio.run(
            run_benchmark(
                url,
                audio,
                levels,
                max_tokens=args.max_tokens,
                time_budget=args.time_budget,
                progress=log,
                target=target,
                label=label,
                baseline=not args.no_baseline,
                silence_ms=args.silence_ms or SILENCE_MS,
                push_to_talk=args.push_to_talk,
            )
        )

    reports = []
    if args.url:
        url = args.url.rstrip("/")
        reports.append(measure(url, f"the running gateway at {url}"))
    else:
        from service.bench.stack import LocalStack

        checkpoints = (
            f"the checkpoints in {args.checkpoints}"
            if args.checkpoints
            else "embedded tiny checkpoints"
        )
        # One stack after the other, never two at once: they would share the cores.
        for label, flags in stacks:
            logs = Path(tempfile.mkdtemp(prefix="bench-realtime-"))
            with LocalStack(logs, checkpoints=args.checkpoints, gateway_flags=flags) as stack:
                stack.start(progress=log)
                described = "`spiritlm-serve up`" + (f" `{shlex.join(flags)}`" if flags else "")
                target = (
                    f"a local stack started by the command ({described}: one vLLM worker, one "
                    f"speech worker, the gateway; {checkpoints})"
                )
                reports.append(measure(stack.url, target, label))
            log(f"stack logs: {logs}")
    from service.bench.realtime import markdown_section

    print(markdown_table(*reports), end="", flush=True)
    if args.output is not None:
        write_section(args.output, SECTION, markdown_section(command_line(args), *reports))
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
        "--checkpoints",
        default=None,
        help="checkpoint directory of the local stack, e.g. one written by "
        "`make-checkpoints --size official` (default: the embedded tiny checkpoints)",
    )
    parser.add_argument(
        "--stacks",
        default=None,
        help="compare local stacks in one run, one after the other: 'label: up flags; label: "
        "up flags' (e.g. 'float32: ; bfloat16: --vocoder-dtype bfloat16')",
    )
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the whole-reply (non-streaming) runs of each level",
    )
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
        "--silence-ms",
        type=int,
        default=None,
        help="the silence that ends a turn (server VAD silence_duration_ms; default 2000, so "
        "the default file's 1.6 s pause does not split it)",
    )
    parser.add_argument(
        "--push-to-talk",
        action="store_true",
        help="callers end their turns themselves when the file ends (turn_detection null, "
        "input_audio_buffer.commit, response.create), so nothing is encoded before the commit; "
        "first audio counts from the commit (default: the server VAD ends turns)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="markdown file whose section of this benchmark to replace",
    )
    parser.set_defaults(handler=run)
