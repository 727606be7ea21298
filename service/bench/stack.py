"""A whole stack for a benchmark: `spiritlm-serve up` on free loopback ports, stopped afterwards.

The supervisor (`up`) starts the speech worker, vLLM and the gateway as children of its own;
stopping it stops them. Whatever of its process tree is still alive after that (a child left
behind when the supervisor had to be killed) is killed too, so a benchmark never leaves servers
running.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import psutil

from service.bench.processes import tree
from service.process import ChildProcess, Progress, free_port, python_module_argv


class LocalStack:
    """`spiritlm-serve up` with its own ports and log directory."""

    def __init__(
        self,
        log_dir: Path,
        *,
        model: str | None = None,
        checkpoints: str | None = None,
        cache_dir: str | None = None,
        gateway_flags: list[str] | None = None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.port, self.lm_port, self.speech_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = python_module_argv(
            "service", "up",
            "--port", str(self.port),
            "--lm-port", str(self.lm_port),
            "--speech-port", str(self.speech_port),
            "--log-dir", str(self.log_dir),
            # An idle gateway exits at once; a benchmark's stop should not wait out the default.
            "--drain-seconds", "5",
        )  # fmt: skip
        for flag, value in (("--model", model), ("--checkpoints", checkpoints)):
            if value:
                argv += [flag, value]
        if cache_dir:
            argv += ["--cache-dir", cache_dir]
        argv += gateway_flags or []
        env = dict(os.environ)
        env.pop("SPIRITLM_API_KEYS", None)
        self.child = ChildProcess("spiritlm-serve up", argv, self.url + "/ready", env=env,
                                  log_path=str(self.log_dir / "up.log"))  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.child.popen is not None
        return self.child.popen.pid

    def start(self, timeout: float = 900.0, progress: Progress | None = None) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if progress:
            progress(f"starting the stack (logs in {self.log_dir})")
        self.child.start()
        self.child.wait_healthy(timeout, progress)

    def stop(self) -> None:
        members = tree([self.pid]) if self.child.running() else []
        self.child.stop(grace=60)
        for process in members:
            # is_running() compares creation times, so a reused pid is never hit.
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if process.is_running():
                    process.kill()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
