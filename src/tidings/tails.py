"""The newest durable events of a node's active projects, in memory, bounded in bytes.

The hub appends each durable event it receives from the broker for a project that has a
channel, and reads a replay's page from here when the tail covers the event right after
the replay's cursor: a client a few events behind resumes without the database. No I/O,
no clock.

A project's tail is always a run of consecutive seqs ``first..last``, exactly the log's
events (the same frames the log holds: the broker carries what ``EventLog.record``
wrote): an event that does not follow ``last`` (a lost broker message, two nodes
publishing out of order) starts the tail again from it, an older one is ignored. A read
is answered only when the tail holds the event after the cursor; otherwise the caller
reads the log. When the events of all tails exceed ``max_bytes``, the oldest events of
the least recently appended project go first. An event counts for what holding it costs
(:func:`footprint`): its frame, and what Python spends on it besides, which for the small
frames of most events is about as much again.
"""

from __future__ import annotations

import sys
from collections import OrderedDict, deque
from itertools import islice

from tidings.events import LoggedEvent, fit

# Python's own cost of a held event, in bytes: the event object, its seq, the headers of
# its two strings, and its slot in the deque.
_PER_EVENT = (
    sys.getsizeof(LoggedEvent(2**40, "", "")) + sys.getsizeof(2**40) + 2 * sys.getsizeof("") + 8
)


def footprint(event: LoggedEvent) -> int:
    """The bytes a tail counts for ``event`` (its strings' characters, as one byte each)."""
    return len(event.frame) + len(event.type) + _PER_EVENT


class _Tail:
    __slots__ = ("events", "first")

    def __init__(self, first: int) -> None:
        self.first = first
        self.events: deque[LoggedEvent] = deque()

    @property
    def last(self) -> int:
        return self.first + len(self.events) - 1


class Tails:
    """See the module docstring. ``max_bytes`` 0 keeps nothing."""

    __slots__ = ("_tails", "max_bytes", "nbytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._tails: OrderedDict[str, _Tail] = OrderedDict()  # least recently appended first

    def __len__(self) -> int:
        """Events held, over all projects."""
        return sum(len(t.events) for t in self._tails.values())

    def bounds(self, project_id: str) -> tuple[int, int] | None:
        """``(first, last)`` of the project's tail; None if it holds nothing."""
        tail = self._tails.get(project_id)
        return None if tail is None else (tail.first, tail.last)

    def append(self, project_id: str, event: LoggedEvent) -> None:
        size = footprint(event)
        if size > self.max_bytes:
            self.drop(project_id)  # it cannot be held: what is held no longer reaches it
            return
        tail = self._tails.get(project_id)
        if tail is not None and event.seq <= tail.last:
            return  # already held, or older than what is held
        if tail is None or event.seq != tail.last + 1:
            self.drop(project_id)
            tail = self._tails[project_id] = _Tail(event.seq)
        tail.events.append(event)
        self._tails.move_to_end(project_id)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            self._evict()

    def read_after(
        self, project_id: str, cursor: int, limit: int, budget: int
    ) -> list[LoggedEvent] | None:
        """Events after ``cursor``, in order: at most ``limit``, and at most ``budget``
        frame bytes (but at least one event), as ``EventLog.read_after`` reads them; None
        if the tail does not hold the event ``cursor + 1``."""
        tail = self._tails.get(project_id)
        if tail is None or not tail.first <= cursor + 1 <= tail.last:
            return None
        return fit(islice(tail.events, cursor + 1 - tail.first, None), limit, budget)

    def drop(self, project_id: str) -> None:
        """Forget the project's tail (its channel is gone)."""
        tail = self._tails.pop(project_id, None)
        if tail is not None:
            self.nbytes -= sum(footprint(e) for e in tail.events)

    def _evict(self) -> None:
        project_id, tail = next(iter(self._tails.items()))
        event = tail.events.popleft()
        tail.first += 1
        self.nbytes -= footprint(event)
        if not tail.events:
            del self._tails[project_id]
