"""A connection's bounded outbound queue: pure data structure, no I/O, no clock."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class OutboundQueue(Generic[T]):
    """Items waiting for one socket, bounded in count and bytes.

    :meth:`put` never blocks: it returns False when the item does not fit, and the caller
    closes the connection as a slow consumer. Items put with a ``key`` coalesce: a newer
    item with the same key replaces the queued one (the older one is dropped, the newer
    one goes to the back), so progress updates cannot fill the queue.

    ``count`` and ``nbytes`` are plain attributes: the fan-out reads them for every
    delivery, and a property or ``__len__`` call there costs more than the rest.
    """

    __slots__ = ("_by_key", "_entries", "count", "max_bytes", "max_messages", "nbytes")

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        # Entries are (item, size) tuples, or [item, size, key] lists for keyed items so
        # that a replaced one can be blanked in place (item set to None) in O(1).
        self._entries: deque[Any] = deque()
        self._by_key: dict[Hashable, list[Any]] = {}
        self.count = 0
        self.nbytes = 0

    def __len__(self) -> int:
        return self.count

    def fits(self, size: int, messages: int = 1) -> bool:
        return self.count + messages <= self.max_messages and self.nbytes + size <= self.max_bytes

    def put(self, item: T, size: int, key: Hashable | None = None) -> bool:
        if key is not None:
            old = self._by_key.pop(key, None)
            if old is not None:
                old[0] = None
                self.count -= 1
                self.nbytes -= old[1]
        if self.count >= self.max_messages or self.nbytes + size > self.max_bytes:
            return False
        if key is None:
            self._entries.append((item, size))
        else:
            entry = [item, size, key]
            self._entries.append(entry)
            self._by_key[key] = entry
        self.count += 1
        self.nbytes += size
        return True

    def drain(self, max_items: int | None = None) -> list[T]:
        """Take up to ``max_items`` items (all by default), oldest first."""
        out: list[T] = []
        entries = self._entries
        limit = self.count if max_items is None else min(max_items, self.count)
        while len(out) < limit:
            entry = entries.popleft()
            item = entry[0]
            if item is None:  # coalesced away
                continue
            out.append(item)
            self.nbytes -= entry[1]
            if len(entry) == 3:
                key = entry[2]
                if self._by_key.get(key) is entry:
                    del self._by_key[key]
        self.count -= len(out)
        if not self.count:
            entries.clear()
        return out

    def clear(self) -> None:
        self._entries.clear()
        self._by_key.clear()
        self.count = 0
        self.nbytes = 0
