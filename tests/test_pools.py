"""Worker pools (service/gateway/pools.py): the health loop outlives any worker answer, `/v1/models`
bodies are validated, `dns+` names are resolved off the event loop, and endpoints that leave the
resolution leave the pool (and the engine's speech clients). No servers: httpx.MockTransport."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from service.gateway import pools
from service.gateway.engine import Engine
from service.gateway.pools import WorkerPool, parse_model_listing

GOOD_LISTING = {"object": "list", "data": [{"id": "spirit-lm-base-7b", "max_model_len": 4096}]}


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Waits (a few seconds at most) until `condition()` holds."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


def _answer(kind: str) -> Callable[[httpx.Request], httpx.Response]:
    """A worker's answer to /v1/models (its /health always answers 200)."""

    def answer(request: httpx.Request) -> httpx.Response:
        if kind == "timeout":
            raise httpx.ReadTimeout("no answer", request=request)
        if kind == "bug":
            raise RuntimeError("something nobody expected")
        if kind == "500":
            return httpx.Response(500, text="Internal Server Error")
        if kind == "list":
            return httpx.Response(200, json=[GOOD_LISTING])
        if kind == "garbage":
            return httpx.Response(200, content=b"\x00not json{")
        if kind == "no-id":
            return httpx.Response(200, json={"data": [{"name": "spirit-lm-base-7b"}]})
        if kind == "bad-length":
            return httpx.Response(200, json={"data": [{"id": "m", "max_model_len": "4096"}]})
        return httpx.Response(200, json=GOOD_LISTING)

    return answer


@pytest.mark.parametrize("bad", ["list", "garbage", "500", "timeout", "bug", "no-id", "bad-length"])
def test_a_bad_answer_ejects_the_worker_and_the_loop_readmits_it_later(bad: str) -> None:
    state = {"answer": "good", "checks": 0}

    def worker(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200)
        state["checks"] += 1
        return _answer(str(state["answer"]))(request)

    async def rounds(n: int) -> None:
        """Waits until the loop has checked the worker `n` more times."""
        target = int(state["checks"]) + n
        await _until(lambda: int(state["checks"]) >= target)

    async def scenario() -> None:
        http = httpx.AsyncClient(transport=httpx.MockTransport(worker))
        pool = WorkerPool("lm", ["http://lm"], models_path="/v1/models", interval=0.01, http=http)
        endpoint = pool.endpoints["http://lm"]
        pool.start()
        try:
            await rounds(2)
            assert endpoint.healthy and endpoint.models == ["spirit-lm-base-7b"]
            state["answer"] = bad
            await rounds(3)
            assert not endpoint.healthy and endpoint.failures >= 2
            assert pool._task is not None and not pool._task.done()  # the loop goes on
            state["answer"] = "good"
            await rounds(2)
            assert endpoint.healthy and endpoint.max_model_len == {"spirit-lm-base-7b": 4096}
        finally:
            await pool.stop()

    asyncio.run(scenario())


def test_a_worker_that_never_answered_properly_is_admitted_once_it_does() -> None:
    state = {"answer": "list"}

    def worker(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200)
        return _answer(state["answer"])(request)

    async def scenario() -> None:
        http = httpx.AsyncClient(transport=httpx.MockTransport(worker))
        pool = WorkerPool("lm", ["http://lm"], models_path="/v1/models", http=http)
        await pool.check_all()
        assert not pool.ready
        state["answer"] = "good"
        await pool.check_all()
        assert pool.ready
        await pool.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "body",
    [
        [],
        "data",
        {},
        {"data": {"id": "m"}},
        {"data": ["m"]},
        {"data": [{"id": 7}]},
        {"data": [{"id": "m", "max_model_len": 0}]},
        {"data": [{"id": "m", "max_model_len": True}]},
        {"data": [{"id": "m", "max_model_len": 4096.5}]},
    ],
)
def test_a_body_that_is_not_a_model_listing_is_refused(body: Any) -> None:
    with pytest.raises(ValueError):
        parse_model_listing(body)


def test_a_model_listing_gives_ids_and_context_lengths() -> None:
    body = {"data": [{"id": "a", "max_model_len": 2048}, {"id": "b", "max_model_len": None}]}
    assert parse_model_listing(body) == (["a", "b"], {"a": 2048})


def _resolver(addresses: dict[str, list[str]], threads: list[bool]) -> Callable[..., Any]:
    """socket.getaddrinfo over a table; records whether each call ran off the event loop."""

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        try:
            asyncio.get_running_loop()
            threads.append(False)
        except RuntimeError:
            threads.append(True)
        if not addresses.get(host):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses[host]]

    return getaddrinfo


def test_dns_refresh_drops_a_vanished_endpoint_and_tells_the_hook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    addresses = {"speech": ["10.0.0.1", "10.0.0.2"]}
    off_loop: list[bool] = []
    monkeypatch.setattr(pools.socket, "getaddrinfo", _resolver(addresses, off_loop))
    removed: list[str] = []

    async def on_removed(url: str) -> None:
        removed.append(url)

    async def scenario() -> None:
        http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
        pool = WorkerPool("speech", ["dns+http://speech:8200"], health_path="/ready", http=http)
        pool.on_removed = on_removed
        assert pool.endpoints == {}  # resolved by the first check, not in the constructor
        await pool.check_all()
        assert sorted(pool.endpoints) == ["http://10.0.0.1:8200", "http://10.0.0.2:8200"]
        assert pool.ready

        addresses["speech"] = ["10.0.0.2", "10.0.0.3"]
        await pool.check_all()
        assert sorted(pool.endpoints) == ["http://10.0.0.2:8200", "http://10.0.0.3:8200"]
        assert removed == ["http://10.0.0.1:8200"]

        # An endpoint with a request in flight stays until the request ends.
        async with pool.use(affinity="x") as endpoint:
            addresses["speech"] = [a for a in ["10.0.0.2", "10.0.0.3"] if a not in endpoint.url]
            await pool.check_all()
            assert endpoint.url in pool.endpoints
        await pool.check_all()
        assert endpoint.url not in pool.endpoints and removed[-1] == endpoint.url

        addresses["speech"] = []  # the name no longer resolves: every pod is gone
        await pool.check_all()
        assert pool.endpoints == {} and not pool.ready
        await pool.stop()

    asyncio.run(scenario())
    assert off_loop and all(off_loop)


def test_a_failing_hook_does_not_stop_the_health_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    addresses = {"speech": ["10.0.0.1"]}
    monkeypatch.setattr(pools.socket, "getaddrinfo", _resolver(addresses, []))

    async def on_removed(url: str) -> None:
        raise RuntimeError("cleanup failed")

    async def scenario() -> None:
        http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
        pool = WorkerPool("speech", ["dns+http://speech:8200"], interval=0.01, http=http)
        pool.on_removed = on_removed
        pool.start()
        await _until(lambda: pool.ready)
        addresses["speech"] = ["10.0.0.9"]
        await _until(lambda: "http://10.0.0.9:8200" in pool.endpoints and pool.ready)
        assert list(pool.endpoints) == ["http://10.0.0.9:8200"]
        assert pool._task is not None and not pool._task.done()
        await pool.stop()

    asyncio.run(scenario())


def test_the_engine_closes_the_speech_client_of_an_endpoint_that_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    addresses = {"speech": ["10.0.0.1", "10.0.0.2"]}
    monkeypatch.setattr(pools.socket, "getaddrinfo", _resolver(addresses, []))

    async def scenario() -> None:
        http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
        speech_pool = WorkerPool("speech", ["dns+http://speech:8200"], http=http)
        lm_pool = WorkerPool("lm", ["http://lm"], http=http)
        layout: Any = SimpleNamespace()
        engine = Engine(layout, lm_pool, speech_pool, default_model="m", max_tokens_limit=16)
        await speech_pool.check_all()
        leaving = engine.speech_client("http://10.0.0.1:8200")
        staying = engine.speech_client("http://10.0.0.2:8200")

        addresses["speech"] = ["10.0.0.2"]
        await speech_pool.check_all()
        assert leaving._http.is_closed and not staying._http.is_closed
        assert engine.speech_client("http://10.0.0.2:8200") is staying
        await engine.aclose()
        await speech_pool.stop()

    asyncio.run(scenario())
