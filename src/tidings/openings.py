"""How a subscribe opens without a database round trip when the node already knows.

A subscribe needs two facts: may the user see the project, and what are the bounds of its
event log (``oldest..latest``, see ``resume.py``). :class:`AccessCache` remembers, per
node, the (user, project) pairs a database read found visible, with the project's seq
that read saw, for :data:`ACCESS_TTL` seconds at most and in a bounded number; the hub
forgets a project's entries on its ``project.updated`` and ``project.deleted`` events and
a member's on ``control.member_removed`` (both reach every node through the broker), and
all of them when the broker subscription was lost (messages may have been missed). A
grant is trusted only by a node that has seen every event of the project since the seq it
was read at: one it missed may have been the removal. Only grants are remembered: a
refusal is always read again, so a new member is never refused by the cache.

:class:`BoundsReader` reads access and bounds for the subscribes that miss, coalescing
those that wait at the same time into one batched query (two statements in one
transaction), as ``events.log_bounds`` would answer each.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from sqlalchemy import func, select

from tidings.access import memberships
from tidings.batches import Batches
from tidings.db import Database, listed
from tidings.models import EVENTS, PROJECTS

ACCESS_TTL = 30.0  # seconds a grant is trusted: bounds a revocation the broker lost
BATCH = 500  # subscribes answered by one batched read, at most

# Each project's owner, head and oldest logged seq (see db.listed).
_BOUNDS = select(
    PROJECTS.c.id,
    PROJECTS.c.owner_id,
    PROJECTS.c.last_seq,
    select(func.min(EVENTS.c.seq)).where(EVENTS.c.project_id == PROJECTS.c.id).scalar_subquery(),
).where(PROJECTS.c.id.in_(listed("ids")))


class AccessCache:
    """(user, project) pairs known visible, each with the seq of the project it was read
    at; least recently used ones evicted beyond ``max_entries`` (0: remember nothing).

    A fill races with invalidations: read :attr:`generation` before the database read and
    pass it to :meth:`grant`, which ignores the grant if anything was forgotten meanwhile.
    """

    __slots__ = ("_by_project", "_entries", "clock", "generation", "max_entries", "ttl")

    def __init__(
        self,
        max_entries: int,
        ttl: float = ACCESS_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = clock
        self.generation = 0
        # (user, project) → (expiry, the project's seq when access was read)
        self._entries: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self._by_project: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def allowed(self, user_id: str, project_id: str, missed: int) -> bool:
        """Whether a grant is remembered that was read at the project's seq ``missed`` or
        later: ``missed`` is the newest seq of the project the caller knows it has not
        seen (a removal may hide there), 0 if none."""
        key = (user_id, project_id)
        entry = self._entries.get(key)
        if entry is None:
            return False
        expires, at = entry
        if expires <= self.clock():
            self._remove(key)
            return False
        self._entries.move_to_end(key)
        return at >= missed

    def grant(self, user_id: str, project_id: str, generation: int, at: int) -> None:
        """Remember a grant read when :attr:`generation` was ``generation``, in a snapshot
        of the database where the project's latest seq was ``at``."""
        if generation != self.generation or not self.max_entries:
            return
        key = (user_id, project_id)
        self._entries[key] = (self.clock() + self.ttl, at)
        self._entries.move_to_end(key)
        self._by_project.setdefault(project_id, set()).add(user_id)
        while len(self._entries) > self.max_entries:
            self._remove(next(iter(self._entries)))

    def forget(self, project_id: str, user_id: str | None = None) -> None:
        """Forget ``user_id``'s grant to the project, or every grant to it."""
        self.generation += 1
        users = self._by_project.get(project_id)
        if not users:
            return
        for user in [user_id] if user_id is not None else list(users):
            self._remove((user, project_id))

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._by_project.clear()

    def _remove(self, key: tuple[str, str]) -> None:
        if self._entries.pop(key, None) is None:
            return
        user_id, project_id = key
        users = self._by_project[project_id]
        users.discard(user_id)
        if not users:
            del self._by_project[project_id]


Bounds = tuple[int, int]


class BoundsReader:
    """Access and log bounds of (project, user) pairs, read in batches.

    :meth:`read` answers what ``events.log_bounds`` would: ``(oldest, latest)``, or None
    if the user cannot see the project. Reads asked for while another batch is being
    read wait for it and go together in the next one (``batches.py``).
    """

    def __init__(self, db: Database, batch: int = BATCH) -> None:
        self.db = db
        self._batches: Batches[tuple[str, str], Bounds | None] = Batches(self._query, batch)

    @property
    def queries(self) -> int:
        """Batched reads made (for tests)."""
        return self._batches.batches

    async def read(self, project_id: str, user_id: str) -> Bounds | None:
        return await self._batches.ask((project_id, user_id))

    async def _query(self, batch: list[tuple[str, str]]) -> list[Bounds | None]:
        projects = {project_id for project_id, _ in batch}
        users = {user_id for _, user_id in batch}
        async with self.db.snapshot() as session:  # one view of the database for both
            rows = await session.execute(_BOUNDS, {"ids": list(projects)})
            found = {pid: (owner, latest, first) for pid, owner, latest, first in rows}
            members = await memberships(session, found, users)
        answers: list[Bounds | None] = []
        for project_id, user_id in batch:
            row = found.get(project_id)
            if row is None or (row[0] != user_id and (project_id, user_id) not in members):
                answers.append(None)
                continue
            _, latest, first = row
            answers.append((first if first is not None else latest + 1, latest))
        return answers
