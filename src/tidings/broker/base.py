"""The broker interface: how events travel from the node that commits them to every node;
and the presence store beside it: who views which project, on every node."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the broker or presence store could not be reached, or did not
    answer in time (down, restarting, hung), rather than that a command was wrong: a
    connection or timeout error, the built-in ones or a driver's of the same name (redis-py
    derives its own from neither)."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    return any(cls.__name__ in ("ConnectionError", "TimeoutError") for cls in type(exc).__mro__)


class Subscription(Protocol):
    """The messages of one channel, from the moment :meth:`Broker.subscribe` returned.

    Iterate it for the messages, in order per publisher; iteration ends after
    :meth:`close` or the broker's ``disconnect()``. A lost broker connection does not end
    it: the implementation subscribes again by itself.
    """

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None:
        """Unsubscribe and release the subscription's resources; idempotent."""
        ...


class Broker(Protocol):
    """Publish bytes to a channel; receive what anyone publishes there, in order per publisher.

    Delivery is at most once: a message published while a node is disconnected from the
    broker is lost for that node. tidings tolerates that, because every durable event is in
    the event log and clients detect a gap by ``seq`` (see ``connection.py``).
    """

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    async def publish(self, channel: str, message: bytes) -> None: ...

    async def subscribe(
        self, channel: str, on_resubscribed: Callable[[], object] | None = None
    ) -> Subscription:
        """Subscribe to ``channel``; return once the broker has confirmed it.

        Every message published on ``channel`` after this returns is delivered to the
        subscription (at most once). When the broker connection is lost, the subscription
        subscribes again by itself while it is iterated, and calls ``on_resubscribed``
        each time the broker has confirmed that; messages published in between are lost.
        """
        ...


@dataclass(frozen=True, slots=True)
class Viewer:
    """A user viewing a project: subscribed to it on some node."""

    project_id: str
    user_id: str
    username: str


@dataclass(slots=True)
class PresenceChanges:
    """What a :class:`PresenceStore` call changed, as seen by everyone.

    ``joined``: users who now view their project and did not before; ``left``: users who no
    longer view it. Each change is reported to exactly one caller (the one whose call made
    it), so each is announced once. ``registered``: the node was unknown to the store (its
    first call, or its entries expired while it did not refresh): the caller must add its
    entries again.
    """

    joined: list[Viewer] = field(default_factory=list)
    left: list[Viewer] = field(default_factory=list)
    registered: bool = False


class PresenceStore(Protocol):
    """Who views which project, shared by every node: one entry per (project, user, node).

    A node adds its entry when a user's first subscription to the project opens on it and
    removes it when the last one closes; a user views a project while any node holds an
    entry. Each node refreshes its entries (any :meth:`update`, an empty one included) more
    often than the store's expiry; once a node has not refreshed for the expiry,
    :meth:`expire` (called by any node) removes its entries and reports who left.
    """

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    async def update(
        self, node: str, add: Sequence[Viewer], remove: Sequence[Viewer]
    ) -> PresenceChanges:
        """Add and remove ``node``'s entries (idempotent each) and refresh all of them."""
        ...

    async def viewers(self, project_id: str) -> list[Viewer]:
        """The distinct users viewing ``project_id`` on any node, by username, then id."""
        ...

    async def expire(self) -> PresenceChanges:
        """Remove the entries of every node that has not refreshed within the expiry."""
        ...

    async def forget(self, node: str) -> PresenceChanges:
        """Remove every entry of ``node`` now (it is stopping)."""
        ...
