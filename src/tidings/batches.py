"""Requests that arrive together, answered together: one database read for many callers.

:class:`Batches` gives each request to ``answer`` in a list with the others waiting at the
time: the first request starts a batch at once, and requests made while it is being
answered wait for it and go together in the next one (at most ``size`` a batch). Alone, a
request waits for nothing. Under load (requests waiting when a batch of several has been
answered) the next batch starts :data:`SPACING` after that one started, at the least, and
what comes meanwhile joins it: one query in flight at a time would otherwise set the
batches' size by how fast a query is answered, and the faster the query the smaller the
batches and the more queries, each with its fixed cost. What the readers of the hub use
to meet the worst case of a node, every client coming back at once after a restart
(``openings.BoundsReader``, ``events.PageReader``, the credentials of
``auth.Authenticator``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

# Seconds between the starts of two batches under load, at the least.
SPACING = 0.005

Q = TypeVar("Q")
A = TypeVar("A")


class Batches(Generic[Q, A]):
    """``answer`` takes a batch of requests and returns their answers, in order; if it
    raises, every request of the batch gets the exception."""

    def __init__(
        self,
        answer: Callable[[list[Q]], Awaitable[list[A]]],
        size: int,
        spacing: float = SPACING,
    ) -> None:
        self.answer = answer
        self.size = size
        self.spacing = spacing
        self.batches = 0  # batches answered (for tests)
        self._waiting: list[tuple[Q, asyncio.Future[A]]] = []
        self._task: asyncio.Task[None] | None = None

    async def ask(self, request: Q) -> A:
        future: asyncio.Future[A] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        try:
            loop = asyncio.get_running_loop()
            started, loaded = 0.0, False
            while self._waiting:
                if loaded:  # more wait after a batch of several: under load
                    wait = started + self.spacing - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                batch, self._waiting = self._waiting[: self.size], self._waiting[self.size :]
                started, loaded = loop.time(), len(batch) > 1
                self.batches += 1
                try:
                    answers = await self.answer([request for request, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self._task = None
