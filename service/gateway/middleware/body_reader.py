"""Reading request bodies before any work: the body read timeouts (408) and the memory bound of
bodies being read (429).

The whole body is read here, before the concurrency limit (`concurrency.py`), so a client that
sends its headers and then stalls, or trickles its body, never holds a concurrency slot: it holds
only its connection until `body_read_timeout_seconds` (the whole body) or
`body_idle_timeout_seconds` (the longest pause between two parts) runs out, and then gets 408.
The layers inside see the body as one complete ``http.request`` message, then the connection's
own messages (a disconnect).

The bodies being read at once are bounded together by `max_reading_body_bytes`: a body read
beyond what is left of it is refused with 429. Only bytes that arrived count: reserving a
declared ``content-length`` up front let a client that declares a large body and then stalls
hold the whole budget, and everyone else got 429, with no byte sent. Each body alone is bounded
by `max_body_bytes` outside this layer (`body_limit.py`), whose 413 passes through.

Bodies are read as sent, never decompressed: a ``content-encoding`` other than ``identity`` is
refused with 415 before the body is read, instead of the body being parsed as if it were plain.

Public paths (`public.py`: health checks, metrics, the docs and the web page) take no body, so
none is read for them: a body sent to one never enters the budget.
"""

from __future__ import annotations

import logging

import anyio
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.gateway.errors import error_response
from service.gateway.middleware.public import is_public

log = logging.getLogger("spiritlm.gateway")


class BodyReadTimeout(Exception):
    """The client did not send its body in time; the message names the setting."""


class ReadingBudgetExceeded(Exception):
    """Bodies being read would take more than `max_reading_body_bytes`."""


class BodyReaderMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        timeout: float,
        idle_timeout: float,
        max_reading_bytes: int,
    ) -> None:
        self.app = app
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.max_reading_bytes = max_reading_bytes
        self.reading_bytes = 0  # held by bodies being read now, all requests together

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        encoding = Headers(scope=scope).get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            refusal = _refusal(
                415,
                f"Content-Encoding '{encoding[:40]}' is not supported; send the body uncompressed",
            )
            await refusal(scope, receive, send)
            return
        try:
            message = await self._read(receive)
        except BodyReadTimeout as error:
            log.info("request body refused: %s", error)
            await _refusal(408, str(error))(scope, receive, send)
            return
        except ReadingBudgetExceeded as error:
            await _refusal(429, str(error))(scope, receive, send)
            return
        if message is None:
            return  # the client left while sending: there is no one to answer
        await self.app(scope, replaying(message, receive), send)

    async def _read(self, receive: Receive) -> Message | None:
        """The whole body as one message; None when the client left instead."""
        reserved = received = 0
        chunks: list[bytes] = []
        try:
            with anyio.move_on_after(self.timeout) as whole:
                while True:
                    with anyio.move_on_after(self.idle_timeout) as idle:
                        message = await receive()
                    if idle.cancelled_caught:
                        raise BodyReadTimeout(
                            f"no part of the request body arrived for {self.idle_timeout:g} s "
                            "(body_idle_timeout_seconds)"
                        )
                    if message["type"] != "http.request":
                        return None
                    chunk = message.get("body", b"")
                    if chunk:
                        chunks.append(chunk)
                        received += len(chunk)
                        reserved = self._reserve(received, reserved)
                    if not message.get("more_body", False):
                        break
            if whole.cancelled_caught:
                raise BodyReadTimeout(
                    f"the request body was not received within {self.timeout:g} s "
                    "(body_read_timeout_seconds)"
                )
        finally:
            self.reading_bytes -= reserved
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return {"type": "http.request", "body": body, "more_body": False}

    def _reserve(self, wanted: int, reserved: int) -> int:
        """Hold `wanted` bytes of the shared budget in place of the `reserved` ones."""
        if wanted <= reserved:
            return reserved
        if self.reading_bytes - reserved + wanted > self.max_reading_bytes:
            raise ReadingBudgetExceeded(
                "too many request bytes are being received at once (max_reading_body_bytes "
                f"{self.max_reading_bytes}); retry later"
            )
        self.reading_bytes += wanted - reserved
        return wanted


def _refusal(status: int, message: str) -> ASGIApp:
    # The rest of the body may still be on its way: close the connection rather than read it.
    response = error_response(status, message)
    response.headers["connection"] = "close"
    return response


def replaying(message: Message, receive: Receive) -> Receive:
    """`receive` that gives `message` first, then the connection's own messages."""
    pending: list[Message] = [message]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
