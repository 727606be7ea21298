"""`spiritlm-serve lm`: starts the unmodified vLLM server, passes vLLM's own flags through, and
takes vLLM down with it (issue 3)."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import httpx
import psutil
import pytest

from service.checkpoints.layout import BASE
from tests.conftest import free_port

VLLM_MODULE = "vllm.entrypoints.openai.api_server"


def vllm_process(parent: psutil.Process) -> psutil.Process:
    [server] = [
        child for child in parent.children(recursive=True) if VLLM_MODULE in child.cmdline()
    ]
    return server


def test_lm_command_passes_vllm_flags_and_stops_vllm(servers: Any) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "service", "lm", "--model", BASE, "--port", str(port)]
    argv += ["--max-model-len", "1024", "--enable-prefix-caching", "--max-num-seqs", "8"]
    command = servers.spawn("lm-command", argv, url, "/health", 600)
    assert command.popen is not None
    server = vllm_process(psutil.Process(command.popen.pid))
    cmdline = server.cmdline()
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

    command.popen.send_signal(signal.SIGTERM)
    assert command.popen.wait(timeout=60) == 0
    deadline = time.monotonic() + 30
    while server.is_running() and server.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "vLLM outlived the lm command"
        time.sleep(0.5)


class _Interrupted(Exception):
    pass


def test_a_start_up_wait_cut_short_stops_the_process() -> None:
    """Ctrl-C or a signal during start-up must not leave the child (e.g. vLLM) running."""
    from service.process import ChildProcess

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
