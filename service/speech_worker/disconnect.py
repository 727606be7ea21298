"""A caller that hangs up cancels its encode request.

The gateway stops waiting for an encode when it is no longer needed: an early encode of a turn
that went on after the pause (service/gateway/realtime/connection.py), or a client that left.
Without this, the worker would still run the request's model work when its turn came on the
inference thread, ahead of work someone waits for. Cancelling a request that waits for the
inference thread drops it from the queue; one that is running finishes first
(`WorkerState.run` does not abandon threads), and its answer is not sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from service.speech_worker.protocol import WorkerRequestError

T = TypeVar("T")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request its client abandoned


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result; cancelled when the client disconnects. The body must be read already
    (after it, the connection's next message is the disconnect)."""
    task = asyncio.ensure_future(work)
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not gone or (current is not None and current.cancelling()):
            raise  # the handler itself is cancelled (shutdown): not ours to turn into an answer
        # Nobody reads the answer; it still ends the request as a client error, not a crash.
        raise WorkerRequestError(
            CLIENT_CLOSED_REQUEST, "the client closed the request", code="client_closed"
        ) from None
    finally:
        watcher.cancel()
