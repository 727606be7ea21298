"""A caller that hangs up cancels its one-shot request (encode, decode).

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

T = TypeVar("T")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result; cancelled when the client disconnects. The body must be read already
    (after it, the connection's next message is the disconnect)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await task
    finally:
        watcher.cancel()
