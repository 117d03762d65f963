"""Stopping background tasks so that a node always stops.

A cancelled task must end; but a cancellation can be lost on its way through a
dependency (a timeout or a retry that takes it for one of its own). A node whose presence
task lost its cancellation while 10,000 sockets were closing did not stop at all:
SIGTERM, then nothing, until it was killed. :func:`cancel_and_wait` cancels again until
the tasks have ended, and gives up waiting after a bound, naming what was left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger("tidings.stopping")

STOP_TIMEOUT = 10.0  # seconds a node waits for its background tasks to end, at most
RECANCEL_INTERVAL = 0.5  # seconds between cancellations of a task that has not ended


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]],
    within: float = STOP_TIMEOUT,
    interval: float = RECANCEL_INTERVAL,
) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again those still
    running every ``interval`` seconds; after ``within`` seconds, log the tasks left and
    return. Their exceptions are retrieved (ending is all that is asked of them)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    ended = set(tasks)
    pending = {task for task in ended if not task.done()}
    ended -= pending
    while pending:
        remaining = deadline - loop.time()
        if remaining <= 0:
            names = sorted(task.get_name() for task in pending)
            logger.warning("stopping without waiting for %s: still running", ", ".join(names))
            break
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=min(interval, remaining))
        ended |= done
    for task in ended:
        if not task.cancelled():
            task.exception()  # retrieved: an error while stopping is not news
