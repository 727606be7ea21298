"""Shared fixtures: the embedded checkpoints and the real processes, started once per session.

Processes are the real ones (vLLM's OpenAI server, the speech worker, the gateway) on loopback
ports, started on first use and stopped at the end of the session. The helpers behind these
fixtures, and those the test modules share, live in tests/support/.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.checkpoints.layout import CheckpointLayout
from service.cpus import CoreSplit, plan_for
from service.lm.worker import is_cpu_vllm
from tests.support.paths import SPEECH_FILE
from tests.support.servers import Servers
from tests.support.tokenizer_reference import DEFAULT_REFERENCE, REFERENCE_ENV


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
def core_split() -> CoreSplit | None:
    """The test stacks share the cores the way `spiritlm-serve up` does (service/cpus.py)."""
    return plan_for(os.environ, is_cpu_vllm())


@pytest.fixture(scope="session")
def child_env(
    layout: CheckpointLayout, cache_dir: Path, core_split: CoreSplit | None
) -> dict[str, str]:
    env = dict(os.environ)
    env["SPIRITLM_CHECKPOINTS_DIR"] = str(layout.root)
    env["SPIRITLM_CACHE_DIR"] = str(cache_dir)
    env.pop("SPIRITLM_API_KEYS", None)
    if core_split is not None:
        env.update(core_split.lm_env() | core_split.speech_env())
    return env


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def servers(
    layout: CheckpointLayout,
    child_env: dict[str, str],
    log_dir: Path,
    core_split: CoreSplit | None,
) -> Iterator[Servers]:
    running = Servers(layout, child_env, log_dir, core_split.lm if core_split else None)
    yield running
    running.stop_all()


@pytest.fixture
def processes_stay_healthy(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the test: every process the session started still runs and answers /health."""
    yield
    if "servers" not in request.fixturenames:
        return
    servers: Servers = request.getfixturevalue("servers")
    for name, (child, url) in servers.started.items():
        assert child.running(), f"{name} died"
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200, f"{name} unhealthy"


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


def pytest_unconfigure(config: pytest.Config) -> None:
    """Name the failed tests once more, last and one per line.

    CI keeps only the tail of the log, and a failed comparison of audio bytes can fill the
    short summary with kilobytes of its message; this list comes after all of it.
    """
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    failed = {
        report.nodeid: outcome
        for outcome in ("failed", "error")
        for report in reporter.stats.get(outcome, [])
        if getattr(report, "nodeid", "")
    }
    for nodeid, outcome in failed.items():
        reporter.write_line(f"{outcome.upper()}: {nodeid}")
