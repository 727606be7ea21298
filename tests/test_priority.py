"""The inference threads' limiter (service/speech_worker/priority.py)."""

from __future__ import annotations

import asyncio

import pytest

from service.speech_worker.priority import Priority, PriorityLimiter


async def _hold(limiter: PriorityLimiter, name: str, priority: Priority, order: list[str]) -> None:
    await limiter.acquire(priority)
    order.append(name)
    await asyncio.sleep(0)
    limiter.release()


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
        gives_up.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gives_up
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
        first.cancel()  # ...and gives up before it does
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 5)
        limiter.release()
        assert limiter.holders == 0

    asyncio.run(main())


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PriorityLimiter(0)
