"""A capacity limiter that lets waiting calls in by priority, then in arrival order.

The speech worker's model calls share `inference_threads` threads (service/speech_worker/state.py).
Most of them are waited for: a listener's next chunk, a REST request, the tail of a realtime
turn that has ended. The windows of a realtime turn still being spoken are not yet: they are
sent ahead of time so that little is left when the turn ends
(service/gateway/realtime/turn_encoder.py). In arrival order, four sessions whose turns end
together ran their last windows first and their tails after them all, so every session got its
units at about the time of the last one; with windows let in after waited-for work, each
session's tail follows its own window, and the sessions get their units one after the other. A
listener's chunk likewise no longer queues behind another session's window for a thread.

The precedence is bounded: a caller sent ahead goes before waited-for work that arrived more
than `AHEAD_HANDICAP_SECONDS` after it. A turn that ended while its last window was queued waits
for that window, so windows must not starve behind a steady stream of waited-for work.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from enum import IntEnum

AHEAD_HANDICAP_SECONDS = 1.0


class Priority(IntEnum):
    WAITED = 0  # someone waits for the result now
    AHEAD = 1  # work done ahead of time (a window of a turn still being spoken)


class PriorityLimiter:
    """At most `capacity` holders at once; a freed place goes to the waiting caller with the
    earliest arrival time, counting `ahead_handicap` seconds later for `Priority.AHEAD`."""

    def __init__(self, capacity: int, ahead_handicap: float = AHEAD_HANDICAP_SECONDS) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.ahead_handicap = ahead_handicap
        self.holders = 0
        # (when it counts as arrived, arrival order, its future); a caller that gave up stays
        # until it reaches the top, where `release` skips it.
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, future in self._waiting if not future.done())

    async def acquire(self, priority: Priority = Priority.WAITED) -> None:
        if self.holders < self.capacity and not self.waiting:
            self.holders += 1
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        counts_from = loop.time() + (self.ahead_handicap if priority == Priority.AHEAD else 0.0)
        heapq.heappush(self._waiting, (counts_from, next(self._arrivals), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the place was handed over just as the caller gave up
            raise

    def release(self) -> None:
        """Hand the place to the first caller still waiting (one that gave up is skipped)."""
        assert self.holders > 0, "released more places than were taken"
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)  # the place passes on: `holders` is unchanged
                return
        self.holders -= 1
