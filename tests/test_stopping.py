"""tidings.stopping: background tasks end, and a node stops, even if a cancellation is lost."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tidings.stopping import cancel_and_wait


async def swallows_once(started: asyncio.Event) -> None:
    """As a dependency that turns one cancellation into an error it retries after."""
    started.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(3600)
    await asyncio.sleep(3600)


async def test_a_task_that_loses_a_cancellation_is_cancelled_again() -> None:
    started = asyncio.Event()
    task = asyncio.create_task(swallows_once(started))
    await started.wait()
    await asyncio.wait_for(cancel_and_wait([task], interval=0.01), 10)
    assert task.cancelled()


async def test_waiting_for_a_task_that_never_ends_is_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def stubborn() -> None:
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    await cancel_and_wait([task], within=0.1, interval=0.02)
    assert not task.done()
    assert "stopping without waiting for stubborn: still running" in caplog.text
    task.get_coro().close()  # type: ignore[union-attr]


async def test_errors_and_ended_tasks_are_taken_quietly() -> None:
    async def fails() -> None:
        raise RuntimeError("while stopping")

    failed = asyncio.create_task(fails())
    done = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(asyncio.sleep(3600))
    await cancel_and_wait(task for task in (failed, done, waiting))
    assert failed.done() and done.done() and waiting.cancelled()
