"""The life of a process: its status enum, legal transitions, and progress reporting.

Pure: no I/O, no clock of its own (callers pass ``now``), so it is tested on its own.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass


class Status(enum.StrEnum):
    QUEUED = "queued"  # waiting for a slot on the node that accepted it
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED

    def to(self, new: Status) -> Status:
        """``new`` if the move is legal; RuntimeError otherwise (never limp on)."""
        if new not in _TRANSITIONS[self]:
            raise RuntimeError(f"illegal process transition {self.value} -> {new.value}")
        return new


FINISHED = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
ACTIVE = frozenset({Status.QUEUED, Status.RUNNING})

_TRANSITIONS: dict[Status, frozenset[Status]] = {
    # A queued process may fail without running: interrupted by a restart.
    Status.QUEUED: frozenset({Status.RUNNING, Status.CANCELLED, Status.FAILED}),
    Status.RUNNING: FINISHED,
    Status.SUCCEEDED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}

INTERRUPTED = "interrupted"
TIMEOUT = "timeout"  # an external process's worker stopped reporting


class Cancelled(Exception):
    """Raised inside a worker thread when its process was asked to stop."""


class Progress:
    """What a worker thread reports and the event loop reads: bytes done, a message.

    Written by one thread and read by the loop; each field is a single reference swap
    under the GIL, and a torn read (new ``done``, old ``message``) is harmless. ``check()``
    is how the worker notices cancellation between chunks.
    """

    def __init__(self, total: int = 0) -> None:
        self.total = total
        self.done = 0
        self.message = ""
        self.stop = threading.Event()

    def advance(self, nbytes: int, message: str | None = None) -> None:
        self.done += nbytes
        if message is not None:
            self.message = message
        self.check()

    def check(self) -> None:
        if self.stop.is_set():
            raise Cancelled

    @property
    def fraction(self) -> float:
        """Bytes done over bytes expected, kept below 1.0: only success reports 1.0."""
        if self.total <= 0:
            return 0.0
        return min(self.done / self.total, 0.999)


@dataclass
class Gate:
    """Rate limit for ``process.progress``: at most one event per ``interval`` seconds.

    ``offer(now)`` says how long to wait before the newest value may go out (0: now);
    ``sent(now)`` records an emission. The caller keeps only the newest pending value,
    so a burst of reports collapses into one trailing event.
    """

    interval: float
    last: float | None = None

    def delay(self, now: float) -> float:
        if self.last is None:
            return 0.0
        return max(0.0, self.last + self.interval - now)

    def sent(self, now: float) -> None:
        self.last = now


def valid_fraction(value: float) -> bool:
    """A reported progress must be a finite number within 0.0-1.0."""
    return 0.0 <= value <= 1.0
