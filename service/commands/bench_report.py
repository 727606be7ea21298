"""`bench report`: measure the LM and speech benchmarks side by side, then write the report.

Writes `lm.json` and `speech.json` into --results-dir (skip either with --measure), then runs
scripts/make_performance_report.py, which needs matplotlib: it runs in its own venv
(.cache/report-venv, made by scripts/install_report_tools.sh) since the project venv has none.
The report also takes the load test's results (`load.json` of `spiritlm-serve bench load`) from
--load-dir when they exist.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from service.commands.common import add_checkpoint_flags, layout_from_args, log
from service.errors import SpiritError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_AUDIO = REPO / "tests" / "data" / "7143-88743-0029.flac"
MEASUREMENTS = ("lm", "speech")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
    return values


def _measurements(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(chosen) - set(MEASUREMENTS))
    if unknown:
        raise SpiritError(f"--measure: unknown {unknown}; expected a subset of {MEASUREMENTS}")
    return chosen


def measure(args: argparse.Namespace, results: Path, command: str) -> None:
    from service.bench.lm import BenchConfig
    from service.bench.perf import measure_lm, measure_speech, write_json
    from service.config import resolve_device
    from service.speech.kernel_cache import keep_kernels

    chosen = _measurements(args.measure)
    if not chosen:
        return
    keep_kernels()  # the speech models run in this process: the speech worker's kernel cache
    settings, layout = layout_from_args(args, lm="lm" in chosen, speech=True)
    device = resolve_device(settings.device)
    audio = Path(args.audio or DEFAULT_AUDIO)
    if "speech" in chosen:
        data = measure_speech(audio, device=device, repeats=args.repeats, progress=log)
        write_json(results / "speech.json", {**data, "command": command})
    if "lm" in chosen:
        config = BenchConfig(
            concurrency=args.concurrency,
            requests=args.requests,
            baseline_requests=args.baseline_requests,
            speech_tokens=args.speech_tokens,
            text_tokens=args.text_tokens,
        )
        data = measure_lm(
            layout, settings.model, config, audio=audio, device=device, lm_url=args.lm_url,
            progress=log,
        )  # fmt: skip
        write_json(results / "lm.json", {**data, "command": command})


def render(args: argparse.Namespace, results: Path) -> None:
    """Plots and markdown, in the report venv (matplotlib)."""
    installer = REPO / "scripts" / "install_report_tools.sh"
    done = subprocess.run([str(installer)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SpiritError(f"cannot install matplotlib for the plots: {done.stderr.strip()[-400:]}")
    python = REPO / done.stdout.strip().splitlines()[-1]
    argv = [str(python), str(REPO / "scripts" / "make_performance_report.py")]
    argv += ["--results", str(results), "--load", str(args.load_dir)]
    argv += ["--output", str(args.output), "--img-dir", str(args.img_dir)]
    if args.overload_dir:
        argv += ["--overload", str(args.overload_dir)]
    if subprocess.run(argv).returncode != 0:
        raise SpiritError("scripts/make_performance_report.py failed (its error is above)")


def run(args: argparse.Namespace) -> int:
    results = Path(args.results_dir)
    command = "spiritlm-serve " + shlex.join(sys.argv[1:])
    measure(args, results, command)
    render(args, results)
    log(f"wrote {args.output} and the plots in {args.img_dir}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report",
        help="measure LM/speech benchmarks side by side and write docs/performance.md + plots",
    )
    add_checkpoint_flags(parser)
    parser.add_argument("--measure", default="lm,speech", help="lm,speech ('' = only re-plot)")
    parser.add_argument("--results-dir", default=".cache/perf", help="JSON results")
    parser.add_argument("--load-dir", default=".cache/perf/load", help="`bench load` output")
    parser.add_argument(
        "--overload-dir", default=None, help="`bench load` output of a higher-rate run (optional)"
    )
    parser.add_argument("--output", default="docs/performance.md")
    parser.add_argument("--img-dir", default="docs/img")
    parser.add_argument("--lm-url", default=None, help="use a running LM worker for 'ours'")
    parser.add_argument("--audio", default=None, help="speech file (default: 9.1 s)")
    parser.add_argument("--concurrency", type=_ints, default=(1, 4, 16, 64))
    parser.add_argument("--requests", type=int, default=8, help="per level, at least the level")
    parser.add_argument("--baseline-requests", type=int, default=3)
    parser.add_argument("--speech-tokens", type=int, default=150)
    parser.add_argument("--text-tokens", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="speech timings (median)")
    parser.set_defaults(handler=run)
