"""The real processes of a test session (vLLM's OpenAI server, speech workers, gateways).

Each runs on a loopback port, is started on first use and stopped at the end of the session
(the `servers` fixture in tests/conftest.py). They run without the internal credential; a test
that starts its own processes with one uses `with_internal_key`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from service.checkpoints.layout import BASE, EXPRESSIVE, CheckpointLayout
from service.process import ChildProcess, free_port

# The internal credential of the processes a test starts with one (docs/security.md); the
# shared processes (`Servers`) run without, as the README's local use does.
INTERNAL_API_KEY = "test-internal-credential"
INTERNAL_API_KEY_ENV = "SPIRITLM_INTERNAL_API_KEY"


def with_internal_key(env: dict[str, str], key: str = INTERNAL_API_KEY) -> dict[str, str]:
    """`env` plus the internal credential: a worker then checks it, a gateway sends it."""
    return {**env, INTERNAL_API_KEY_ENV: key}


class Servers:
    """Starts each (kind, model) process once and stops them all at the end."""

    def __init__(
        self,
        layout: CheckpointLayout,
        env: dict[str, str],
        log_dir: Path,
        lm_cores: Sequence[int] | None = None,
    ) -> None:
        self.layout = layout
        self.env = env
        self.log_dir = log_dir
        self.lm_cores = lm_cores  # where vLLM runs, as `spiritlm-serve up` places it
        self.started: dict[str, tuple[ChildProcess, str]] = {}
        self.extra: list[ChildProcess] = []

    def lm(self, model: str = BASE) -> str:
        key = f"lm-{model}"
        if key not in self.started:
            from service.lm.worker import vllm_argv

            port = free_port()
            argv = vllm_argv(self.layout.lm_dir(model), model, host="127.0.0.1", port=port)
            url = f"http://127.0.0.1:{port}"
            self.started[key] = (self.spawn_lm(key, argv, url), url)
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

    def spawn_lm(self, name: str, argv: list[str], url: str) -> ChildProcess:
        """`spawn` for a vLLM server (`argv` from `vllm_argv`), on `lm_cores`."""
        return self.spawn(name, argv, url, "/health", 600, cores=self.lm_cores)

    def spawn(
        self,
        name: str,
        argv: list[str],
        url: str,
        health: str,
        timeout: float,
        env: dict[str, str] | None = None,
        cores: Sequence[int] | None = None,
    ) -> ChildProcess:
        """Start one more process (stopped at session end at the latest) and wait for it."""
        child = ChildProcess(
            name,
            argv,
            url + health,
            env=env or self.env,
            log_path=str(self.log_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".log")),
            cores=cores,
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
