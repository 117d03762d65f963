"""Who may see a project: its owner and its members. Shared by REST and the hub."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db import listed
from tidings.models import Member, Project


def visible_to(user_id: str):  # type: ignore[no-untyped-def]
    """A WHERE clause: projects ``user_id`` owns or is a member of."""
    is_member = exists().where(Member.project_id == Project.id, Member.user_id == user_id)
    return or_(Project.owner_id == user_id, is_member)


async def visible_project(
    session: AsyncSession, user_id: str, project_id: str, *, for_update: bool = False
) -> Project | None:
    query = select(Project).where(Project.id == project_id, visible_to(user_id))
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def audience(session: AsyncSession, project: Project) -> list[str]:
    """User ids who see ``project``: they get its ``project.*`` events unsubscribed."""
    rows = await session.scalars(select(Member.user_id).where(Member.project_id == project.id))
    return [project.owner_id, *rows]


_MEMBERSHIPS = select(Member.project_id, Member.user_id).where(
    Member.project_id.in_(listed("projects")), Member.user_id.in_(listed("users"))
)


async def memberships(
    session: AsyncSession, project_ids: Iterable[str], user_ids: Iterable[str]
) -> set[tuple[str, str]]:
    """Which of ``user_ids`` are members (not owners) of which of ``project_ids``, as
    ``(project_id, user_id)`` pairs: one query for a batch of access checks."""
    projects, users = list(project_ids), list(user_ids)
    if not projects or not users:
        return set()
    rows = await session.execute(_MEMBERSHIPS, {"projects": projects, "users": users})
    return {(pid, uid) for pid, uid in rows}
