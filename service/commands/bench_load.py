"""`bench load`: mixed REST and realtime traffic against a stack; errors, latency, memory.

Without --url the command starts its own stack (`spiritlm-serve up` on free ports, the embedded
tiny checkpoints unless --checkpoints is given) and stops it at the end. With --url it drives a
running gateway and samples the memory of the processes listening on the gateway's and its
workers' ports when they run on this machine (and of any --pid).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from pathlib import Path

from service.commands.common import log
from service.errors import SpiritError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_AUDIO = REPO / "tests" / "data" / "7143-88743-0029.flac"


def _config(args: argparse.Namespace):  # noqa: ANN202 - imported lazily
    from service.bench.load import DEFAULT_MIX, LoadConfig, parse_mix

    return LoadConfig(
        duration=args.duration,
        rate=args.rate,
        warmup=args.warmup,
        mix=parse_mix(args.mix) if args.mix else dict(DEFAULT_MIX),
        max_in_flight=args.max_in_flight,
        sample_interval=args.sample_interval,
        timeout=args.timeout,
        text_tokens=args.text_tokens,
        speech_tokens=args.speech_tokens,
        seed=args.seed,
        max_rss_growth=args.max_rss_growth,
    )


def _remote_roots(url: str, pids: list[int]) -> list[int]:
    """Processes of a running stack on this machine: the listeners of its ports, plus --pid."""
    import httpx

    from service.bench.processes import listening_pid

    urls = [url]
    try:
        ready = httpx.get(url.rstrip("/") + "/ready", timeout=10).json()
        urls += list(ready.get("lm_workers", {})) + list(ready.get("speech_workers", {}))
    except (httpx.HTTPError, ValueError):
        pass
    found = [pid for pid in (listening_pid(u) for u in urls) if pid is not None]
    return sorted(set(found + pids))


def run(args: argparse.Namespace) -> int:
    from service.bench.load import markdown, run_load, summarize_run, write_outputs
    from service.bench.processes import RssSampler
    from service.bench.stack import LocalStack

    config = _config(args)
    config.check()
    audio = Path(args.audio or DEFAULT_AUDIO)
    if not audio.is_file():
        raise SpiritError(f"{audio}: audio file not found (give one with --audio)")
    output = Path(args.output_dir)
    stack = None
    if args.url:
        url = args.url.rstrip("/")
        roots = _remote_roots(url, args.pid)
    else:
        stack = LocalStack(
            output / "logs",
            model=args.model,
            checkpoints=args.checkpoints,
            cache_dir=args.cache_dir,
        )
        stack.start(progress=log)
        url, roots = stack.url, [stack.pid, *args.pid]
    try:
        sampler = RssSampler(roots) if roots else None
        log(f"load: {config.rate:g} req/s for {config.duration:g} s against {url}")
        result = asyncio.run(
            run_load(
                url,
                config,
                speech_audio=audio.read_bytes(),
                sampler=sampler,
                api_key=args.api_key,
                model=args.model,
                progress=log,
            )
        )
    finally:
        if stack is not None:
            stack.stop()
    summary = summarize_run(result)
    summary["command"] = "spiritlm-serve " + shlex.join(sys.argv[1:])
    paths = write_outputs(result, summary, output)
    print(markdown(summary, config), end="", flush=True)
    log("wrote " + ", ".join(str(path) for path in paths))
    targets = summary["targets"]
    if args.json:
        print(json.dumps(summary, indent=1))
    return 0 if targets["errors_zero"] and targets["rss_growth_ok"] else 1


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "load",
        help="load test: mixed REST/realtime traffic, errors, latency percentiles, RSS growth",
        description="Exit status 1 when a target is missed (a failed request, or RSS growth "
        "after warm-up at or above --max-rss-growth percent).",
    )
    parser.add_argument("--url", default=None, help="a running gateway (default: start a stack)")
    parser.add_argument("--api-key", default=None, help="Bearer key for the gateway")
    parser.add_argument("--model", default=None, help="model to request (default: the gateway's)")
    parser.add_argument("--checkpoints", default=None, help="checkpoint root of the own stack")
    parser.add_argument("--cache-dir", default=None, help="cache dir of the own stack")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic")
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds before memory is judged "
        "(default: a quarter of the run, at most 60)"
    )  # fmt: skip
    parser.add_argument("--rate", type=float, default=1.0, help="new requests per second")
    parser.add_argument(
        "--mix",
        default=None,
        help="kind=weight,... over generate-text, generate-speech, transcription, speech, "
        "tokenize, realtime (default: 2,2,1,2,2,1)",
    )
    parser.add_argument("--max-in-flight", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--sample-interval", type=float, default=None, help="RSS sampling (s)")
    parser.add_argument("--text-tokens", type=int, default=16)
    parser.add_argument("--speech-tokens", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rss-growth", type=float, default=5.0, help="percent")
    parser.add_argument("--audio", default=None, help="speech file to upload (default: 9.1 s)")
    parser.add_argument(
        "--pid", type=int, action="append", default=[], help="another process to sample (repeat)"
    )
    parser.add_argument("--output-dir", default=".cache/bench-load", help="JSON/CSV results")
    parser.add_argument("--json", action="store_true", help="also print the summary as JSON")
    parser.set_defaults(handler=run)
