"""A capacity limiter that lets waiting calls in by priority, then in arrival order.

The speech worker's model calls share `inference_threads` threads (service/speech_worker/state.py).
Most of them are waited for: a listener's next chunk, a REST request, the tail of a realtime
turn that has ended. The windows of a realtime turn still being spoken are not yet: they are
sent ahead of time so that little is left when the turn ends (service/gateway/realtime/
turn_encoder.py). In arrival order, four sessions whose turns end together ran their last
windows first and their tails after them all, so every session got its units at about the time
of the last one; with windows let in after waited-for work, each session's tail follows its own
window, and the sessions get their units one after the other. A listener's chunk likewise no
longer waits behind another session's window.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from enum import IntEnum


class Priority(IntEnum):
    """Lower goes first."""

    WAITED = 0  # someone waits for the result now
    AHEAD = 1  # work done ahead of time (a window of a turn still being spoken)


class PriorityLimiter:
    """At most `capacity` holders at once; a freed place goes to the best waiting caller."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.holders = 0
        self._waiting: list[tuple[Priority, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, future in self._waiting if not future.done())

    async def acquire(self, priority: Priority = Priority.WAITED) -> None:
        if self.holders < self.capacity and not self.waiting:
            self.holders += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the place was handed over just as the caller gave up
            raise

    def release(self) -> None:
        """Hand the place to the best caller still waiting (a cancelled one is skipped)."""
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)  # the place passes on: `holders` is unchanged
                return
        self.holders -= 1
