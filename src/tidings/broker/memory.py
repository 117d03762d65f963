"""In-process broker and presence: the embedded default (``memory://``) for a single node."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from tidings.broker.base import PresenceChanges, Viewer

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


class MemoryPresence:
    """Presence in process (``memory://``), for a single node (one per app).

    Memory: one entry per (project, user, node) that some subscription holds; a node's
    entries go once it forgets them or stops refreshing them.
    """

    def __init__(self, expiry: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._expiry = expiry
        self._clock = clock
        self._deadlines: dict[str, float] = {}  # node -> when its entries expire
        # project -> user -> node -> username
        self._projects: dict[str, dict[str, dict[str, str]]] = {}
        self._nodes: dict[str, set[Viewer]] = {}  # node -> its entries

    async def connect(self) -> None:
        pass

    async def disconnect(self) -> None:
        pass

    async def update(
        self, node: str, add: Sequence[Viewer], remove: Sequence[Viewer]
    ) -> PresenceChanges:
        changes = PresenceChanges(registered=node not in self._deadlines)
        self._deadlines[node] = self._clock() + self._expiry
        entries = self._nodes.setdefault(node, set())
        for viewer in remove:
            entries.discard(viewer)
            self._remove(node, viewer, changes)
        for viewer in add:
            nodes = self._projects.setdefault(viewer.project_id, {}).setdefault(viewer.user_id, {})
            if node not in nodes:
                if not nodes:
                    changes.joined.append(viewer)
                nodes[node] = viewer.username
                entries.add(viewer)
        return changes

    def _remove(self, node: str, viewer: Viewer, changes: PresenceChanges) -> None:
        users = self._projects.get(viewer.project_id, {})
        nodes = users.get(viewer.user_id, {})
        if nodes.pop(node, None) is not None and not nodes:
            changes.left.append(viewer)
            del users[viewer.user_id]
            if not users:
                del self._projects[viewer.project_id]

    async def viewers(self, project_id: str) -> list[Viewer]:
        users = self._projects.get(project_id, {})
        found = [
            Viewer(project_id, user_id, next(iter(nodes.values())))
            for user_id, nodes in users.items()
        ]
        return sorted(found, key=lambda v: (v.username, v.user_id))

    async def expire(self) -> PresenceChanges:
        now = self._clock()
        changes = PresenceChanges()
        for node in [n for n, deadline in self._deadlines.items() if deadline <= now]:
            changes.left += (await self.forget(node)).left
        return changes

    async def forget(self, node: str) -> PresenceChanges:
        changes = PresenceChanges()
        self._deadlines.pop(node, None)
        for viewer in self._nodes.pop(node, ()):
            self._remove(node, viewer, changes)
        return changes
