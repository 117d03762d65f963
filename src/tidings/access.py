"""Who may see a project: its owner and its members. Shared by REST and the hub."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import BindParameter, ColumnElement, bindparam, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db import listed
from tidings.models import MEMBERS, PROJECTS, Project


def visible_to(user_id: str | BindParameter[str]) -> ColumnElement[bool]:
    """A WHERE clause: projects ``user_id`` owns or is a member of (a value, or a bound
    parameter of a statement built once)."""
    is_member = exists().where(MEMBERS.c.project_id == PROJECTS.c.id, MEMBERS.c.user_id == user_id)
    return or_(PROJECTS.c.owner_id == user_id, is_member)


_SEES = select(PROJECTS.c.id).where(
    PROJECTS.c.id == bindparam("project_id"), visible_to(bindparam("user_id"))
)
_MEMBER_IDS = select(MEMBERS.c.user_id).where(MEMBERS.c.project_id == bindparam("project_id"))


async def sees(session: AsyncSession, user_id: str, project_id: str) -> bool:
    """Whether ``user_id`` may see the project (which exists)."""
    found = await session.scalar(_SEES, {"project_id": project_id, "user_id": user_id})
    return found is not None


async def member_ids(session: AsyncSession, project_id: str) -> list[str]:
    """The project's members' user ids (not its owner's)."""
    return list((await session.scalars(_MEMBER_IDS, {"project_id": project_id})).all())


async def visible_project(
    session: AsyncSession, user_id: str, project_id: str, *, for_update: bool = False
) -> Project | None:
    query = select(Project).where(Project.id == project_id, visible_to(user_id))
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def audience(session: AsyncSession, project: Project) -> list[str]:
    """User ids who see ``project``: they get its ``project.*`` events unsubscribed."""
    return [project.owner_id, *await member_ids(session, project.id)]


_MEMBERSHIPS = select(MEMBERS.c.project_id, MEMBERS.c.user_id).where(
    MEMBERS.c.project_id.in_(listed("projects")), MEMBERS.c.user_id.in_(listed("users"))
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
