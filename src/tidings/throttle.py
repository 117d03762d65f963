"""Login throttling: failed attempts per key in a sliding window, reserved before checking.

Pure: no I/O and no clock of its own (callers pass ``now``, a monotonic time).

An attempt is counted as a failure the moment it is let through (:meth:`LoginThrottle.attempt`)
and given back only when the password turns out right (:meth:`LoginThrottle.succeeded`).
Checking the count and counting happen in one call with nothing awaited between, so a burst
of concurrent guesses cannot all pass the check before the first of them has failed: at
most ``limit`` of them are ever verified. An attempt whose request dies half-way (the
client hung up) stays counted, which errs on the safe side.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

MAX_KEYS = 100_000  # bounds memory under a credential-stuffing storm


@dataclass(frozen=True, slots=True)
class Attempt:
    """A reserved attempt: the keys it was counted under and when."""

    keys: tuple[str, ...]
    at: float


class LoginThrottle:
    """Failures per key (e.g. username at address, and address alone) within ``window``."""

    def __init__(self, window: float, max_keys: int = MAX_KEYS) -> None:
        self.window = window
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    def attempt(self, limits: Mapping[str, int], now: float) -> Attempt | float:
        """Reserve an attempt under every key of ``limits`` (key → most failures allowed).

        Returns the :class:`Attempt`, or the seconds to wait if any key is at its limit
        (then nothing is counted).
        """
        wait = 0.0
        for key, limit in limits.items():
            failures = self._prune(key, now)
            if failures is not None and len(failures) >= limit:
                wait = max(wait, failures[0] + self.window - now)
        if wait > 0:
            return wait
        for key in limits:
            self._failures.setdefault(key, deque()).append(now)
        self._bound()
        return Attempt(tuple(limits), now)

    def succeeded(self, attempt: Attempt, forget: tuple[str, ...] = ()) -> None:
        """The password was right: give the attempt back, and clear the keys in ``forget``
        (earlier failures of this username from this address)."""
        for key in attempt.keys:
            failures = self._failures.get(key)
            if failures is None:
                continue
            if key in forget:
                del self._failures[key]
                continue
            with contextlib.suppress(ValueError):  # already out of the window
                failures.remove(attempt.at)
            if not failures:
                del self._failures[key]

    def failures(self, key: str, now: float) -> int:
        """Failures counted under ``key`` within the window (reserved attempts included)."""
        failures = self._prune(key, now)
        return 0 if failures is None else len(failures)

    def _prune(self, key: str, now: float) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] + self.window <= now:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures

    def _bound(self) -> None:
        if len(self._failures) > self.max_keys:
            # Forget the oldest half (dicts keep insertion order): a storm of distinct keys
            # must not grow memory without end.
            for key in list(self._failures)[: self.max_keys // 2]:
                del self._failures[key]


def login_limits(username: str, address: str, per_user: int, per_address: int) -> dict[str, int]:
    """The keys a login (or a password check) counts under.

    Per username *at one address*, never per username alone: failures from one address
    must not lock the user out from another (lockout as a weapon). Per address too, so one
    address cannot try many usernames.
    """
    return {f"user:{username.lower()}@{address}": per_user, f"addr:{address}": per_address}
