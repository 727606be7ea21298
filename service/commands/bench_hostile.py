"""`bench hostile`: hostile clients against a stack with API keys; limits hit, /health, memory.

Without --url the command starts its own stack (`spiritlm-serve up` on free ports with a random
API key and an allowed CORS origin; `up` makes the internal credential; the embedded tiny
checkpoints unless --checkpoints is given), and starts a fresh one when an attack leaves it
broken. With --url it attacks a running gateway; give --api-key, the workers' URLs for the
direct calls (else taken from the gateway's /ready, which names them to key holders) and --pid
for the processes whose memory to watch (none: memory is not reported). service/bench/hostile.py
describes the attacks and the targets.
"""

from __future__ import annotations

import argparse
import secrets
import shlex
import sys
from pathlib import Path

from service.commands.common import log
from service.errors import SpiritError

# The origin the own stack allows (the CORS preflight attack comes from it).
STACK_ORIGIN = "https://app.example"


def _config(args: argparse.Namespace):  # noqa: ANN202 - imported lazily
    from service.bench.hostile import HostileConfig

    return HostileConfig(
        attack_timeout=args.attack_timeout,
        max_rss_growth_mb=args.max_rss_growth_mb,
        max_health_seconds=args.max_health_seconds,
        guard_rss_growth_mb=args.guard_rss_growth_mb,
        settle_seconds=args.settle_seconds,
        slow_hold_seconds=args.slow_hold_seconds,
    )


def _worker_urls(url: str, api_key: str | None) -> tuple[str | None, str | None]:
    """(speech worker, LM worker) as the gateway's /ready names them to a key holder."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        ready = httpx.get(url + "/ready", headers=headers, timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return None, None

    def first(kind: str) -> str | None:
        names = ready.get(kind, {}) if isinstance(ready, dict) else {}
        urls = [name for name in names if str(name).startswith("http")]
        return urls[0] if urls else None

    return first("speech_workers"), first("lm_workers")


def run(args: argparse.Namespace) -> int:
    from service.bench.hostile import Target, markdown, run_attacks, select
    from service.bench.stack import LocalStack

    try:
        attacks = select(args.only)
    except ValueError as error:
        raise SpiritError(f"--only: {error}") from None
    config = _config(args)
    stacks: list[LocalStack] = []

    def own_stack() -> Target:
        if stacks:
            stacks[-1].stop()
        key = "sk-hostile-" + secrets.token_urlsafe(12)
        stack = LocalStack(
            Path(args.log_dir) / f"stack-{len(stacks)}",
            model=args.model,
            checkpoints=args.checkpoints,
            cache_dir=args.cache_dir,
            gateway_flags=["--api-keys", key, "--cors-origins", STACK_ORIGIN],
        )
        stacks.append(stack)
        stack.start(progress=log)
        return Target(
            stack.url,
            api_key=key,
            speech_url=f"http://127.0.0.1:{stack.speech_port}",
            lm_url=f"http://127.0.0.1:{stack.lm_port}",
            cors_origin=STACK_ORIGIN,
            model=args.model,
            pids=[stack.pid],
            owned=True,
        )

    if args.url:
        url = args.url.rstrip("/")
        speech_url, lm_url = args.speech_url, args.lm_url
        if not (speech_url and lm_url):
            found = _worker_urls(url, args.api_key)
            speech_url, lm_url = speech_url or found[0], lm_url or found[1]
        target = Target(url, args.api_key, speech_url, lm_url, args.cors_origin, args.model,
                        list(args.pid))  # fmt: skip
        if not args.pid:
            log("no --pid given: process memory is not reported")
    else:
        target = own_stack()
    try:
        rows = run_attacks(
            attacks, target, config, progress=log, restart=None if args.url else own_stack
        )
    finally:
        if stacks:
            stacks[-1].stop()
    command = "spiritlm-serve " + shlex.join(sys.argv[1:])
    report = markdown(rows, config, [f"Command: `{command}`", ""])
    not_run = [attack.name for attack in attacks[len(rows) :]]
    if not_run:
        report += f"\nNot run (the stack did not come back): {', '.join(not_run)}.\n"
    print(report, end="", flush=True)
    if args.markdown:
        Path(args.markdown).write_text(report, encoding="utf-8")
        log(f"wrote {args.markdown}")
    return 0 if rows and not not_run and all(row.ok for row in rows) else 1


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "hostile",
        help="hostile probes: huge audio, floods, slow bodies, unauthenticated worker calls",
        description="Exit status 1 when an attack gets a 5xx, a process dies, a process grows "
        "by --max-rss-growth-mb or more, /health takes --max-health-seconds or more, or the "
        "attack's own expectation fails (e.g. a worker port answers without the credential).",
    )
    parser.add_argument("--url", default=None, help="a running gateway (default: start a stack)")
    parser.add_argument("--api-key", default=None, help="Bearer key for the gateway (--url)")
    parser.add_argument("--speech-url", default=None, help="its speech worker (--url)")
    parser.add_argument("--lm-url", default=None, help="its vLLM worker (--url)")
    parser.add_argument("--cors-origin", default=None, help="an origin it allows (--url)")
    parser.add_argument(
        "--pid", type=int, action="append", default=[], help="a process to watch (--url; repeat)"
    )
    parser.add_argument("--model", default=None, help="model to request (default: the gateway's)")
    parser.add_argument("--checkpoints", default=None, help="checkpoint root of the own stack")
    parser.add_argument("--cache-dir", default=None, help="cache dir of the own stack")
    parser.add_argument("--log-dir", default=".cache/bench-hostile", help="logs of the own stack")
    parser.add_argument("--only", default=None, help="comma-separated attack names (default: all)")
    parser.add_argument("--attack-timeout", type=float, default=120.0, help="seconds per attack")
    parser.add_argument("--max-rss-growth-mb", type=float, default=600.0)
    parser.add_argument("--max-health-seconds", type=float, default=1.0)
    parser.add_argument(
        "--guard-rss-growth-mb",
        type=float,
        default=2500.0,
        help="stop an attack when a process grows this much (the own stack's process is killed)",
    )
    parser.add_argument("--settle-seconds", type=float, default=60.0, help="quiet wait after each")
    parser.add_argument("--slow-hold-seconds", type=float, default=35.0, help="slow bodies held")
    parser.add_argument("--markdown", default=None, help="write the report table to this file")
    parser.set_defaults(handler=run)
