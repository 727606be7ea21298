"""Pools of worker endpoints: health-based ejection and re-admission, balancing, affinity.

Each configured URL is checked every `interval` seconds on its health path. An endpoint that
fails a check or a request is ejected until a later check succeeds. `pick` prefers, for a given
affinity key (a conversation id), the same endpoint every time (rendezvous hashing), so a
conversation's turns reuse that LM replica's prefix cache; without a key it takes the healthy
endpoint with the fewest requests in flight.

`api_key` is the internal credential (docs/security.md): every check carries it, and the
gateway's clients of the pool's workers send it too (`Engine`).

The health loop outlives any answer a worker gives: a check that fails in any way (an error
status, a body that is not a model listing, a timeout, a bug) marks that endpoint unhealthy and
the loop goes on, so an ejected worker is re-admitted once it answers properly again. `dns+`
names are resolved off the event loop; an address that leaves the resolution (a scaled-down
pod) leaves the pool, and `on_removed` hears of it so per-endpoint state can go with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import httpx

from service.internal_auth import REFUSED_STATUS, bearer_headers

log = logging.getLogger("spiritlm.gateway.pools")


@dataclass
class Endpoint:
    url: str
    healthy: bool = False
    in_flight: int = 0
    models: list[str] = field(default_factory=list)
    # Context length per model, as the worker reports it on /v1/models (vLLM: max_model_len).
    max_model_len: dict[str, int] = field(default_factory=dict)
    failures: int = 0


class NoHealthyWorker(Exception):
    def __init__(self, pool: str, model: str | None = None) -> None:
        what = f" serving {model}" if model else ""
        super().__init__(f"no healthy {pool} worker{what} is available")


def _score(key: str, url: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{key}|{url}".encode()).digest()[:8], "big")


def parse_model_listing(body: object) -> tuple[list[str], dict[str, int]]:
    """Model ids and context lengths (`max_model_len`) of an OpenAI `/v1/models` body.

    Raises ValueError when `body` is not one: a dict whose `data` is a list of dicts, each with
    a string `id` and, if present, a positive integer `max_model_len`.
    """
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ValueError("not a model listing (no 'data' list)")
    models: list[str] = []
    lengths: dict[str, int] = {}
    for card in body["data"]:
        if not isinstance(card, dict) or not isinstance(card.get("id"), str):
            raise ValueError("a model card has no string 'id'")
        length = card.get("max_model_len")
        if length is not None:
            if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
                raise ValueError(f"model {card['id']!r} has max_model_len {length!r}")
            lengths[card["id"]] = length
        models.append(card["id"])
    return models, lengths


def expand_dns(url: str) -> list[str]:
    """`dns+http://host:port` -> one URL per address the name resolves to (headless services).

    Blocks while resolving: the pool calls it in a worker thread.
    """
    if not url.startswith("dns+"):
        return [url]
    parts = urlsplit(url[len("dns+") :])
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    addresses = sorted({info[4][0] for info in infos})
    return [
        urlunsplit(parts._replace(netloc=f"[{a}]:{port}" if ":" in a else f"{a}:{port}"))
        for a in addresses
    ]


class WorkerPool:
    """Endpoints of one worker kind (LM or speech)."""

    def __init__(
        self,
        name: str,
        urls: list[str],
        *,
        health_path: str = "/health",
        models_path: str | None = None,
        interval: float = 2.0,
        api_key: str = "",
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        self.sources = [url.rstrip("/") for url in urls]
        self.health_path = health_path
        self.models_path = models_path
        self.interval = interval
        self.api_key = api_key
        self._headers = bearer_headers(api_key)
        self.endpoints: dict[str, Endpoint] = {}
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(3.0))
        self._task: asyncio.Task[None] | None = None
        # Awaited with the URL of each endpoint that leaves the pool (`Engine` closes its client).
        self.on_removed: Callable[[str], Awaitable[None]] | None = None
        # Plain URLs are endpoints from the start; `dns+` ones once the first check resolves them.
        for url in self.sources:
            if not url.startswith("dns+"):
                self.endpoints[url] = Endpoint(url)

    async def _resolve(self, source: str) -> list[str]:
        if not source.startswith("dns+"):
            return [source]
        return await asyncio.to_thread(expand_dns, source)

    async def _refresh_urls(self) -> None:
        resolved = await asyncio.gather(*(self._resolve(source) for source in self.sources))
        wanted = {url for urls in resolved for url in urls}
        for url in sorted(wanted):
            self.endpoints.setdefault(url, Endpoint(url))
        # An endpoint with requests in flight stays until they end (a later refresh drops it).
        gone = [u for u, e in self.endpoints.items() if u not in wanted and e.in_flight == 0]
        for url in gone:
            del self.endpoints[url]
            log.info("%s worker %s left the pool", self.name, url)
            if self.on_removed is not None:
                try:
                    await self.on_removed(url)
                except Exception:
                    log.exception("%s pool: cleaning up after %s failed", self.name, url)

    async def check_all(self) -> None:
        await self._refresh_urls()
        await asyncio.gather(*(self._check(endpoint) for endpoint in list(self.endpoints.values())))

    async def _check(self, endpoint: Endpoint) -> None:
        """One health check; never raises (but lets cancellation through)."""
        reason = ""
        try:
            response = await self._http.get(endpoint.url + self.health_path, headers=self._headers)
            healthy = response.status_code == 200
            if healthy and self.models_path:
                listing = await self._http.get(
                    endpoint.url + self.models_path, headers=self._headers
                )
                healthy = listing.status_code == 200
                if listing.status_code == REFUSED_STATUS and endpoint.failures == 0:
                    log.warning(
                        "%s worker %s refuses the internal credential "
                        "(SPIRITLM_INTERNAL_API_KEY differs)",
                        self.name,
                        endpoint.url,
                    )
                if healthy:
                    endpoint.models, endpoint.max_model_len = parse_model_listing(listing.json())
                else:
                    reason = f"{self.models_path} answered {listing.status_code}"
            else:
                reason = f"{self.health_path} answered {response.status_code}"
        except (httpx.HTTPError, ValueError) as exc:
            healthy = False
            reason = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            if endpoint.failures == 0:  # once per streak: the loop retries every few seconds
                log.exception("%s worker %s: health check failed", self.name, endpoint.url)
            healthy = False
            reason = f"{type(exc).__name__}: {exc}"
        if healthy != endpoint.healthy or (not healthy and endpoint.failures == 0):
            log.info(
                "%s worker %s is now %s%s",
                self.name,
                endpoint.url,
                "healthy" if healthy else "unhealthy",
                f" ({reason})" if reason else "",
            )
        endpoint.healthy = healthy
        endpoint.failures = 0 if healthy else endpoint.failures + 1

    async def _loop(self) -> None:
        while True:
            try:
                await self.check_all()
            except Exception:
                # `_check` never raises; this is DNS or a bug. The next round tries again.
                log.exception("%s pool: health round failed", self.name)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"{self.name}-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._http.aclose()

    def healthy_endpoints(self, model: str | None = None) -> list[Endpoint]:
        return [
            endpoint
            for endpoint in self.endpoints.values()
            if endpoint.healthy
            and (model is None or not self.models_path or model in endpoint.models)
        ]

    def max_model_len(self, model: str) -> int | None:
        """The smallest context length reported for `model`; None while no worker reported one."""
        lengths = [
            endpoint.max_model_len[model]
            for endpoint in self.endpoints.values()
            if model in endpoint.max_model_len
        ]
        return min(lengths, default=None)

    def pick(self, *, model: str | None = None, affinity: str | None = None) -> Endpoint:
        candidates = self.healthy_endpoints(model)
        if not candidates:
            raise NoHealthyWorker(self.name, model)
        if affinity is not None:
            return max(candidates, key=lambda endpoint: _score(affinity, endpoint.url))
        return min(candidates, key=lambda endpoint: (endpoint.in_flight, endpoint.url))

    def mark_failed(self, endpoint: Endpoint) -> None:
        """A request could not reach the endpoint: eject it until its next good health check."""
        if endpoint.healthy:
            log.warning("%s worker %s ejected after a failed request", self.name, endpoint.url)
        endpoint.healthy = False

    @asynccontextmanager
    async def use(
        self, *, model: str | None = None, affinity: str | None = None
    ) -> AsyncIterator[Endpoint]:
        endpoint = self.pick(model=model, affinity=affinity)
        endpoint.in_flight += 1
        try:
            yield endpoint
        finally:
            endpoint.in_flight -= 1

    @property
    def ready(self) -> bool:
        return bool(self.healthy_endpoints())
