"""In-process broker: the embedded default (``memory://``) for a single node."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

_CLOSED = object()


class MemorySubscription:
    """One channel's messages, queued in process. Never loses its "connection"."""

    def __init__(self, registry: set[MemorySubscription]) -> None:
        self._registry = registry  # the channel's subscriptions, which publish() feeds
        # Unbounded on purpose: the single reader is the hub, which never awaits a client.
        self._queue: asyncio.Queue[object] = asyncio.Queue()

    def __aiter__(self) -> MemorySubscription:
        return self

    async def __anext__(self) -> bytes:
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # and stays ended for any later call
            raise StopAsyncIteration
        assert isinstance(item, bytes)
        return item

    def deliver(self, message: bytes) -> None:
        self._queue.put_nowait(message)

    async def close(self) -> None:
        if self in self._registry:
            self._registry.discard(self)
            self._queue.put_nowait(_CLOSED)


class MemoryBroker:
    def __init__(self, url: str = "memory://") -> None:
        self._listeners: defaultdict[str, set[MemorySubscription]] = defaultdict(set)

    async def connect(self) -> None:
        pass

    async def disconnect(self) -> None:
        for subscriptions in list(self._listeners.values()):
            for subscription in list(subscriptions):
                await subscription.close()

    async def publish(self, channel: str, message: bytes) -> None:
        for subscription in self._listeners.get(channel, ()):
            subscription.deliver(message)

    async def subscribe(
        self, channel: str, on_resubscribed: Callable[[], object] | None = None
    ) -> MemorySubscription:
        """Subscribed as soon as this returns; ``on_resubscribed`` is never called."""
        registry = self._listeners[channel]
        subscription = MemorySubscription(registry)
        registry.add(subscription)
        return subscription
