"""The inference threads' limiter (service/speech_worker/priority.py)."""

from __future__ import annotations

import asyncio

import pytest

from service.speech_worker.priority import Deadline, Priority, PriorityLimiter


async def _hold(limiter: PriorityLimiter, name: str, priority: Priority, order: list[str]) -> None:
    await limiter.acquire(priority)
    order.append(name)
    await asyncio.sleep(0)
    limiter.release()


async def cancelled(task: asyncio.Task) -> None:
    """Cancel `task` and wait until it has taken the cancellation."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_waited_work_goes_before_work_done_ahead_then_in_arrival_order() -> None:
    async def main() -> list[str]:
        limiter = PriorityLimiter(1)
        await limiter.acquire()  # busy: everything below waits
        order: list[str] = []
        callers = [
            ("window 1", Priority.AHEAD),
            ("tail 1", Priority.WAITED),
            ("window 2", Priority.AHEAD),
            ("chunk", Priority.WAITED),
        ]
        tasks = []
        for name, priority in callers:
            tasks.append(asyncio.create_task(_hold(limiter, name, priority, order)))
            await asyncio.sleep(0)  # queued in this order
        assert limiter.waiting == 4
        limiter.release()
        await asyncio.gather(*tasks)
        assert limiter.holders == 0 and limiter.waiting == 0
        return order

    assert asyncio.run(main()) == ["tail 1", "chunk", "window 1", "window 2"]


def test_work_sent_ahead_waits_behind_later_waited_work_for_a_bounded_time() -> None:
    # A window a turn that has ended now waits for must not starve behind a steady stream of
    # waited-for work: it goes before what arrives more than the handicap after it.
    async def main() -> list[str]:
        limiter = PriorityLimiter(1, ahead_handicap=0.05)
        await limiter.acquire()
        order: list[str] = []
        window = asyncio.create_task(_hold(limiter, "window", Priority.AHEAD, order))
        await asyncio.sleep(0)
        soon = asyncio.create_task(
            _hold(limiter, "tail within the handicap", Priority.WAITED, order)
        )
        await asyncio.sleep(0.2)
        late = asyncio.create_task(_hold(limiter, "chunk after it", Priority.WAITED, order))
        await asyncio.sleep(0)
        limiter.release()
        await asyncio.gather(window, soon, late)
        return order

    assert asyncio.run(main()) == ["tail within the handicap", "window", "chunk after it"]


def test_never_more_holders_than_capacity() -> None:
    async def main() -> int:
        limiter = PriorityLimiter(2)
        inside, most = [0], [0]

        async def work(priority: Priority) -> None:
            await limiter.acquire(priority)
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            await asyncio.sleep(0.001)
            inside[0] -= 1
            limiter.release()

        await asyncio.gather(*(work(Priority(i % 2)) for i in range(20)))
        assert limiter.holders == 0
        return most[0]

    assert asyncio.run(main()) == 2


def test_a_caller_that_gives_up_while_waiting_takes_no_place() -> None:
    async def main() -> None:
        limiter = PriorityLimiter(1)
        await limiter.acquire()
        gives_up = asyncio.create_task(limiter.acquire(Priority.WAITED))
        later = asyncio.create_task(limiter.acquire(Priority.AHEAD))
        await asyncio.sleep(0)
        await cancelled(gives_up)
        limiter.release()
        await asyncio.wait_for(later, 5)  # the place went past the cancelled caller
        limiter.release()
        assert limiter.holders == 0 and limiter.waiting == 0

    asyncio.run(main())


def test_a_place_handed_over_as_its_caller_gives_up_is_passed_on() -> None:
    async def main() -> None:
        limiter = PriorityLimiter(1)
        await limiter.acquire()
        first = asyncio.create_task(limiter.acquire())
        second = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0)
        limiter.release()  # handed to `first`, which has not run yet...
        await cancelled(first)  # ...and gives up before it does
        await asyncio.wait_for(second, 5)
        limiter.release()
        assert limiter.holders == 0

    asyncio.run(main())


class Clock:
    """A clock the test sets: deadlines are read on it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_caller_whose_deadline_is_near_goes_first_and_a_far_one_waits_its_turn() -> None:
    async def main() -> list[str]:
        clock = Clock()
        limiter = PriorityLimiter(1, deadline_lead=1.0, clock=clock)
        await limiter.acquire()
        order: list[str] = []

        async def hold(name: str, deadline: float | None) -> None:
            await limiter.acquire(Priority.WAITED, None if deadline is None else Deadline(deadline))
            order.append(name)
            await asyncio.sleep(0)
            if name == "tail":
                clock.now = 102.5  # while the tail runs, the far chunk's deadline comes near
            limiter.release()

        tasks = []
        for name, deadline in [
            ("tail", None),
            ("encode", None),
            ("chunk due in 3 s", 103.0),
            ("chunk due in 0.5 s", 100.5),
        ]:
            tasks.append(asyncio.create_task(hold(name, deadline)))
            await asyncio.sleep(0)
        limiter.release()
        await asyncio.gather(*tasks)
        return order

    # The near chunk goes first; the far one waits behind the tail that arrived before it, and
    # goes before the encode once its deadline is near.
    assert asyncio.run(main()) == ["chunk due in 0.5 s", "tail", "chunk due in 3 s", "encode"]


def test_a_holder_steps_aside_for_a_due_caller_and_comes_back_before_later_arrivals() -> None:
    async def main() -> list[str]:
        clock = Clock()
        steps: list[int] = []
        limiter = PriorityLimiter(1, clock=clock, on_step_aside=lambda: steps.append(1))
        long_call = await limiter.acquire()
        order: list[str] = []

        async def hold(name: str, deadline: float | None) -> None:
            await limiter.acquire(Priority.WAITED, None if deadline is None else Deadline(deadline))
            order.append(name)
            limiter.release()

        queued = asyncio.create_task(hold("encode queued behind it", None))
        await asyncio.sleep(0)
        assert not limiter.due()
        await limiter.step_aside(long_call)  # nothing due: the holder goes on at once
        assert order == [] and steps == []
        chunk = asyncio.create_task(hold("chunk", clock.now + 0.3))
        await asyncio.sleep(0)
        assert limiter.due()
        await limiter.step_aside(long_call)  # returns once the place is back
        assert long_call.held
        order.append("long call back")
        await chunk
        limiter.release()
        await queued
        assert limiter.holders == 0 and limiter.waiting == 0
        assert steps == [1]
        return order

    assert asyncio.run(main()) == ["chunk", "long call back", "encode queued behind it"]


def test_a_caller_let_in_by_arrival_does_not_hide_a_later_due_one() -> None:
    # A chunk with a far deadline let in by arrival order leaves its deadline entry behind; a
    # holder's thread asking `due` must still see the next chunk's near deadline.
    async def main() -> None:
        clock = Clock()
        limiter = PriorityLimiter(1, deadline_lead=1.0, clock=clock)
        await limiter.acquire()
        far = asyncio.create_task(limiter.acquire(Priority.WAITED, Deadline(105.0)))
        await asyncio.sleep(0)
        limiter.release()  # nothing is due: the far chunk is let in by arrival
        await far
        limiter.release()
        hold = await limiter.acquire()  # a long call
        near = asyncio.create_task(limiter.acquire(Priority.WAITED, Deadline(110.0)))
        await asyncio.sleep(0)
        assert not limiter.due()
        clock.now = 109.5
        assert limiter.due()
        stepped_aside = asyncio.create_task(limiter.step_aside(hold))
        await asyncio.wait_for(near, 5)  # the near chunk has the place...
        assert not stepped_aside.done()
        limiter.release()  # ...and gives it back to the long call
        await asyncio.wait_for(stepped_aside, 5)
        limiter.release()
        assert limiter.holders == 0

    asyncio.run(main())


def test_deadlines_are_off_with_no_lead() -> None:
    async def main() -> list[str]:
        clock = Clock()
        limiter = PriorityLimiter(1, deadline_lead=0.0, clock=clock)
        long_call = await limiter.acquire()
        order: list[str] = []

        async def hold(name: str, deadline: float | None) -> None:
            await limiter.acquire(Priority.WAITED, None if deadline is None else Deadline(deadline))
            order.append(name)
            limiter.release()

        tasks = [asyncio.create_task(hold("encode", None))]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(hold("overdue chunk", clock.now - 1)))
        await asyncio.sleep(0)
        assert not limiter.due()
        await limiter.step_aside(long_call)  # does nothing
        limiter.release()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(main()) == ["encode", "overdue chunk"]


def test_a_step_aside_cancelled_while_waiting_leaves_the_place_with_the_chunk() -> None:
    # At shutdown the wait to get the place back is cancelled: the long call must then not
    # count as holding a place (its thread ends without releasing one: `Interrupted`).
    async def main() -> None:
        limiter = PriorityLimiter(1)
        long_call = await limiter.acquire()
        chunk = asyncio.create_task(limiter.acquire(Priority.WAITED, Deadline(0.0)))
        await asyncio.sleep(0)
        stepping = asyncio.create_task(limiter.step_aside(long_call))
        await asyncio.wait_for(chunk, 5)
        await cancelled(stepping)
        assert not long_call.held and limiter.holders == 1  # the chunk's
        limiter.release()
        assert limiter.holders == 0 and limiter.waiting == 0

    asyncio.run(main())


def test_a_caller_let_in_by_its_deadline_can_step_aside_later() -> None:
    # Its entry in the arrival heap stays behind when it is let in by deadline; coming back at
    # the same place must not make the heap compare futures.
    async def main() -> None:
        limiter = PriorityLimiter(1)
        await limiter.acquire()
        first = asyncio.create_task(limiter.acquire(Priority.WAITED, Deadline(0.0)))
        await asyncio.sleep(0)
        limiter.release()
        hold = await asyncio.wait_for(first, 5)
        chunk = asyncio.create_task(limiter.acquire(Priority.WAITED, Deadline(0.0)))
        await asyncio.sleep(0)
        stepping = asyncio.create_task(limiter.step_aside(hold))
        await asyncio.wait_for(chunk, 5)
        limiter.release()
        await asyncio.wait_for(stepping, 5)
        assert hold.held
        limiter.release()
        assert limiter.holders == 0

    asyncio.run(main())


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PriorityLimiter(0)
