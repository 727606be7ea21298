"""A gateway in front of workers of a test's own, and waiting for its view of their health."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable

import httpx

from service.checkpoints.layout import BASE
from tests.support.servers import Servers


def gateway_argv(port: int, lm_urls: list[str], speech_urls: list[str], *extra: str) -> list[str]:
    argv = [sys.executable, "-m", "service", "gateway", "--port", str(port), "--model", BASE]
    for url in lm_urls:
        argv += ["--lm-url", url]
    for url in speech_urls:
        argv += ["--speech-url", url]
    return argv + list(extra)


def fast_health_env(servers: Servers) -> dict[str, str]:
    return {**servers.env, "SPIRITLM_HEALTH_INTERVAL": "0.3"}


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll `predicate` until it holds; an HTTP error while polling counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if predicate():
                return
        time.sleep(0.2)
    raise AssertionError(f"not reached within {timeout:.0f} s: {what or predicate}")


def worker_states(gateway: str, kind: str) -> dict[str, bool]:
    return httpx.get(f"{gateway}/ready", timeout=5).json()[f"{kind}_workers"]
