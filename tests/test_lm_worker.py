"""`spiritlm-serve lm`: starts the unmodified vLLM server, passes vLLM's own flags through, and
takes vLLM down with it.

One command-started worker, run the way an operator adds an LM replica, serves the module:
- vLLM's flags reach vLLM (its command line, its model card, its refusal of a longer prompt);
- with the suite's shared worker it makes two replicas behind one gateway: requests with the same
  conversation id (`X-Session-Id`) always reach the same replica;
- SIGTERM stops the command and vLLM with it, and the gateway moves that replica's
  conversations to the live one.
"""

from __future__ import annotations

import re
import signal
import sys
import time

import httpx
import psutil
import pytest

from service.checkpoints.layout import BASE
from service.process import ChildProcess, free_port
from tests.support.scaleout import fast_health_env, gateway_argv, wait_for, worker_states
from tests.support.servers import Servers

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
GENERATE = {
    "inputs": [{"type": "text", "text": "Once upon a time"}],
    "output_modality": "text",
    "max_tokens": 4,
    "temperature": 0,
}


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
    return servers.spawn("lm-command", argv, url, "/health", 600), url


def test_lm_command_passes_vllm_flags(replica: tuple[ChildProcess, str]) -> None:
    command, url = replica
    assert command.popen is not None
    cmdline = vllm_process(psutil.Process(command.popen.pid)).cmdline()
    assert cmdline[cmdline.index("--max-model-len") + 1] == "1024"
    assert cmdline[cmdline.index("--max-num-seqs") + 1] == "8"
    assert "--enable-prefix-caching" in cmdline
    assert "--skip-tokenizer-init" in cmdline  # ours: prompts are token ids

    # vLLM itself took the flag: its model card and its refusal of a longer prompt say so.
    [card] = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
    assert card["id"] == BASE
    assert card["max_model_len"] == 1024
    body = {"model": BASE, "prompt": [1] + [450] * 1100, "max_tokens": 1}
    refused = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert refused.status_code == 400, refused.text


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
        env=fast_health_env(servers),
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
