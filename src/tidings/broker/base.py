"""The broker interface: how events travel from the node that commits them to every node."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol


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
