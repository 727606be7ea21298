"""`lm`: the LM worker, vLLM's OpenAI server on the checkpoint's LM directory."""

from __future__ import annotations

import argparse
import signal
import time

from service.commands.common import add_checkpoint_flags, layout_from_args, log
from service.config import Settings, add_settings_arguments
from service.internal_auth import unguarded_warning


def run_lm(args: argparse.Namespace) -> int:
    from service.lm.worker import start_lm_worker

    settings, layout = layout_from_args(args, lm=True, speech=False)
    if not settings.internal_api_key.get_secret_value():
        log(unguarded_warning(args.port))
    stop = {"requested": False}

    def request_stop(signum: int, frame: object) -> None:
        stop["requested"] = True

    # Before vLLM starts: a stop asked for during its start-up must still take it down with us.
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    child = start_lm_worker(
        layout.lm_dir(settings.model),
        settings.model,
        host=args.host,
        port=args.port,
        extra_args=args.extra_args,
        api_key=settings.internal_api_key.get_secret_value(),
        timeout=args.start_timeout,
        progress=log,
    )
    print(f"LM worker listening on http://{args.host}:{args.port}/v1", flush=True)
    try:
        while child.running() and not stop["requested"]:
            time.sleep(0.5)
    finally:
        child.stop()
    return 0 if stop["requested"] else 1


def register(commands: argparse._SubParsersAction) -> None:
    lm = commands.add_parser(
        "lm",
        help="run the LM worker (vLLM OpenAI server); unknown flags go to vLLM",
        description="Starts `vllm serve` on the checkpoint's LM directory. Any flag not listed "
        "here (e.g. --tensor-parallel-size 2 --max-model-len 4096 --dtype bfloat16 "
        "--gpu-memory-utilization 0.9 --enable-prefix-caching) is passed to vLLM unchanged.",
    )
    add_checkpoint_flags(lm)
    # The gateway's credential; vLLM gets it as VLLM_API_KEY (service/lm/worker.py).
    add_settings_arguments(lm, Settings, ("internal_api_key",))
    lm.add_argument("--host", default="127.0.0.1", help="Address vLLM listens on.")
    lm.add_argument("--port", type=int, default=8100, help="Port vLLM listens on.")
    lm.add_argument(
        "--start-timeout", type=float, default=900.0, help="Seconds vLLM may take to start."
    )
    lm.set_defaults(handler=run_lm, passthrough=True)
