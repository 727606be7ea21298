"""`bench lm`: the LM generation benchmark (baseline transformers vs our vLLM streaming path)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from service.commands.common import add_checkpoint_flags, layout_from_args, log
from service.config import resolve_device
from service.errors import SpiritError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_AUDIO = (
    REPO.parent / "shared" / "data" / "7143-88743-0029.flac",
    REPO / "tests" / "data" / "7143-88743-0029.flac",
)
SECTION = "bench-lm"  # the marker of its section in docs/benchmarks.md


def _int_list(value: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {value!r}"
        ) from None
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {value!r}")
    return numbers


def _names(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _audio(path: str | None) -> Path:
    if path is not None:
        if not Path(path).is_file():
            raise SpiritError(f"--input-audio {path}: file not found")
        return Path(path)
    for candidate in DEFAULT_AUDIO:
        if candidate.is_file():
            return candidate
    raise SpiritError("no default speech prompt found; give one with --input-audio FILE")


def run_bench_lm(args: argparse.Namespace) -> int:
    from service.bench.lm import BenchConfig, run_lm_benchmark
    from service.bench.lm_report import markdown, section
    from service.bench.report import update_section
    from service.speech.kernel_cache import keep_kernels

    keep_kernels()  # its speech models run in this process: the speech worker's kernel cache
    settings, layout = layout_from_args(args, lm=True, speech=True)
    config = BenchConfig(
        concurrency=args.concurrency,
        requests=args.requests,
        baseline_requests=args.baseline_requests,
        speech_tokens=args.speech_tokens,
        text_tokens=args.text_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        speaker=args.speaker,
        workloads=args.workloads,
    )
    result = run_lm_benchmark(
        layout,
        settings.model,
        config,
        audio=_audio(args.input_audio),
        lm_url=args.lm_url,
        device=resolve_device(settings.device),
        progress=log,
    )
    table = markdown(result)
    print(table, flush=True)
    if args.output:
        command = "spiritlm-serve " + shlex.join(sys.argv[1:])
        update_section(Path(args.output), SECTION, section(result, table, command))
        log(f"wrote the '{SECTION}' section of {args.output}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "lm",
        help="benchmark LM generation: transformers one-at-a-time vs vLLM streaming",
        description="Runs the official implementation's path (transformers generate, one request "
        "at a time, whole-output vocoding) and ours (vLLM with concurrent streaming requests, "
        "streaming vocoder) on the same checkpoints, and prints a markdown table.",
    )
    add_checkpoint_flags(bench)
    bench.add_argument("--lm-url", default=None, help="use a running LM worker (else start one)")
    bench.add_argument("--concurrency", type=_int_list, default=(1, 4, 16, 64))
    bench.add_argument(
        "--requests", type=int, default=8, help="requests per level (at least the concurrency)"
    )
    bench.add_argument("--baseline-requests", type=int, default=3)
    bench.add_argument(
        "--speech-tokens", type=int, default=150, help="max tokens of speech outputs (>= 125: 5 s)"
    )
    bench.add_argument("--text-tokens", type=int, default=50, help="max tokens of text outputs")
    bench.add_argument("--temperature", type=float, default=0.9)
    bench.add_argument("--top-p", type=float, default=0.95)
    bench.add_argument("--speaker", type=int, default=2)
    bench.add_argument("--workloads", type=_names, default=("text-to-speech", "speech-to-text"))
    bench.add_argument("--input-audio", default=None, help="speech prompt of speech-to-text")
    bench.add_argument("--output", default=None, help="update this markdown file's section")
    bench.set_defaults(handler=run_bench_lm)
