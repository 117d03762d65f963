"""The processes table: the JSON shape of a process, and compare-and-set status moves.

Every status change goes through :func:`move`, an ``UPDATE … WHERE status IN (…)``: of two
racing finishers (a worker completing, a cancel, a sweep of stale leases, a project
deletion) exactly one wins, and only the winner emits ``process.completed``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tidings import schema
from tidings.models import File, Process
from tidings.processes.state import Status
from tidings.processes.work import SourceFile
from tidings.storage import Storage


class ProcessOut(schema.Process):
    """A process, as ``process.*`` events and snapshots carry it too (``Process`` there)."""

    # The same values as the schema's literal (a test checks); the enum keeps OpenAPI's
    # shared ``Status`` component, which the list's ``status`` filter names too.
    status: Status  # type: ignore[assignment]


def process_out(process: Process) -> dict[str, Any]:
    """A process as REST returns it and as ``process.*`` events carry it."""
    return ProcessOut.model_validate(process, from_attributes=True).model_dump(mode="json")


@functools.cache
def status_in(statuses: frozenset[Status]) -> Any:
    """``Process.status IN (…)``, built once per set of statuses (see db.listed)."""
    return Process.status.in_(sorted(s.value for s in statuses))


async def move(
    session: AsyncSession,
    process_id: str,
    from_: Iterable[Status],
    to: Status,
    *,
    where: Sequence[Any] = (),
    **values: Any,
) -> Process | None:
    """Set ``status=to`` (and ``values``) if the process is in one of ``from_`` (and
    matches the extra conditions ``where``).

    Returns the updated row, or None if it is gone or in another status (someone else
    moved it first).
    """
    rows = await session.scalars(
        update(Process)
        .where(Process.id == process_id, status_in(frozenset(from_)), *where)
        .values(status=to.value, **values)
        .returning(Process),
        execution_options={"populate_existing": True},
    )
    return rows.first()


async def source_files(
    session: AsyncSession, storage: Storage, project_id: str, folder: str | None
) -> list[SourceFile]:
    """The project's files (under ``folder`` if given) in a stable order."""
    query = select(File).where(File.project_id == project_id)
    if folder is not None and folder != "/":
        query = query.where(
            (File.path == folder) | File.path.startswith(folder + "/", autoescape=True)
        )
    rows = await session.scalars(query.order_by(File.path, File.name))
    return [
        SourceFile(
            id=f.id,
            name=f.name,
            path=f.path,
            size=f.size,
            sha256=f.sha256,
            asset_type=f.asset_type,
            disk_path=storage.file_path(project_id, f.id),
        )
        for f in rows
    ]
