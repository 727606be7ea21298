"""The inference threads' admission: a capacity limiter that lets waiting calls in by
deadline, then priority, then arrival, and `run_in_thread`, which runs model work under it.

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

A listener whose reply is playing cannot wait for a whole-turn encode of another session (most
of a second at official size) or a long upload's (seconds): its player would stall. Its chunk
comes with a `Deadline` (when its audio runs out; a first chunk's is a fixed time after it was
queued, service/speech_worker/batcher.py), and once that is the speech worker's
`deadline_lead_seconds` away it goes before everything else, and a call that allows it (an
encode, a one-shot synthesis: `WorkerState.run(preemptible=True)`) hands over its thread at its
next layer boundary (`step_aside`, service/speech/yielding.py) and takes it back after.
Deadlines further away do not count, so replies with audio buffered do not push back the turn
encodes of sessions still waiting for their first audio (docs/benchmarks.md, "Deadlines").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import time
from collections.abc import Callable
from enum import IntEnum
from functools import partial
from typing import TypeVar

import anyio
import anyio.to_thread

from service.speech.yielding import StepAside, stepping_aside

AHEAD_HANDICAP_SECONDS = 1.0
# A chunk must start rendering by then: a long call's largest layer (about 0.2 s for a 9 s
# official-size encode) plus the chunk's own pass (0.1-0.2 s) and its way to the player.
DEADLINE_LEAD_SECONDS = 1.0

# (when it counts as arrived, arrival order): a place in the queue, kept by a holder that steps
# aside so that it comes back before every caller that arrived after it (a chunk whose deadline
# is due excepted).
Place = tuple[float, int]
T = TypeVar("T")
# How often a thread that stepped aside checks that the event loop still runs.
STEP_ASIDE_POLL_SECONDS = 0.1


class Hold:
    """A caller's place in the queue, and whether it holds a place now (not while it has
    stepped aside)."""

    def __init__(self, place: Place) -> None:
        self.place = place
        self.held = True


class Interrupted(BaseException):
    """Raised in a call's thread when the event loop stopped while the call had stepped aside:
    the call no longer holds a place and must end. A BaseException, so that model code that
    catches Exception does not swallow it and go on computing without a place."""


class Priority(IntEnum):
    WAITED = 0  # someone waits for the result now
    AHEAD = 1  # work done ahead of time (a window of a turn still being spoken)


class Deadline:
    """When a caller's result is needed (on the limiter's clock, time.monotonic). Its owner
    may bring it forward while the caller waits (the vocoder scheduler's pass, when a more
    pressing chunk queues behind it: service/speech_worker/batcher.py)."""

    def __init__(self, at: float) -> None:
        self.at = at
        self._watcher: Callable[[float], None] | None = None

    def bring_forward(self, at: float) -> None:
        if at < self.at:
            self.at = at
            if self._watcher is not None:
                self._watcher(at)

    def watch(self, watcher: Callable[[float], None]) -> None:
        """Call `watcher(at)` now and whenever the deadline comes forward (the one caller
        waiting with it: `PriorityLimiter.acquire`)."""
        self._watcher = watcher
        watcher(self.at)


class PriorityLimiter:
    """At most `capacity` holders at once. A freed place goes to the waiting caller whose
    deadline is nearest if it is within `deadline_lead` seconds, else to the one with the
    earliest arrival time, counting `ahead_handicap` seconds later for `Priority.AHEAD`.
    `deadline_lead` 0 turns deadlines off."""

    def __init__(
        self,
        capacity: int,
        ahead_handicap: float = AHEAD_HANDICAP_SECONDS,
        deadline_lead: float = DEADLINE_LEAD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        on_step_aside: Callable[[], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.ahead_handicap = ahead_handicap
        self.deadline_lead = deadline_lead
        self.clock = clock  # the clock deadlines are read on (time.monotonic by default)
        self.on_step_aside = on_step_aside
        self.holders = 0
        # Callers waiting, by place, and those with a deadline also by deadline; a caller that
        # gave up (or was let in through the other heap) stays until it reaches the top, where
        # it is skipped. Each entry has an arrival number of its own after its sort keys, so
        # that entries never compare their futures (a holder that steps aside comes back at its
        # old place).
        self._waiting: list[tuple[Place, int, asyncio.Future[None]]] = []
        self._deadlines: list[tuple[float, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._threads: anyio.CapacityLimiter | None = None

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, future in self._waiting if not future.done())

    @property
    def threads(self) -> anyio.CapacityLimiter:
        """Worker threads of this limiter's calls: its holders and those that stepped aside
        (made on first use, inside the event loop). Its own, so that they never wait for
        anyio's default pool, which the web framework shares."""
        if self._threads is None:
            self._threads = anyio.CapacityLimiter(2 * self.capacity)
        return self._threads

    async def acquire(
        self, priority: Priority = Priority.WAITED, deadline: Deadline | None = None
    ) -> Hold:
        """Wait for a place; `deadline` is when the caller's result is needed. Returns the
        caller's hold on it, for `step_aside`."""
        loop = asyncio.get_running_loop()
        handicap = self.ahead_handicap if priority == Priority.AHEAD else 0.0
        place = (loop.time() + handicap, next(self._arrivals))
        if self.holders < self.capacity and not self.waiting:
            self.holders += 1
            return Hold(place)
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiting, (place, place[1], future))
        if deadline is not None:

            def push(at: float) -> None:
                if not future.done():
                    heapq.heappush(self._deadlines, (at, place[1], future))

            deadline.watch(push)
        await self._handed_over(future)
        return Hold(place)

    def release(self) -> None:
        """Hand the place to the next caller still waiting (one that gave up is skipped)."""
        assert self.holders > 0, "released more places than were taken"
        future = self._take_due() or self._take_first()
        if future is None:
            self.holders -= 1
        else:
            self._hand_over(future)  # the place passes on: `holders` is unchanged

    def due(self) -> bool:
        """Whether a waiting caller's deadline is within `deadline_lead`. Read from a holder's
        thread as well: a stale answer only costs a call to `step_aside` that does nothing."""
        try:
            deadline, _, future = self._deadlines[0]
        except IndexError:
            return False
        if self.deadline_lead <= 0 or future.done():
            return False
        return deadline - self.clock() <= self.deadline_lead

    async def step_aside(self, hold: Hold) -> None:
        """From a holder: hand the place to the caller whose deadline is due, if any, and wait
        to get one back at the holder's own place. If the wait is cancelled, `hold.held` says
        whether a place was handed back all the same (its holder must then release it)."""
        future = self._take_due()
        if future is None:
            return
        if self.on_step_aside is not None:
            self.on_step_aside()
        self._hand_over(future)
        hold.held = False
        back: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (hold.place, next(self._arrivals), back))
        try:
            await back
        except asyncio.CancelledError:
            hold.held = back.done() and not back.cancelled()
            self._drop_settled_deadlines()
            raise
        hold.held = True

    async def _handed_over(self, future: asyncio.Future[None]) -> None:
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the place was handed over just as the caller gave up
            self._drop_settled_deadlines()
            raise

    def _hand_over(self, future: asyncio.Future[None]) -> None:
        future.set_result(None)
        self._drop_settled_deadlines()

    def _drop_settled_deadlines(self) -> None:
        """Pop the callers at the top of `_deadlines` that are no longer waiting (let in by
        arrival, or gone), so that `due` reads a caller that still waits."""
        while self._deadlines and self._deadlines[0][2].done():
            heapq.heappop(self._deadlines)

    def _take_due(self) -> asyncio.Future[None] | None:
        self._drop_settled_deadlines()
        if not self.due():
            return None
        return heapq.heappop(self._deadlines)[2]

    def _take_first(self) -> asyncio.Future[None] | None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                return future
        return None


async def run_in_thread(
    limiter: PriorityLimiter,
    function: Callable[..., T],
    *args: object,
    priority: Priority = Priority.WAITED,
    deadline: Deadline | None = None,
    preemptible: bool = False,
) -> T:
    """`function(*args)` in a worker thread once `limiter` lets it in (`WorkerState.run`).

    A caller that is cancelled (its client went away) returns at once, but the call in progress
    keeps its place until its thread returns: the limiter really bounds the threads that use
    torch. (anyio's shield does not hold against a plain `Task.cancel`, which is how
    service/speech_worker/disconnect.py cancels, so the call is shielded here.)
    """
    hold = await limiter.acquire(priority, deadline)

    def done(call: asyncio.Future[T]) -> None:
        if hold.held:  # not if the call ended while stepped aside (`Interrupted`)
            limiter.release()
        if not call.cancelled():
            call.exception()  # retrieved: a caller that gave up no longer will

    if preemptible:
        loop = asyncio.get_running_loop()

        def step_aside() -> None:  # in the worker thread, at a layer boundary
            if limiter.due():
                aside = asyncio.run_coroutine_threadsafe(limiter.step_aside(hold), loop)
                _wait_from_thread(aside, loop)

        function = partial(_stepping_aside, step_aside, function)
    work = anyio.to_thread.run_sync(function, *args, limiter=limiter.threads)
    call = asyncio.ensure_future(work)
    call.add_done_callback(done)
    return await asyncio.shield(call)


def _wait_from_thread(
    stepped_aside: concurrent.futures.Future[None], loop: asyncio.AbstractEventLoop
) -> None:
    """Block the call's thread until its place is back. If the wait was cancelled, or the
    event loop stopped meanwhile (shutdown), end the call (`Interrupted`) rather than block the
    process's exit forever."""
    while True:
        try:
            stepped_aside.result(timeout=STEP_ASIDE_POLL_SECONDS)
            return
        except TimeoutError:
            if loop.is_closed() or not loop.is_running():
                stepped_aside.cancel()
                raise Interrupted("the event loop stopped while the call waited") from None
        except BaseException as error:
            raise Interrupted("the wait for the inference thread was cancelled") from error


def _stepping_aside(step_aside: StepAside, function: Callable[..., T], *args: object) -> T:
    with stepping_aside(step_aside):
        return function(*args)
