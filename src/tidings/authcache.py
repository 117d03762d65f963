"""Who a credential is, without a database round trip: a bounded cache of credential
hash → principal. Pure: no I/O, the clock is passed in.

An entry lives at most ``ttl`` seconds (so a revocation this node never heard of lasts no
longer than that) and is dropped at once by :meth:`CredentialCache.forget` (the broker's
revocation notices, on every node). Only credentials the database accepted are kept: an
unknown secret always costs a query, so guessing cannot fill the cache, and the number of
entries is bounded (least recently used out first).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Credential(Protocol):
    @property
    def credential(self) -> str: ...  # "session:<id>" or "token:<id>"

    @property
    def user_id(self) -> str: ...


P = TypeVar("P", bound=Credential)


@dataclass(slots=True)
class _Entry(Generic[P]):
    principal: P
    fetched: float


class CredentialCache(Generic[P]):
    """``key`` (the credential's hash, with its kind) → principal, for ``ttl`` seconds.

    A lookup that misses reads the database, then :meth:`put`\\ s what it found with the
    :attr:`generation` it read before its query: if a credential was forgotten meanwhile,
    the possibly stale answer is not kept.
    """

    def __init__(self, *, ttl: float, max_entries: int) -> None:
        if not 0 < ttl <= 30:
            raise ValueError("ttl must be in (0, 30] seconds")
        self.ttl = ttl
        self.max_entries = max_entries
        self.generation = 0  # bumped by every forget
        self._entries: OrderedDict[str, _Entry[P]] = OrderedDict()
        self._keys: dict[str, str] = {}  # credential → key

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> P | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry.fetched >= self.ttl:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry.principal

    def put(self, key: str, principal: P, now: float, generation: int) -> None:
        """Keep ``principal``, read from the database when :attr:`generation` was
        ``generation``; nothing is kept if a credential was forgotten since."""
        if generation != self.generation:
            return
        self._drop(key)
        self._entries[key] = _Entry(principal, now)
        self._keys[principal.credential] = key
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))

    def forget(self, credential: str) -> None:
        """The credential was revoked (or expired): the next lookup reads the database."""
        self.generation += 1
        key = self._keys.get(credential)
        if key is not None:
            self._drop(key)

    def forget_user(self, user_id: str) -> None:
        """Every credential of the user (a password change revoked some of them)."""
        self.generation += 1
        for key in [k for k, e in self._entries.items() if e.principal.user_id == user_id]:
            self._drop(key)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._keys.pop(entry.principal.credential, None)
