"""`gateway` (the API process) and `up` (LM worker, speech worker and gateway on one machine)."""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

from service.commands.common import log, pin_to_configured_cores
from service.config import add_settings_arguments, settings_from_args
from service.gateway.settings import GatewaySettings

GATEWAY_FIELDS = (
    "model",
    "checkpoints_dir",
    "cache_dir",
    "host",
    "port",
    "api_keys",
    "cors_origins",
    "max_body_bytes",
    "max_tokens_limit",
    "max_concurrent_requests",
    "max_audio_seconds",
    "max_input_chars",
    "drain_seconds",
    "fewshot_dir",
    "fewshot_shots",
    "classification_dir",
    "end_of_speech_silence_tokens",
    "end_of_speech_min_speech_tokens",
    "realtime_max_sessions",
    "realtime_max_session_seconds",
    "realtime_idle_timeout_seconds",
    "realtime_max_buffer_seconds",
    "realtime_max_message_bytes",
    "realtime_context_tokens",
    "cpu_cores",
)
# Passed to the gateway child of `up` as flags of their own; the others travel as env vars.
_UP_GATEWAY_FLAGS = {"host", "port", "model", "checkpoints_dir", "cache_dir"}


def gateway_settings(args: argparse.Namespace) -> GatewaySettings:
    settings: GatewaySettings = settings_from_args(args, GatewaySettings)
    updates = {}
    if args.lm_url:
        updates["lm_urls"] = args.lm_url
    if args.speech_url:
        updates["speech_urls"] = args.speech_url
    return settings.model_copy(update=updates)


def run_gateway(args: argparse.Namespace) -> int:
    settings = gateway_settings(args)
    if not settings.lm_urls or not settings.speech_urls:
        log("error: the gateway needs --lm-url and --speech-url (or SPIRITLM_LM_URLS/SPEECH_URLS)")
        return 2
    if not pin_to_configured_cores(settings):
        return 2
    from service.gateway.server import serve_gateway  # after pinning: it loads torch

    serve_gateway(settings)
    return 0


def given_gateway_env(args: argparse.Namespace) -> dict[str, str]:
    """SPIRITLM_* variables for the gateway settings given as flags to `up`."""
    env = {}
    for name in GATEWAY_FIELDS:
        value = getattr(args, name, None)
        if value is not None and name not in _UP_GATEWAY_FLAGS:
            env[f"SPIRITLM_{name.upper()}"] = str(value)
    return env


def run_up(args: argparse.Namespace) -> int:
    from service.checkpoints.make import check_files, resolve_layout
    from service.cpus import core_list, plan_for
    from service.lm.worker import is_cpu_vllm, start_lm_worker
    from service.process import ChildProcess, python_module_argv

    settings = gateway_settings(args)
    layout = resolve_layout(settings.checkpoints_dir, settings.cache_dir, progress=log)
    check_files(layout, settings.model, lm=True, speech=True)
    logs = Path(args.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "SPIRITLM_CHECKPOINTS_DIR": str(layout.root),
        "SPIRITLM_MODEL": settings.model,
    }
    lm_env: dict[str, str] = {}
    split = plan_for(os.environ, is_cpu_vllm())
    if split is not None:
        lm_env = split.lm_env()
        env.update(split.speech_env())
        speech_cores = core_list(split.speech)
        log(f"CPU cores: vLLM {core_list(split.lm)}; speech worker and gateway {speech_cores}")
    children: list[ChildProcess] = []
    stopping = {"now": False}

    def request_stop(signum: int, frame: object) -> None:
        stopping["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        speech = ChildProcess(
            "speech worker",
            python_module_argv("service", "speech-worker", "--port", str(args.speech_port)),
            f"http://127.0.0.1:{args.speech_port}/ready",
            env=env,
            log_path=str(logs / "speech-worker.log"),
        )
        speech.start()
        children.append(speech)
        lm = start_lm_worker(
            layout.lm_dir(settings.model),
            settings.model,
            port=args.lm_port,
            extra_args=args.extra_args,
            env=lm_env,
            log_path=str(logs / "lm-worker.log"),
            progress=log,
        )
        children.append(lm)
        speech.wait_healthy(600, log)
        gateway = ChildProcess(
            "gateway",
            python_module_argv(
                "service",
                "gateway",
                "--host",
                settings.host,
                "--port",
                str(settings.port),
                "--lm-url",
                f"http://127.0.0.1:{args.lm_port}",
                "--speech-url",
                f"http://127.0.0.1:{args.speech_port}",
            ),  # fmt: skip
            f"http://127.0.0.1:{settings.port}/ready",
            env={**env, **given_gateway_env(args)},
            log_path=str(logs / "gateway.log"),
        )
        gateway.start()
        children.append(gateway)
        gateway.wait_healthy(120, log)
        url = f"http://{settings.host}:{settings.port}"
        print(f"spiritlm-serve is up: {url}  (model {settings.model})")
        print(f"API docs: {url}/docs   logs: {logs}", flush=True)
        while not stopping["now"] and all(child.running() for child in children):
            time.sleep(0.5)
        if not stopping["now"]:
            dead = [child.name for child in children if not child.running()]
            log(f"error: {', '.join(dead)} stopped unexpectedly; shutting down")
            return 1
        return 0
    finally:
        log("stopping...")
        for child in reversed(children):
            child.stop()


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, GATEWAY_FIELDS, GatewaySettings)
    parser.add_argument(
        "--checkpoints", dest="checkpoints_dir", default=None, help="alias of --checkpoints-dir"
    )


def register(commands: argparse._SubParsersAction) -> None:
    gateway = commands.add_parser("gateway", help="run the API gateway")
    _add_common(gateway)
    gateway.add_argument("--lm-url", action="append", default=[], help="LM worker URL (repeat)")
    gateway.add_argument(
        "--speech-url", action="append", default=[], help="speech worker URL (repeat)"
    )
    gateway.set_defaults(handler=run_gateway)

    up = commands.add_parser(
        "up",
        help="run LM worker, speech worker and gateway together (embedded default model)",
        description="Unknown flags are passed to vLLM.",
    )
    _add_common(up)
    up.add_argument("--lm-url", action="append", default=[], help=argparse.SUPPRESS)
    up.add_argument("--speech-url", action="append", default=[], help=argparse.SUPPRESS)
    up.add_argument("--lm-port", type=int, default=8100)
    up.add_argument("--speech-port", type=int, default=8200)
    up.add_argument("--log-dir", default=".cache/logs")
    up.set_defaults(handler=run_up, passthrough=True)
