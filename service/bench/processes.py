"""The processes of a running stack and their memory: who they are, and RSS samples over time.

A stack is found from root process ids (the `spiritlm-serve up` supervisor, or the processes
listening on the ports of a gateway and its workers); every descendant belongs to it too (vLLM
runs its engine in a child process). Each process gets a role from its command line, so a report
can say "speech worker" instead of a pid.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil


@dataclass(frozen=True)
class RssSample:
    seconds: float  # since the start of the run
    pid: int
    role: str
    rss: int  # bytes


def role_of(process: psutil.Process) -> str:
    """A readable name for a process of the stack, from its command line."""
    try:
        argv = process.cmdline()
        name = process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "gone"
    line = " ".join(argv)
    for marker, role in (
        ("vllm.entrypoints", "lm worker (vLLM API server)"),
        ("speech-worker", "speech worker"),
        ("service gateway", "gateway"),
        ("service up", "up (supervisor)"),
        ("spiritlm-serve up", "up (supervisor)"),
    ):
        if marker in line:
            return role
    if "EngineCore" in name or "EngineCore" in line:
        return "lm engine core (vLLM)"
    if "VLLM::Worker" in name or "VLLM::Worker" in line:
        return "lm model worker (vLLM)"
    if "resource_tracker" in line:
        return "multiprocessing resource tracker"
    return name or (argv[0] if argv else "unknown")


def tree(roots: Iterable[int]) -> list[psutil.Process]:
    """The root processes and all their descendants that are still alive, without repeats."""
    seen: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for process in members:
            seen.setdefault(process.pid, process)
    return list(seen.values())


def listening_pid(url: str) -> int | None:
    """The process listening on the port of `url` on this machine, if we can see it."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for connection in connections:
        if (
            connection.status == psutil.CONN_LISTEN
            and connection.laddr
            and connection.laddr.port == port
            and connection.pid is not None
        ):
            return connection.pid
    return None


class RssSampler:
    """Samples the RSS of every process of the stack (roots and descendants) on demand."""

    def __init__(self, roots: Iterable[int]) -> None:
        self.roots = list(roots)
        self.started = time.monotonic()
        self.samples: list[RssSample] = []
        self._roles: dict[int, str] = {}

    def sample(self) -> list[RssSample]:
        now = time.monotonic() - self.started
        taken = []
        for process in tree(self.roots):
            role = self._roles.get(process.pid)
            if role is None:
                role = self._roles[process.pid] = role_of(process)
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                taken.append(RssSample(now, process.pid, role, process.memory_info().rss))
        self.samples.extend(taken)
        return taken

    def pids(self) -> list[int]:
        return [process.pid for process in tree(self.roots)]


def open_fds(pid: int) -> int | None:
    """Open file descriptors (sockets included) of a process; None when it cannot be read."""
    try:
        return psutil.Process(pid).num_fds()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def rss(pid: int) -> int | None:
    try:
        return psutil.Process(pid).memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
