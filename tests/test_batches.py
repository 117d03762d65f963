"""tidings.batches: requests that arrive together, answered together."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import TIMEOUT
from tidings.batches import Batches


class Answerer:
    """Answers each request with its double, one batch at a time, each held until let go."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.go = asyncio.Event()

    async def __call__(self, batch: list[int]) -> list[int]:
        self.batches.append(batch)
        await self.go.wait()
        if 13 in batch:
            raise LookupError("unlucky")
        return [2 * n for n in batch]


async def test_requests_made_during_a_batch_go_together_in_the_next() -> None:
    answerer = Answerer()
    batches = Batches(answerer, size=3)
    first = asyncio.create_task(batches.ask(1))
    while not answerer.batches:  # the first batch starts at once, alone
        await asyncio.sleep(0)
    later = [asyncio.create_task(batches.ask(n)) for n in (2, 3, 4, 5)]
    await asyncio.sleep(0)
    answerer.go.set()
    assert await first == 2
    assert await asyncio.gather(*later) == [4, 6, 8, 10]
    assert answerer.batches == [[1], [2, 3, 4], [5]]  # at most `size` a batch
    assert batches.batches == 3


async def test_a_failed_batch_fails_its_requests_only() -> None:
    answerer = Answerer()
    answerer.go.set()
    batches = Batches(answerer, size=10)
    results = await asyncio.gather(batches.ask(12), batches.ask(13), return_exceptions=True)
    assert [type(r) for r in results] == [LookupError, LookupError]
    assert await batches.ask(7) == 14  # the next batch is read as usual


async def test_a_caller_that_gives_up_does_not_cancel_the_batch() -> None:
    """The batch runs in a task of its own: a replay cancelled while its page is read
    must not cut the read (and the database connection) from under the others."""
    answerer = Answerer()
    batches = Batches(answerer, size=10)
    leaving = asyncio.create_task(batches.ask(1))
    staying = asyncio.create_task(batches.ask(2))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    answerer.go.set()
    assert await staying == 4
    assert answerer.batches == [[1, 2]]


async def test_a_caller_that_gave_up_is_not_told_of_the_failure() -> None:
    answerer = Answerer()
    batches = Batches(answerer, size=10)
    leaving = asyncio.create_task(batches.ask(1))
    staying = asyncio.create_task(batches.ask(13))
    await asyncio.sleep(0)
    leaving.cancel()
    answerer.go.set()
    with pytest.raises(LookupError):
        await staying
    assert leaving.cancelled()


class Timed(Answerer):
    """An :class:`Answerer` that notes when each batch started."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[float] = []

    async def __call__(self, batch: list[int]) -> list[int]:
        self.started.append(asyncio.get_running_loop().time())
        return await super().__call__(batch)


async def test_under_load_batches_start_a_spacing_apart() -> None:
    """Requests waiting once a batch of several is answered: the next batch waits for the
    spacing to pass since that one started, and whatever comes meanwhile joins it."""
    answerer = Timed()
    batches = Batches(answerer, size=10, spacing=0.2)
    first = [asyncio.create_task(batches.ask(n)) for n in (1, 2)]
    while not answerer.batches:
        await asyncio.sleep(0)
    second = asyncio.create_task(batches.ask(3))  # waits while [1, 2] is answered
    await asyncio.sleep(0)
    answerer.go.set()
    assert await asyncio.gather(*first) == [2, 4]
    third = asyncio.create_task(batches.ask(4))  # during the spacing: goes with 3
    assert await asyncio.gather(second, third) == [6, 8]
    assert answerer.batches == [[1, 2], [3, 4]]
    assert answerer.started[1] - answerer.started[0] >= 0.2


async def test_after_a_batch_of_one_the_next_waits_for_no_spacing() -> None:
    """Alone, a request is answered at once, and so are those that came while it was,
    and a request that comes once nothing waits (a spacing of a minute, longer than the
    test waits, would show)."""
    answerer = Answerer()
    answerer.go.set()
    batches = Batches(answerer, size=10, spacing=60.0)
    async with asyncio.timeout(TIMEOUT):
        assert await batches.ask(1) == 2
        first = asyncio.create_task(batches.ask(2))
        await asyncio.sleep(0)
        more = [asyncio.create_task(batches.ask(n)) for n in (3, 4)]
        assert await asyncio.gather(first, *more) == [4, 6, 8]
        assert await batches.ask(5) == 10  # after a batch of several, but alone
    assert answerer.batches == [[1], [2], [3, 4], [5]]
