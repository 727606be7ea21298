"""The hostile-probe bench (`bench hostile`): its judging on known rows, and a few cheap attacks
run through the bench's own functions against the session's processes.

The real attacks are ones the service already refuses, so the rows must say so: the opus at
44100 Hz 400 before any generation, the CORS preflight of a keyed gateway, the method-name
labels of /metrics, and a keyed speech worker refusing direct calls. The same direct call on a
worker without the credential must be reported as a failure: the bench catches what it is for.
"""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from service.bench.hostile import (
    ATTACKS,
    GROUPS,
    MB,
    Attack,
    HostileConfig,
    Outcome,
    Payloads,
    Probe,
    Row,
    Target,
    judge,
    markdown,
    markdown_row,
    run_attack,
    run_guarded,
    select,
)
from service.checkpoints.layout import BASE
from service.cli import parse_args
from service.process import free_port
from tests.support.servers import Servers, with_internal_key

API_KEY = "sk-bench-hostile-key"
ORIGIN = "https://app.example"
CONFIG = HostileConfig(attack_timeout=60.0, settle_seconds=10.0)


# ---- judging, without processes -------------------------------------------------------------


def row(outcome: Outcome, **fields: object) -> Row:
    values: dict = {"seconds": 0.1, "health_max": 0.01, "health_failures": 0,
                    "rss_growth": dict.fromkeys(GROUPS, 0), "died": []}  # fmt: skip
    values.update(fields)
    judged = Row("probe", outcome, **values)
    judge(judged, CONFIG)
    return judged


def test_a_clean_refusal_passes() -> None:
    assert row(Outcome("400", "x exceeds the limit (max_x)", codes=[400])).ok


@pytest.mark.parametrize(
    "outcome, fields, failure",
    [
        (Outcome("500", codes=[500]), {}, "5xx: 500"),
        (Outcome("200", problem="accepted: too much"), {}, "accepted: too much"),
        (Outcome("400", codes=[400]), {"died": ["gateway (pid 1)"]}, "died: gateway"),
        (Outcome("400"), {"rss_growth": {"gateway": 600 * MB}}, "gateway RSS +600 MB"),
        (Outcome("400"), {"health_max": 1.0}, "/health 1.00 s"),
        (Outcome("400"), {"health_failures": 2}, "/health failed 2x"),
    ],
)
def test_each_target_missed_fails_the_row(outcome: Outcome, fields: dict, failure: str) -> None:
    judged = row(outcome, **fields)
    assert not judged.ok
    assert any(failure in text for text in judged.failures), judged.failures


def test_markdown_rows_escape_cells_and_show_failures() -> None:
    judged = row(Outcome("200", "a | b\nc", problem="accepted: it"), rss_growth={"vLLM": 2 * MB})
    line = markdown_row(judged)
    assert line.startswith("| probe | 200 | a \\| b c |")
    assert "| - | - | +2 | **FAIL**: accepted: it |" in line
    report = markdown([judged], CONFIG)
    assert "1 attacks, **1 failed**" in report


@pytest.mark.parametrize("tripped", [False, True])
def test_an_attack_without_answer_is_cut_off(tripped: bool) -> None:
    """A hanging attack is reported as a hang (or, memory guard tripped, as aborted), and the
    bench goes on."""

    async def never(probe: Probe) -> Outcome:
        await asyncio.sleep(3600)
        return Outcome("unreachable")

    guard = threading.Event()
    if tripped:
        guard.set()
    probe = Probe(Target("http://127.0.0.1:9"), HostileConfig(attack_timeout=0.3), Payloads())
    outcome = asyncio.run(asyncio.wait_for(run_guarded(Attack("never", never), probe, guard), 10))
    assert (outcome.status, outcome.problem) == (
        ("aborted", "runaway memory") if tripped else ("hang", "hang")
    )


def test_attacks_are_selected_by_name_and_registered() -> None:
    assert [attack.name for attack in select("cors-preflight,generate-opus-44100")] == [
        "generate-opus-44100",
        "cors-preflight",
    ]
    with pytest.raises(ValueError, match="unknown attack"):
        select("telepathy")
    assert all(attack.summary for attack in ATTACKS.values())
    args = parse_args(["bench", "hostile", "--only", "slow-bodies", "--markdown", "out.md"])
    assert (args.only, args.markdown, args.max_rss_growth_mb) == ("slow-bodies", "out.md", 600.0)


# ---- attacks against the session's processes ----------------------------------------------------


def pids(servers: Servers, *urls: str) -> list[int]:
    return [
        child.popen.pid
        for child, url in servers.started.values()
        if url in urls and child.popen is not None
    ]


def test_opus_at_44100_is_a_400_before_generation(servers: Servers) -> None:
    gateway, lm, speech = servers.gateway(BASE), servers.lm(BASE), servers.speech()
    target = Target(gateway, lm_url=lm, pids=pids(servers, gateway, lm, speech))
    result = run_attack(ATTACKS["generate-opus-44100"], target, CONFIG)
    assert result.ok, result.failures
    assert result.outcome.status == "400"
    assert "44100" in result.outcome.message and "sample_rate" in result.outcome.message
    # Every process was watched: the gateway, the speech worker and vLLM (server + engine).
    assert set(result.rss_growth) == set(GROUPS)
    assert result.health_max is not None and result.health_max < 1.0
    assert "generate-opus-44100 | 400 |" in markdown_row(result)


def test_declared_bodies_top_k_and_surrogates_are_refused_and_leave_the_stack_serving(
    servers: Servers,
) -> None:
    gateway, lm = servers.gateway(BASE), servers.lm(BASE)
    target = Target(gateway, lm_url=lm, pids=pids(servers, gateway))
    declared = run_attack(ATTACKS["declared-bodies"], target, CONFIG)
    assert declared.ok, declared.failures
    assert declared.outcome.status == "200 (normal request)"
    top_k = run_attack(ATTACKS["huge-top-k"], target, CONFIG)
    assert top_k.ok, top_k.failures
    assert top_k.outcome.codes == [422] * 11 + [200] and "top_k" in top_k.outcome.message
    surrogates = run_attack(ATTACKS["lone-surrogates"], target, CONFIG)
    assert surrogates.ok, surrogates.failures
    assert surrogates.outcome.codes == [400, 400, 400]
    assert surrogates.outcome.message.count("lone UTF-16 surrogate") == 3


@pytest.fixture(scope="module")
def keyed_gateway(servers: Servers) -> str:
    return servers.gateway(
        BASE, "--api-keys", API_KEY, "--cors-origins", ORIGIN, name="bench-hostile"
    )


def test_cors_preflight_and_method_labels_on_a_keyed_gateway(keyed_gateway: str) -> None:
    target = Target(keyed_gateway, api_key=API_KEY, cors_origin=ORIGIN)
    preflight = run_attack(ATTACKS["cors-preflight"], target, CONFIG)
    assert preflight.ok, preflight.failures
    assert preflight.outcome.status == "200, 401 without key"
    assert f"allow-origin {ORIGIN}" in preflight.outcome.message
    assert preflight.rss_growth == {}  # no process given: memory not reported
    methods = run_attack(ATTACKS["metrics-method-names"], target, CONFIG)
    assert methods.ok, methods.failures
    assert "HOSTILE" not in methods.outcome.message
    # Without an allowed origin to send, the preflight is skipped, not failed.
    skipped = run_attack(ATTACKS["cors-preflight"], Target(keyed_gateway), CONFIG)
    assert (skipped.ok, skipped.outcome.status) == (True, "skipped")


def test_worker_port_without_the_credential(servers: Servers) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "service", "speech-worker", "--port", str(port)]
    keyed = servers.spawn("bench-hostile keyed speech worker", argv + ["--models", BASE], url,
                          "/ready", 300, env=with_internal_key(servers.env))  # fmt: skip
    assert keyed.popen is not None
    refused = run_attack(
        ATTACKS["worker-ports-no-credential"],
        Target(servers.gateway(BASE), speech_url=url, pids=[keyed.popen.pid]),
        CONFIG,
    )
    assert refused.ok, refused.failures
    assert refused.outcome.status == "401"
    assert "speech /v1/encode 401" in refused.outcome.message
    assert "vLLM not given" in refused.outcome.message
    assert set(refused.rss_growth) == {"speech worker"}
    # The shared worker runs without the credential: the bench must call that a failure.
    open_worker = servers.speech()
    served = run_attack(
        ATTACKS["worker-ports-no-credential"],
        Target(servers.gateway(BASE), speech_url=open_worker),
        CONFIG,
    )
    assert not served.ok
    assert "speech /v1/encode answered 200" in served.failures
