"""A connection's bounded outbound queue: pure data structure, no I/O, no clock."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable


class _Entry:
    __slots__ = ("frame", "key", "size")

    def __init__(self, frame: str, size: int, key: Hashable | None) -> None:
        self.frame: str | None = frame
        self.size = size
        self.key = key


class OutboundQueue:
    """Frames waiting for one socket, bounded in count and bytes.

    :meth:`put` never blocks: it returns False when the frame does not fit, and the caller
    closes the connection as a slow consumer. Frames put with a ``key`` coalesce: a newer
    frame with the same key replaces the queued one (the older one is dropped, the newer
    one goes to the back), so progress updates cannot fill the queue.
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._entries: deque[_Entry] = deque()
        self._by_key: dict[Hashable, _Entry] = {}
        self._count = 0
        self._bytes = 0

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return self._bytes

    def fits(self, size: int, messages: int = 1) -> bool:
        return self._count + messages <= self.max_messages and self._bytes + size <= self.max_bytes

    def put(self, frame: str, size: int | None = None, key: Hashable | None = None) -> bool:
        if size is None:
            size = len(frame)
        old = self._by_key.pop(key, None) if key is not None else None
        if old is not None:
            self._drop(old)
        if not self.fits(size):
            return False
        entry = _Entry(frame, size, key)
        self._entries.append(entry)
        if key is not None:
            self._by_key[key] = entry
        self._count += 1
        self._bytes += size
        return True

    def drain(self, max_messages: int | None = None) -> list[str]:
        """Take up to ``max_messages`` frames (all by default), oldest first."""
        out: list[str] = []
        entries = self._entries
        while entries and (max_messages is None or len(out) < max_messages):
            entry = entries.popleft()
            if entry.frame is None:  # coalesced away
                continue
            out.append(entry.frame)
            self._count -= 1
            self._bytes -= entry.size
            if entry.key is not None and self._by_key.get(entry.key) is entry:
                del self._by_key[entry.key]
        if not self._count:
            entries.clear()
        return out

    def clear(self) -> None:
        self._entries.clear()
        self._by_key.clear()
        self._count = 0
        self._bytes = 0

    def _drop(self, entry: _Entry) -> None:
        entry.frame = None
        self._count -= 1
        self._bytes -= entry.size
