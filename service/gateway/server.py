"""Running the gateway under uvicorn, with draining on SIGTERM and bounded connections.

On SIGTERM the gateway first reports not-ready (so load balancers stop sending traffic) and
refuses new requests with 503, lets in-flight requests and sessions finish for up to
`drain_seconds`, and only then exits.

Connections are bounded before the app sees them (docs/security.md): at most `max_connections`
open (uvicorn's limit_concurrency, 503 beyond), headers within `header_read_timeout_seconds`
and at most `MAX_HEADER_BYTES`, and a client that leaves a response unread for
`write_timeout_seconds` is disconnected, which cancels its work
(`service.gateway.middleware.disconnect`). Request bodies are bounded by the middleware
(`service.gateway.middleware.body_reader`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.gateway.app import create_app
from service.gateway.settings import GatewaySettings
from service.logs import configure_logging

log = logging.getLogger("spiritlm.gateway")

# The request line and headers of one request. h11, not httptools: h11 bounds them (uvicorn's
# httptools protocol keeps any number of header bytes), and the gateway image has no httptools.
MAX_HEADER_BYTES = 64 * 1024
# Idle keep-alive connections are closed after this long (uvicorn's default, stated).
KEEP_ALIVE_SECONDS = 5


def bounded_protocol(header_timeout: float, write_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header read timeout and an idle write timeout.

    Header timeout: from when the connection opens, and again from the end of each response,
    the next request's headers must be complete within `header_timeout`, else the connection is
    closed (uvicorn's keep-alive timer stops at the first byte, so a client trickling headers
    would otherwise hold the connection for ever). Write timeout: while the transport's buffer is
    over its high-water mark the server's `send` waits for the client to read; if that lasts
    `write_timeout`, the connection is aborted (a plain close would wait for the buffer to
    drain), which the app sees as a disconnect.
    """

    class BoundedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _write_timer: asyncio.TimerHandle | None = None
        _upgraded = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def handle_websocket_upgrade(self, event: object) -> None:  # type: ignore[override]
            # The WebSocket protocol takes the transport over, with its own limits.
            self._upgraded = True
            self._disarm()
            super().handle_websocket_upgrade(event)  # type: ignore[arg-type]

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._write_timer is None:
                self._write_timer = self.loop.call_later(write_timeout, self._write_timed_out)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            if not self._upgraded and not self.transport.is_closing():
                self._header_timer = self.loop.call_later(header_timeout, self._header_timed_out)

        def _disarm(self) -> None:
            for timer in (self._header_timer, self._write_timer):
                if timer is not None:
                    timer.cancel()
            self._header_timer = self._write_timer = None

        def _header_timed_out(self) -> None:
            self._header_timer = None
            in_request = self.cycle is not None and not self.cycle.response_complete
            if in_request or self._upgraded or self.transport.is_closing():
                return  # the headers came; the body and the response have their own bounds
            log.info(
                "connection closed: no complete request headers within %g s "
                "(header_read_timeout_seconds)",
                header_timeout,
            )
            self.transport.close()

        def _write_timed_out(self) -> None:
            self._write_timer = None
            if not self.flow.write_paused:
                return
            log.warning(
                "connection aborted: the client left the response unread for %g s "
                "(write_timeout_seconds); its work is cancelled",
                write_timeout,
            )
            self.transport.abort()

    return BoundedH11Protocol


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
        http=bounded_protocol(settings.header_read_timeout_seconds, settings.write_timeout_seconds),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=max(1, int(settings.drain_seconds)),
        ws_max_size=16 * 1024 * 1024,
    )
    DrainingServer(config, settings.drain_seconds).run()
