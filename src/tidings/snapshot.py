"""A project's state for a ``subscribe`` with ``snapshot``, read with its log bounds.

:meth:`Snapshots.open` reads, in one database transaction that sees one committed state
(``Database.snapshot``), the access check and the log bounds of a subscription and, if the
caller wants it for those bounds, the project, its files and its processes as the REST API
shows them. The state is therefore exactly the state at the bounds' latest seq: every
event with a higher seq happened after it, every lower one is in it.

What a snapshot holds: the project; its files in path and name order, up to
``max_files``; its queued and running processes and the ``recent_processes`` newest
others, newest first. A snapshot must fit the connection's outbound queue, so it is also
cut to a byte ``budget``: processes first (the active ones before the finished ones), then
files. ``files_truncated`` / ``processes_truncated`` say that the lists are incomplete;
the client then pages them over REST.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic_core import to_jsonable_python
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.api.schemas import FileOut, project_out
from tidings.db import Database
from tidings.events import log_bounds
from tidings.models import File, Process, Project, User
from tidings.processes.state import ACTIVE
from tidings.processes.store import process_out, status_in

RECENT_PROCESSES = 50
# The rest of a `subscribed` reply around its snapshot: type, ids, seq, flags, timestamp.
REPLY_OVERHEAD = 1024


@dataclass(frozen=True, slots=True)
class Opening:
    """How a subscription opens: the log bounds, and the state at ``latest`` if wanted."""

    oldest: int
    latest: int
    snapshot: dict[str, Any] | None = None
    size: int = 0  # bytes of the snapshot encoded as JSON, plus REPLY_OVERHEAD


class Snapshots:
    """Reads openings of subscriptions; see the module docstring."""

    def __init__(
        self, db: Database, max_files: int, recent_processes: int = RECENT_PROCESSES
    ) -> None:
        self.db = db
        self.max_files = max_files
        self.recent_processes = recent_processes

    async def open(
        self,
        project_id: str,
        user_id: str,
        wanted: Callable[[int, int], bool],
        budget: int,
    ) -> Opening | None:
        """The bounds of a project ``user_id`` can see (None if they cannot), and its state
        when ``wanted(oldest, latest)``, within ``budget`` bytes, from the same transaction.
        """
        async with self.db.snapshot() as session:
            bounds = await log_bounds(session, project_id, user_id)
            if bounds is None:
                return None
            oldest, latest = bounds
            if not wanted(oldest, latest):
                return Opening(oldest, latest)
            snapshot, size = await self._read(session, project_id, budget)
        return Opening(oldest, latest, snapshot, size)

    async def _read(
        self, session: AsyncSession, project_id: str, budget: int
    ) -> tuple[dict[str, Any], int]:
        project, owner = (
            await session.execute(
                select(Project, User.username)
                .join(User, User.id == Project.owner_id)
                .where(Project.id == project_id)
            )
        ).one()
        out = project_out(project, owner)
        used = REPLY_OVERHEAD + _size(out)

        newest_first = (Process.created_at.desc(), Process.id)
        active_filter = status_in(ACTIVE)
        active = await session.scalars(
            select(Process)
            .where(Process.project_id == project_id, active_filter)
            .order_by(*newest_first)
        )
        others = await session.scalars(
            select(Process)
            .where(Process.project_id == project_id, ~active_filter)
            .order_by(*newest_first)
            .limit(self.recent_processes)
        )
        processes: list[tuple[Process, dict[str, Any]]] = []
        processes_truncated = False
        for process in [*active, *others]:  # active ones first, should the budget bite
            item = process_out(process)
            size = _size(item) + 1
            if used + size > budget:
                processes_truncated = True
                break
            used += size
            processes.append((process, item))
        processes.sort(key=lambda pair: pair[0].id)
        processes.sort(key=lambda pair: pair[0].created_at, reverse=True)  # as REST lists them

        # Up to thousands of rows: plain rows in FileOut's fields (no ORM object and no
        # model per row), their values made JSON by pydantic as for FileOut.
        names = list(FileOut.model_fields)
        rows = await session.execute(
            select(*(File.__table__.c[name] for name in names))
            .where(File.project_id == project_id)
            .order_by(File.path, File.name)
            .limit(self.max_files + 1)
        )
        files: list[dict[str, Any]] = to_jsonable_python(
            [dict(zip(names, row, strict=True)) for row in rows]
        )
        files_truncated = len(files) > self.max_files
        del files[self.max_files :]
        if used + _size(files) > budget:  # cut to what fits (the usual case skips this)
            for count, item in enumerate(files):
                used += _size(item) + 1
                if used > budget:
                    del files[count:]
                    files_truncated = True
                    break
        else:
            used += _size(files)
        snapshot = {
            "project": out,
            "files": files,
            "files_truncated": files_truncated,
            "processes": [item for _, item in processes],
            "processes_truncated": processes_truncated,
        }
        return snapshot, used


def _size(value: Any) -> int:
    return len(orjson.dumps(value))
