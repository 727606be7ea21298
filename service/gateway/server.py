"""Running the gateway under uvicorn, with draining on SIGTERM.

On SIGTERM the gateway first reports not-ready (so load balancers stop sending traffic) and
refuses new requests with 503, lets in-flight requests and sessions finish for up to
`drain_seconds`, and only then exits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal

import uvicorn

from service.gateway.app import create_app
from service.gateway.settings import GatewaySettings
from service.logs import configure_logging

log = logging.getLogger("spiritlm.gateway")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_seconds: float) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self._draining = False

    def handle_exit(self, sig: int, frame: object) -> None:
        if sig == signal.SIGTERM and not self._draining and self.drain_seconds > 0:
            self._draining = True
            asyncio.get_event_loop().create_task(self._drain())
            return
        super().handle_exit(sig, frame)

    async def _drain(self) -> None:
        app = self.config.loaded_app
        state = getattr(getattr(_unwrap(app), "state", None), "gateway", None)
        if state is not None:
            state.draining = True
        log.info("draining for up to %.0f s", self.drain_seconds)
        deadline = asyncio.get_event_loop().time() + self.drain_seconds
        while asyncio.get_event_loop().time() < deadline:
            busy = (
                sum(1 for _ in self.server_state.tasks if not _.done()) if self.server_state else 0
            )
            active = len(self.server_state.connections) if self.server_state else 0
            if busy == 0 and active == 0:
                break
            await asyncio.sleep(0.2)
        self.should_exit = True


def _unwrap(app: object) -> object:
    # uvicorn wraps the ASGI app in proxy/middleware layers; the FastAPI app is innermost.
    while hasattr(app, "app"):
        app = app.app  # type: ignore[attr-defined]
    return app


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the gateway to this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def log_auth_posture(settings: GatewaySettings) -> None:
    """Running without API keys is allowed (a local `up`), but never silent: a warning on
    loopback, an error when the gateway listens beyond it (docs/security.md)."""
    if settings.api_keys:
        return
    if is_loopback(settings.host):
        log.warning("no API keys set (api_keys): every API route is open to anyone on this machine")
    else:
        log.error(
            "no API keys set (api_keys) and the gateway listens on %s, beyond loopback: "
            "every API route is open to anyone who can reach this port; set SPIRITLM_API_KEYS",
            settings.host,
        )


def serve_gateway(settings: GatewaySettings) -> None:
    configure_logging()
    log_auth_posture(settings)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # middleware/access_log.py logs every request with its id
        timeout_graceful_shutdown=max(1, int(settings.drain_seconds)),
        ws_max_size=16 * 1024 * 1024,
    )
    DrainingServer(config, settings.drain_seconds).run()
