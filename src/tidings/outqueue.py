"""A connection's bounded outbound queue: pure data structure, no I/O, no clock."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar


class Queueable(Protocol):
    """What the queue needs to know of an item: its size, and what it coalesces with."""

    @property
    def size(self) -> int: ...

    @property
    def coalesce(self) -> Hashable | None: ...


Q = TypeVar("Q", bound=Queueable)


class _Slot:
    """A coalescing item's place in the queue; emptied when a newer one replaces it."""

    __slots__ = ("item",)

    def __init__(self, item: Queueable) -> None:
        self.item: Queueable | None = item


class OutboundQueue(Generic[Q]):
    """Items waiting for one socket, bounded in count and bytes.

    :meth:`put` never blocks: it returns False when the item does not fit, and the caller
    closes the connection as a slow consumer. An item larger than the whole byte budget
    is taken when the queue is empty, so any single event can be delivered. Items with
    the same ``coalesce`` key replace each other (the older one is dropped, the newer one
    goes to the back), so progress updates cannot fill the queue.

    The fan-out calls :meth:`put` once per event and connection, so a put allocates
    nothing but a list slot (no per-item tuple for the garbage collector to track), and an
    empty queue holds one empty list. ``count`` and ``nbytes`` are plain attributes: a
    property or ``__len__`` call there would cost more than the rest.
    """

    __slots__ = ("_by_key", "_items", "count", "max_bytes", "max_messages", "nbytes")

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._items: list[Q | _Slot] = []
        self._by_key: dict[Hashable, _Slot] | None = None  # None while nothing coalesces
        self.count = 0
        self.nbytes = 0

    def __len__(self) -> int:
        return self.count

    def put(self, item: Q) -> bool:
        size, key = item.size, item.coalesce
        if key is not None and self._by_key is not None:
            old = self._by_key.pop(key, None)
            if old is not None:
                self.count -= 1
                self.nbytes -= old.item.size  # type: ignore[union-attr]
                old.item = None
        if self.count >= self.max_messages or (self.count and self.nbytes + size > self.max_bytes):
            return False  # an item larger than the byte budget still goes into an empty queue
        if key is None:
            self._items.append(item)
        else:
            slot = _Slot(item)
            self._items.append(slot)
            if self._by_key is None:
                self._by_key = {}
            self._by_key[key] = slot
        self.count += 1
        self.nbytes += size
        return True

    def drain(self, max_items: int | None = None, max_bytes: int | None = None) -> list[Q]:
        """Take up to ``max_items`` items (all by default), oldest first, stopping once
        ``max_bytes`` are taken (always at least one item)."""
        items = self._items
        if (
            self._by_key is None
            and (max_items is None or max_items >= len(items))
            and (max_bytes is None or self.nbytes <= max_bytes)
        ):
            self._items = []  # the usual case: hand over the whole list
            self.count = self.nbytes = 0
            return items  # type: ignore[return-value]
        limit = self.count if max_items is None else min(max_items, self.count)
        out: list[Q] = []
        taken = 0
        budget = self.nbytes if max_bytes is None else max_bytes
        while len(out) < limit and (budget > 0 or not out):
            entry = items[taken]
            taken += 1
            if type(entry) is _Slot:
                if entry.item is None:  # coalesced away
                    continue
                item: Q = entry.item  # type: ignore[assignment]
                assert self._by_key is not None
                # A slot that still holds its item is always its key's entry: put() empties
                # the slot it replaces. A KeyError here means that rule was broken.
                del self._by_key[item.coalesce]
            else:
                item = entry  # type: ignore[assignment]
            out.append(item)
            self.nbytes -= item.size
            budget -= item.size
        del items[:taken]
        self.count -= len(out)
        if not self._by_key:
            # No item waits under a key, so any slot left is an emptied one: drop them, as
            # the fast path above hands the list over whole.
            self._by_key = None
            if self.count < len(items):
                items[:] = [entry for entry in items if type(entry) is not _Slot]
        return out

    def clear(self) -> None:
        self._items = []
        self._by_key = None
        self.count = 0
        self.nbytes = 0
