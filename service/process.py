"""Child processes of the service: start, wait until healthy, stop cleanly; ports and logs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

Progress = Callable[[str], None]


class ChildProcess:
    """A server subprocess with a health URL. Stopping it also stops its own children."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        health_url: str,
        *,
        env: dict[str, str] | None = None,
        log_path: str | None = None,
        cores: Sequence[int] | None = None,
    ) -> None:
        """`cores`: the CPU cores the process, and every process it starts, may run on (None:
        this process's own); a ValueError names those this process may not use itself."""
        self.name = name
        self.argv = on_cores(argv, cores) if cores else list(argv)
        self.health_url = health_url
        self.env = env
        self.log_path = log_path
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        output = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - owned by Popen
        # A new session makes the process a group leader, so stop() reaches vLLM's engine workers.
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def healthy(self) -> bool:
        try:
            return httpx.get(self.health_url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout: float, progress: Progress | None = None) -> None:
        """Block until the health URL answers 200; raise if the process dies or time runs out.

        However the wait ends without success (time out, Ctrl-C, a signal handler raising), the
        process is stopped: the caller never got it, so nothing else would.
        """
        try:
            self._wait_healthy(timeout, progress)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, timeout: float, progress: Progress | None) -> None:
        started = time.monotonic()
        last_report = started
        while True:
            if not self.running():
                code = self.popen.returncode if self.popen else None
                hint = f" (log: {self.log_path})" if self.log_path else ""
                raise RuntimeError(f"{self.name} exited with code {code} during start-up{hint}")
            if self.healthy():
                return
            now = time.monotonic()
            if now - started > timeout:
                raise TimeoutError(f"{self.name} not healthy after {timeout:.0f} s")
            if progress and now - last_report >= 10:
                progress(f"waiting for {self.name} ({now - started:.0f} s)...")
                last_report = now
            time.sleep(0.5)

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM to the process group, SIGKILL after `grace` seconds."""
        if self.popen is None or self.popen.poll() is not None:
            return
        _signal_group(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)
        # Engine workers may outlive the leader briefly; make sure nothing of the group remains.
        _signal_group(self.popen.pid, signal.SIGKILL)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


# Moves itself to the cores in argv[1], then becomes argv[2:] (same process: exec keeps the
# affinity, and every process it starts inherits it). Not Popen's preexec_fn, which is unsafe
# in a parent with threads (pytest, `bench lm`).
_AFFINITY_THEN_EXEC = (
    "import os, sys; "
    "os.sched_setaffinity(0, [int(core) for core in sys.argv[1].split(',')]); "
    "os.execvp(sys.argv[2], sys.argv[2:])"
)


def on_cores(argv: Sequence[str], cores: Sequence[int]) -> list[str]:
    """`argv`, run on `cores` only; a ValueError names those this process may not use."""
    missing = sorted(set(cores) - os.sched_getaffinity(0))
    if missing:
        raise ValueError(f"core(s) {missing} are not available to this process")
    listed = ",".join(str(core) for core in sorted(set(cores)))
    return [sys.executable, "-c", _AFFINITY_THEN_EXEC, listed, *argv]


def python_module_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def free_port() -> int:
    """A loopback port that nothing listens on right now, for a child server of our own."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lm_worker_log_path(port: int) -> str:
    """Where a command that starts its own LM worker sends vLLM's output.

    vLLM logs to stdout, which must stay machine-readable (`generate --json`, `bench lm`).
    """
    return str(Path(tempfile.gettempdir()) / f"spiritlm-lm-worker-{port}.log")
