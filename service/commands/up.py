"""`up`: LM worker, speech worker and gateway on one machine, under one supervisor.

Each flag goes to the child whose setting it is: the gateway's settings to the gateway, the
speech worker's own (those the gateway lacks) to the speech worker, and every other flag must be
one of vLLM's, checked with vLLM's own parser before anything starts, for the LM worker.

The three children share one internal credential (docs/security.md): the one configured, else a
random one made for this run. It travels in their environment, never on a command line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from service.commands.common import log
from service.config import (
    Settings,
    add_settings_arguments,
    env_name,
    flag_names,
    settings_from_args,
)
from service.errors import SpiritError
from service.gateway.settings import GatewaySettings
from service.internal_auth import new_key
from service.speech_worker.settings import SpeechWorkerSettings

# `up` points the gateway at the workers it starts itself.
GATEWAY_FIELDS = tuple(
    name for name in GatewaySettings.model_fields if name not in ("lm_urls", "speech_urls")
)
SPEECH_WORKER_FIELDS = tuple(
    name for name in SpeechWorkerSettings.model_fields if name not in GatewaySettings.model_fields
)
# Given to the gateway child by `up` itself (as flags, or resolved: the checkpoint root, the
# internal credential in `child_env`).
_SET_BY_UP = frozenset(
    {"host", "port", "model", "checkpoints_dir", "cache_dir", "internal_api_key"}
)
# Settings both processes have (the device, the audio limits, the chunk sizes): a flag given to
# `up` reaches both. `cpu_cores` is `up`'s own split between the processes (service/cpus.py).
SHARED_WITH_SPEECH_WORKER = tuple(
    name
    for name in SpeechWorkerSettings.model_fields
    if name in GatewaySettings.model_fields and name not in _SET_BY_UP | {"cpu_cores"}
)
INTERNAL_API_KEY_ENV = env_name(Settings, "internal_api_key")

# Runs in a child process: importing vLLM takes seconds and changes this process's environment
# (LD_LIBRARY_PATH and more), which the children of `up` inherit. The model is a placeholder:
# vLLM's parser only checks the flags.
_VLLM_CHECK = r"""
import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

class Refused(Exception):
    pass

class Parser(FlexibleArgumentParser):
    def error(self, message):
        raise Refused(message)

try:
    args = make_arg_parser(Parser(prog="vllm serve")).parse_args(
        ["--model", "placeholder", *json.load(sys.stdin)]
    )
    result = {"extra": args.model_tag}
except (Refused, ValueError) as error:
    result = {"error": str(error)}
print(json.dumps(result))
"""


@dataclass(frozen=True)
class ChildFlags:
    """What `up` passes on from its own command line to each child."""

    gateway_env: dict[str, str]  # SPIRITLM_* of the gateway settings given as flags
    speech_worker: list[str]  # flags of the speech worker's own settings
    vllm: list[str]  # the remaining flags, all of them vLLM's


def given_gateway_env(args: argparse.Namespace) -> dict[str, str]:
    """SPIRITLM_* variables for the gateway settings given as flags to `up`."""
    env = {}
    for name in GATEWAY_FIELDS:
        value = getattr(args, name, None)
        if value is not None and name not in _SET_BY_UP:
            env[env_name(GatewaySettings, name)] = str(value)
    return env


def given_speech_worker_flags(args: argparse.Namespace) -> list[str]:
    flags = []
    for name in SPEECH_WORKER_FIELDS + SHARED_WITH_SPEECH_WORKER:
        value = getattr(args, name, None)
        if value is not None:
            flags += [flag_names(name)[0], str(value)]
    return flags


def checked_vllm_flags(extra: list[str]) -> list[str]:
    """`extra` when vLLM's server takes every flag of it; else SpiritError naming the first not."""
    if not extra:
        return []
    done = subprocess.run(
        [sys.executable, "-c", _VLLM_CHECK],
        input=json.dumps(extra),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise SpiritError(f"up: cannot check the vLLM flags {extra}: {done.stderr.strip()[-300:]}")
    result = json.loads(lines[-1])
    message = result.get("error")
    if message is None and result.get("extra") is not None:
        message = f"unrecognized arguments: {result['extra']}"
    if message is None:
        return extra
    if message.startswith("unrecognized arguments:"):
        words = message.removeprefix("unrecognized arguments:").split()
        word = next((w for w in words if w.startswith("-")), words[0] if words else "")
        raise SpiritError(
            f"up: unknown flag {word}: not a gateway, speech worker or vLLM option "
            "(spiritlm-serve up --help; vllm serve --help)"
        )
    raise SpiritError(f"up: vLLM refuses its flags {extra}: {message}")


def route_flags(args: argparse.Namespace) -> ChildFlags:
    return ChildFlags(
        gateway_env=given_gateway_env(args),
        speech_worker=given_speech_worker_flags(args),
        vllm=checked_vllm_flags(list(args.extra_args)),
    )


def child_env(settings: GatewaySettings, checkpoints: Path) -> dict[str, str]:
    """The environment of the speech worker and the gateway: this process's, the resolved
    checkpoint root and model, and the internal credential (the configured one, else a new one).
    """
    key = settings.internal_api_key.get_secret_value()
    if not key:
        key = new_key()
        log(f"internal credential: generated for this run (none in {INTERNAL_API_KEY_ENV})")
    return {
        **os.environ,
        "SPIRITLM_CHECKPOINTS_DIR": str(checkpoints),
        "SPIRITLM_MODEL": settings.model,
        INTERNAL_API_KEY_ENV: key,
    }


def run_up(args: argparse.Namespace) -> int:
    from service.checkpoints.make import check_files, resolve_layout
    from service.cpus import core_list, plan_for
    from service.lm.worker import is_cpu_vllm, start_lm_worker
    from service.process import ChildProcess, python_module_argv

    flags = route_flags(args)  # first: a mistyped flag is reported before anything starts
    settings: GatewaySettings = settings_from_args(args, GatewaySettings)
    layout = resolve_layout(settings.checkpoints_dir, settings.cache_dir, progress=log)
    check_files(layout, settings.model, lm=True, speech=True)
    logs = Path(args.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    env = child_env(settings, layout.root)
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
            python_module_argv(
                "service", "speech-worker", "--port", str(args.speech_port), *flags.speech_worker
            ),
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
            extra_args=flags.vllm,
            env=lm_env,
            api_key=env[INTERNAL_API_KEY_ENV],
            log_path=str(logs / "lm-worker.log"),
            progress=log,
            cores=split.lm if split else None,
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
            env={**env, **flags.gateway_env},
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


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "up",
        help="run LM worker, speech worker and gateway together (embedded default model)",
        description="Gateway flags go to the gateway and speech-worker flags to the speech "
        "worker; any other flag must be vLLM's (e.g. --max-model-len 4096 --dtype bfloat16) and "
        "goes to the LM worker. A flag that is none of these is an error.",
    )
    add_settings_arguments(parser, GatewaySettings, GATEWAY_FIELDS)
    add_settings_arguments(parser, SpeechWorkerSettings, SPEECH_WORKER_FIELDS)
    parser.add_argument("--lm-port", type=int, default=8100, help="Port of the LM worker.")
    parser.add_argument("--speech-port", type=int, default=8200, help="Port of the speech worker.")
    parser.add_argument("--log-dir", default=".cache/logs", help="Where the children log.")
    parser.set_defaults(handler=run_up, passthrough=True)
