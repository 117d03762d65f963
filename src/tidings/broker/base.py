"""The broker interface: how events travel from the node that commits them to every node."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol


class Broker(Protocol):
    """Publish bytes to a channel; receive what anyone publishes there, in order per publisher.

    Delivery is at most once: a message published while a node is disconnected from the
    broker is lost for that node. tidings tolerates that, because every durable event is in
    the event log and clients detect a gap by ``seq`` (see ``connection.py``).
    """

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    async def publish(self, channel: str, message: bytes) -> None: ...

    def listen(self, channel: str) -> AsyncIterator[bytes]:
        """Yield every message published on ``channel`` from now on, until disconnect."""
        ...
