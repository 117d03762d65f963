"""In-process broker: the embedded default (``memory://``) for a single node."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator

_CLOSED = object()


class MemoryBroker:
    def __init__(self, url: str = "memory://") -> None:
        self._listeners: defaultdict[str, set[asyncio.Queue[object]]] = defaultdict(set)

    async def connect(self) -> None:
        pass

    async def disconnect(self) -> None:
        for queues in self._listeners.values():
            for queue in queues:
                queue.put_nowait(_CLOSED)

    async def publish(self, channel: str, message: bytes) -> None:
        # Unbounded on purpose: the single reader is the hub, which never awaits a client.
        for queue in self._listeners.get(channel, ()):
            queue.put_nowait(message)

    async def listen(self, channel: str) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[object] = asyncio.Queue()
        self._listeners[channel].add(queue)
        try:
            while (item := await queue.get()) is not _CLOSED:
                assert isinstance(item, bytes)
                yield item
        finally:
            self._listeners[channel].discard(queue)
