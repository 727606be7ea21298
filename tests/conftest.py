"""Shared fixtures: the embedded checkpoints and the real processes, started once per session.

Processes are the real ones (vLLM's OpenAI server, the speech worker, the gateway) on loopback
ports, started on first use and stopped at the end of the session.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from service.checkpoints.layout import BASE, EXPRESSIVE, CheckpointLayout
from service.cpus import plan_for
from service.lm.worker import is_cpu_vllm
from service.process import ChildProcess

REPO = Path(__file__).resolve().parent.parent
SPEECH_FILE = Path(
    os.environ.get("SPIRITLM_TEST_AUDIO", REPO.parent / "shared" / "data" / "7143-88743-0029.flac")
)
if not SPEECH_FILE.is_file():  # a fresh clone outside the workspace: use the copy in tests/data
    SPEECH_FILE = REPO / "tests" / "data" / "7143-88743-0029.flac"

# The slow sentencepiece LlamaTokenizer of transformers 4.x (transformers 5 no longer has it)
# runs in its own interpreter (scripts/make_tokenizer_reference_venv.sh).
REFERENCE_SCRIPT = REPO / "tests" / "tools" / "slow_tokenizer_reference.py"
REFERENCE_ENV = "SPIRITLM_TOKENIZER_REFERENCE_PYTHON"
DEFAULT_REFERENCE = REPO / ".cache" / "tokenizer-reference" / "bin" / "python"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def speech_file() -> Path:
    return SPEECH_FILE


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the embedded default is generated; shared with the child processes via env."""
    configured = os.environ.get("SPIRITLM_TEST_CACHE_DIR")
    return Path(configured) if configured else tmp_path_factory.mktemp("spiritlm-cache")


@pytest.fixture(scope="session")
def layout(cache_dir: Path) -> CheckpointLayout:
    from service.checkpoints.make import embedded_checkpoints

    return embedded_checkpoints(cache_dir, progress=lambda message: None)


@pytest.fixture(scope="session")
def child_env(layout: CheckpointLayout, cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["SPIRITLM_CHECKPOINTS_DIR"] = str(layout.root)
    env["SPIRITLM_CACHE_DIR"] = str(cache_dir)
    env.pop("SPIRITLM_API_KEYS", None)
    # The test stacks share the cores the way `spiritlm-serve up` does (service/cpus.py).
    split = plan_for(env, is_cpu_vllm())
    if split is not None:
        env.update(split.lm_env() | split.speech_env())
    return env


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


class Servers:
    """Starts each (kind, model) process once and stops them all at the end."""

    def __init__(self, layout: CheckpointLayout, env: dict[str, str], log_dir: Path) -> None:
        self.layout = layout
        self.env = env
        self.log_dir = log_dir
        self.started: dict[str, tuple[ChildProcess, str]] = {}
        self.extra: list[ChildProcess] = []

    def lm(self, model: str = BASE) -> str:
        key = f"lm-{model}"
        if key not in self.started:
            from service.lm.worker import vllm_argv

            port = free_port()
            argv = vllm_argv(self.layout.lm_dir(model), model, host="127.0.0.1", port=port)
            self._start(key, argv, f"http://127.0.0.1:{port}", "/health", 600)
        return self.started[key][1]

    def speech(self, models: str = f"{BASE},{EXPRESSIVE}") -> str:
        key = f"speech-{models}"
        if key not in self.started:
            port = free_port()
            argv = self.speech_argv(port, models)
            self._start(key, argv, f"http://127.0.0.1:{port}", "/ready", 300)
        return self.started[key][1]

    def gateway(self, model: str = BASE, *extra: str, name: str = "") -> str:
        key = f"gateway-{model}-{name}-{' '.join(extra)}"
        if key not in self.started:
            port = free_port()
            argv = [sys.executable, "-m", "service", "gateway", "--port", str(port)]
            argv += ["--model", model, "--lm-url", self.lm(model), "--speech-url", self.speech()]
            argv += list(extra)
            self._start(key, argv, f"http://127.0.0.1:{port}", "/ready", 120)
        return self.started[key][1]

    def _start(self, key: str, argv: list[str], url: str, health: str, timeout: float) -> None:
        self.started[key] = (self.spawn(key, argv, url, health, timeout), url)

    def spawn(
        self,
        name: str,
        argv: list[str],
        url: str,
        health: str,
        timeout: float,
        env: dict[str, str] | None = None,
    ) -> ChildProcess:
        """Start one more process (stopped at session end at the latest) and wait for it."""
        child = ChildProcess(
            name,
            argv,
            url + health,
            env=env or self.env,
            log_path=str(self.log_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".log")),
        )
        child.start()
        self.extra.append(child)
        child.wait_healthy(timeout)
        return child

    def speech_argv(self, port: int, models: str = BASE) -> list[str]:
        return [sys.executable, "-m", "service", "speech-worker", "--port", str(port)] + [
            "--models",
            models,
        ]

    def stop_all(self) -> None:
        """Stop every process at once: each may take seconds to shut down (vLLM does)."""
        children = self.extra + [child for child, _ in self.started.values()]
        with ThreadPoolExecutor(max_workers=max(1, len(children))) as pool:
            list(pool.map(ChildProcess.stop, children))


@pytest.fixture(scope="session")
def servers(
    layout: CheckpointLayout, child_env: dict[str, str], log_dir: Path
) -> Iterator[Servers]:
    running = Servers(layout, child_env, log_dir)
    yield running
    running.stop_all()


@pytest.fixture(scope="session")
def reference_python() -> Path:
    """The interpreter with the reference tokenizer (transformers 4.x)."""
    configured = os.environ.get(REFERENCE_ENV)
    if configured:
        path = Path(configured)
        if not path.is_file():
            pytest.fail(f"{REFERENCE_ENV}={configured} does not exist")
        return path
    if DEFAULT_REFERENCE.is_file():
        return DEFAULT_REFERENCE
    pytest.skip(
        f"no reference tokenizer interpreter: set {REFERENCE_ENV} or run "
        "scripts/make_tokenizer_reference_venv.sh"
    )


def run_reference(
    python: Path, lm_dir: Path, prompts: list[str], decode: list[list[int]]
) -> dict[str, Any]:
    """The slow tokenizer's ids for `prompts` and texts for `decode`, loaded from `lm_dir`."""
    request = {"lm_dir": str(lm_dir), "prompts": prompts, "decode": decode}
    done = subprocess.run(
        [str(python), str(REFERENCE_SCRIPT)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout)
    assert answer["version"].startswith("4."), answer["version"]
    return answer
