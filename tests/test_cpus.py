"""Core placement of a co-located stack: vLLM's threads on some cores, the speech side on others."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import psutil
import pytest

from service.bench.processes import listening_pid
from service.cpus import (
    VLLM_BIND_ENV,
    available_cores,
    core_list,
    parse_core_list,
    plan_for,
    split_cores,
)
from service.process import ChildProcess


def test_core_lists_round_trip() -> None:
    assert core_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert core_list([3]) == "3"
    assert parse_core_list("0-2, 5,7-8") == [0, 1, 2, 5, 7, 8]
    for bad in ("", "a", "3-1", "1-", "-2"):
        with pytest.raises(ValueError, match="cpu_cores"):
            parse_core_list(bad)


def test_speech_gets_a_quarter_of_the_cores_from_the_end() -> None:
    assert split_cores([0]) is None
    two = split_cores([0, 1])
    assert two is not None and (two.lm, two.speech) == ((0,), (1,))
    sixteen = split_cores(range(16))
    assert sixteen is not None
    assert sixteen.lm == tuple(range(12)) and sixteen.speech == (12, 13, 14, 15)
    assert sixteen.lm_env() == {VLLM_BIND_ENV: "0-11"}


def test_a_placement_the_user_chose_wins() -> None:
    assert plan_for({VLLM_BIND_ENV: "0-3"}, cpu_engine=True) is None
    assert plan_for({}, cpu_engine=False) is None
    expected = split_cores(available_cores())
    assert plan_for({}, cpu_engine=True) == expected


def test_the_test_stack_runs_on_disjoint_cores(servers, child_env, core_split) -> None:  # noqa: ANN001
    split = core_split
    if split is None:
        pytest.skip("one core, vLLM is not the CPU build, or its cores were placed: no split")
    speech_pid = listening_pid(servers.speech())
    lm_pid = listening_pid(servers.lm())
    if speech_pid is None or lm_pid is None:
        pytest.skip("cannot see the worker processes")
    assert psutil.Process(speech_pid).cpu_affinity() == list(split.speech)
    # All of vLLM, its API server and engine processes too, not only its compute threads
    # (which vLLM may bind to single cores among them).
    lm = psutil.Process(lm_pid)
    for process in [lm, *lm.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            assert set(process.cpu_affinity()) <= set(split.lm), process.name()
    assert child_env[VLLM_BIND_ENV] == core_list(split.lm)
    log = (servers.log_dir / "lm-spirit-lm-base-7b.log").read_text(errors="replace")
    assert f"core ids={list(split.lm)}" in log  # vLLM's own report of its thread binding


def test_a_child_process_and_all_it_starts_run_on_the_cores_given(tmp_path) -> None:  # noqa: ANN001
    if len(available_cores()) < 2:
        pytest.skip("one core: a child runs there anyway")
    cores = available_cores()[-1:]
    report = "import os; print(sorted(os.sched_getaffinity(0)), flush=True)"
    starts_another = (
        f"{report}; import subprocess, sys; subprocess.run([sys.executable, '-c', {report!r}])"
    )
    log = tmp_path / "child.log"
    child = ChildProcess(
        "affinity",
        [sys.executable, "-c", starts_another],
        "http://127.0.0.1:9/",
        log_path=str(log),
        cores=cores,
    )
    child.start()
    try:
        assert child.popen is not None and child.popen.wait(timeout=60) == 0
    finally:
        child.stop()
    assert log.read_text().splitlines() == [str(cores), str(cores)]
    with pytest.raises(ValueError, match="not available"):
        ChildProcess("nowhere", [sys.executable], "http://127.0.0.1:9/", cores=[max(cores) + 1])


def test_cores_not_available_are_refused_before_anything_loads(child_env) -> None:  # noqa: ANN001
    missing = max(available_cores()) + 1
    run = subprocess.run(
        [sys.executable, "-m", "service", "speech-worker", "--cpu-cores", str(missing)],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert f"core(s) {missing} are not available" in run.stderr


def test_pinned_moves_this_process_and_torch_then_puts_them_back() -> None:
    import torch

    from service.cpus import pinned

    cores = available_cores()
    before_threads = torch.get_num_threads()
    with pinned(cores[-1:]):
        assert sorted(os.sched_getaffinity(0)) == cores[-1:]
        assert torch.get_num_threads() == 1
    assert sorted(os.sched_getaffinity(0)) == cores
    assert torch.get_num_threads() == before_threads
    with pinned(None):
        assert sorted(os.sched_getaffinity(0)) == cores
