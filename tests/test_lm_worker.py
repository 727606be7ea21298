"""`spiritlm-serve lm`: starts the unmodified vLLM server, passes vLLM's own flags through, and
takes vLLM down with it.

One command-started worker, run the way an operator adds an LM replica, serves the module. It
has the internal credential (docs/security.md) in its environment, as `up` and Kubernetes give it:
- vLLM's flags reach vLLM (its command line, its model card, its refusal of a longer prompt);
- vLLM refuses every route but /health and /metrics without the credential, which is on no
  command line;
- with the suite's shared worker it makes two replicas behind one gateway: requests with the same
  conversation id (`X-Session-Id`) always reach the same replica (the gateway sends the
  credential, which the suite's keyless worker ignores);
- SIGTERM stops the command and vLLM with it, and the gateway moves that replica's
  conversations to the live one.
Without processes: the gateway's side of a credential vLLM refuses, how `start_lm_worker` hands
vLLM the credential, and the credential `up` gives its children.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from service.checkpoints.layout import BASE
from service.cli import parse_args
from service.commands.up import INTERNAL_API_KEY_ENV, child_env, route_flags
from service.config import settings_from_args
from service.gateway.pools import WorkerPool
from service.gateway.settings import GatewaySettings
from service.internal_auth import VLLM_API_KEY_ENV, VLLM_MIDDLEWARE
from service.lm import worker
from service.lm.client import LMClient, LMError, SamplingParams
from service.process import ChildProcess, free_port
from tests.support.scaleout import fast_health_env, gateway_argv, wait_for, worker_states
from tests.support.servers import INTERNAL_API_KEY, Servers, with_internal_key

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
GENERATE = {
    "inputs": [{"type": "text", "text": "Once upon a time"}],
    "output_modality": "text",
    "max_tokens": 4,
    "temperature": 0,
}
AUTH = {"Authorization": f"Bearer {INTERNAL_API_KEY}"}


def vllm_process(parent: psutil.Process) -> psutil.Process:
    [server] = [
        child for child in parent.children(recursive=True) if VLLM_MODULE in child.cmdline()
    ]
    return server


@pytest.fixture(scope="module")
def replica(servers: Servers) -> tuple[ChildProcess, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "service", "lm", "--model", BASE, "--port", str(port)]
    argv += ["--max-model-len", "1024", "--enable-prefix-caching", "--max-num-seqs", "8"]
    env = with_internal_key(servers.env)
    child = servers.spawn("lm-command", argv, url, "/health", 600, env=env, cores=servers.lm_cores)
    return child, url


def test_lm_command_passes_vllm_flags(replica: tuple[ChildProcess, str]) -> None:
    command, url = replica
    assert command.popen is not None
    cmdline = vllm_process(psutil.Process(command.popen.pid)).cmdline()
    assert cmdline[cmdline.index("--max-model-len") + 1] == "1024"
    assert cmdline[cmdline.index("--max-num-seqs") + 1] == "8"
    assert "--enable-prefix-caching" in cmdline
    assert "--skip-tokenizer-init" in cmdline  # ours: prompts are token ids

    # vLLM itself took the flag: its model card and its refusal of a longer prompt say so.
    [card] = httpx.get(f"{url}/v1/models", headers=AUTH, timeout=30).json()["data"]
    assert card["id"] == BASE
    assert card["max_model_len"] == 1024
    body = {"model": BASE, "prompt": [1] + [450] * 1100, "max_tokens": 1}
    refused = httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=60)
    assert refused.status_code == 400, refused.text


def test_lm_command_guards_vllm_with_the_internal_credential(
    replica: tuple[ChildProcess, str],
) -> None:
    command, url = replica
    assert command.popen is not None
    parent = psutil.Process(command.popen.pid)
    for process in (parent, vllm_process(parent)):
        assert not any(INTERNAL_API_KEY in arg for arg in process.cmdline())  # `ps` shows these

    body = {"model": BASE, "prompt": [1, 450, 450], "max_tokens": 2, "temperature": 0}
    wrong = {"Authorization": "Bearer another-credential"}
    for headers in ({}, wrong):
        for method, path, json in (
            ("POST", "/v1/completions", body),
            ("GET", "/v1/models", None),
            ("POST", "/invocations", body),  # SageMaker's route, outside vLLM's own check
            ("GET", "/version", None),
        ):
            response = httpx.request(method, url + path, json=json, headers=headers, timeout=30)
            assert response.status_code == 401, (path, headers, response.text)
    for path in ("/health", "/metrics"):  # probes and Prometheus carry no credential
        assert httpx.get(url + path, timeout=30).status_code == 200, path
    served = httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=60)
    assert served.status_code == 200, served.text


def requests_served(lm_url: str) -> float:
    text = httpx.get(f"{lm_url}/metrics", timeout=5).text
    return sum(
        float(match.group(1))
        for match in re.finditer(r"^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    )


def generate(gateway: str, conversation: str) -> None:
    response = httpx.post(
        f"{gateway}/v1/generate", json=GENERATE, headers={"X-Session-Id": conversation}, timeout=60
    )
    assert response.status_code == 200, response.text


def test_conversation_affinity_then_sigterm_and_failover(
    servers: Servers, replica: tuple[ChildProcess, str]
) -> None:
    command, second = replica
    first = servers.lm(BASE)
    gateway_port = free_port()
    gateway = f"http://127.0.0.1:{gateway_port}"
    servers.spawn(
        "gateway-affinity",
        gateway_argv(gateway_port, [first, second], [servers.speech()]),
        gateway,
        "/ready",
        120,
        env=with_internal_key(fast_health_env(servers)),
    )
    wait_for(lambda: all(worker_states(gateway, "lm").values()))
    placements: dict[str, str] = {}
    for conversation in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta"):
        before = {url: requests_served(url) for url in (first, second)}
        for _ in range(3):
            generate(gateway, conversation)
        after = {url: requests_served(url) for url in (first, second)}
        served = {url: after[url] - before[url] for url in after}
        # All three turns of a conversation landed on one replica.
        assert sorted(served.values()) == [0, 3], served
        placements[conversation] = max(served, key=served.get)
    assert set(placements.values()) == {first, second}, "hashing should spread conversations"

    assert command.popen is not None
    server = vllm_process(psutil.Process(command.popen.pid))
    command.popen.send_signal(signal.SIGTERM)
    assert command.popen.wait(timeout=60) == 0
    deadline = time.monotonic() + 30
    while server.is_running() and server.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "vLLM outlived the lm command"
        time.sleep(0.5)
    for conversation, url in placements.items():
        if url == second:
            generate(gateway, conversation)


class _Interrupted(Exception):
    pass


def test_a_start_up_wait_cut_short_stops_the_process() -> None:
    """Ctrl-C or a signal during start-up must not leave the child (e.g. vLLM) running."""

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted

    url = f"http://127.0.0.1:{free_port()}/health"  # nothing answers: never healthy
    child = ChildProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], url)
    previous = signal.signal(signal.SIGALRM, interrupt)
    child.start()
    try:
        signal.alarm(2)
        with pytest.raises(_Interrupted):
            child.wait_healthy(60)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert child.popen is not None and child.popen.poll() is not None


def test_a_replica_that_refuses_the_credential_is_unhealthy_and_unavailable() -> None:
    """A gateway whose credential differs from vLLM's: its health check takes the replica out,
    and a request that reaches it fails as the worker's fault (503), not the client's (401)."""
    sent: list[str | None] = []

    def vllm(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("authorization"))
        if request.url.path == "/health":
            return httpx.Response(200)
        return httpx.Response(401, json={"error": "Unauthorized"})

    async def check() -> tuple[WorkerPool, LMError]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(vllm)) as http:
            pool = WorkerPool("lm", ["http://lm"], models_path="/v1/models", api_key="k", http=http)
            await pool.check_all()
            client = LMClient("http://lm", BASE, api_key="k", http=http)
            with pytest.raises(LMError) as error:
                async for _ in client.stream([1, 450], SamplingParams(max_tokens=1)):
                    pass
            return pool, error.value

    pool, error = asyncio.run(check())
    assert not pool.endpoints["http://lm"].healthy
    assert error.status == 503 and "internal credential" in str(error)
    assert sent == ["Bearer k"] * 3


class _Recorded:
    """Stands in for ChildProcess: keeps what vLLM would have been started with."""

    started: list[_Recorded] = []

    def __init__(self, name: str, argv: list[str], health_url: str, **kwargs: object) -> None:
        self.argv, self.env = argv, kwargs.get("env")
        _Recorded.started.append(self)

    def start(self) -> None:
        pass

    def wait_healthy(self, timeout: float, progress: object = None) -> None:
        pass


def test_vllm_gets_the_credential_in_its_environment_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(worker, "ChildProcess", _Recorded)
    worker.start_lm_worker(tmp_path, BASE, api_key="the-credential")
    worker.start_lm_worker(tmp_path, BASE)
    keyed, open_ = _Recorded.started[-2:]
    assert keyed.env is not None and keyed.env[VLLM_API_KEY_ENV] == "the-credential"
    assert not any("the-credential" in arg for arg in keyed.argv)
    # vLLM's own check covers /v1/* only; our middleware guards its other routes.
    assert keyed.argv[keyed.argv.index("--middleware") + 1] == VLLM_MIDDLEWARE
    assert "--middleware" not in open_.argv and open_.env is None


def test_up_gives_its_children_one_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INTERNAL_API_KEY_ENV, raising=False)
    made = [child_env(GatewaySettings(), Path("/ckpt"))[INTERNAL_API_KEY_ENV] for _ in range(2)]
    assert all(len(key) >= 40 for key in made) and made[0] != made[1]  # random, per run
    monkeypatch.setenv(INTERNAL_API_KEY_ENV, "configured")
    assert child_env(GatewaySettings(), Path("/ckpt"))[INTERNAL_API_KEY_ENV] == "configured"
    # As a flag, it reaches the gateway through child_env too, never as the masked '*****'.
    flags = route_flags(parse_args(["up", "--internal-api-key", "from-flag"]))
    assert INTERNAL_API_KEY_ENV not in flags.gateway_env
    args = parse_args(["up", "--internal-api-key", "from-flag"])
    settings = settings_from_args(args, GatewaySettings)
    assert child_env(settings, Path("/ckpt"))[INTERNAL_API_KEY_ENV] == "from-flag"
    assert "from-flag" not in repr(settings)
