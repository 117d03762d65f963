"""``/api/projects``: projects and their members. Every change logs its event."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Response, status
from sqlalchemy import Row, String, bindparam, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.access import audience, visible_project, visible_to
from tidings.api.deps import App, CurrentUser, not_found, tell_seq
from tidings.api.schemas import (
    MemberAdded,
    MemberIn,
    MemberOut,
    ProjectIn,
    ProjectOut,
    ProjectPatch,
    project_out,
)
from tidings.api.validation import Id, PathUsername
from tidings.db import Tx, after_commit
from tidings.events import (
    MEMBER_REMOVED,
    PROJECT_CREATED,
    PROJECT_DELETED,
    PROJECT_UPDATED,
    SEQ_BUMP,
)
from tidings.models import MEMBERS, PROJECTS, USERS, Member, Project, User, new_id

router = APIRouter(prefix="/api/projects", tags=["projects"])


async def _owner_name(session: AsyncSession, project: Project) -> str:
    name = await session.scalar(select(User.username).where(User.id == project.owner_id))
    return name or ""


async def record_project_event(app: App, session: AsyncSession, project: Project, type: str) -> int:
    """Log ``project.*`` with the project as it is now, in an ORM write (the project's
    deletion); everyone who sees it gets it. Returns its seq."""
    owner = await _owner_name(session, project)
    users = await audience(session, project)

    def body(seq: int) -> dict[str, Any]:
        project.last_seq = seq
        return {"data": project_out(project, owner)}

    return await app.eventlog.record(session, project.id, type, body, users)


# A change to a project takes its next seq in the UPDATE … RETURNING that makes it, the
# statement that also row-locks it (PostgreSQL): the lock is held from there to the
# commit only. What it hands back is the project as ``project_out`` reads it, its
# owner's name and its members' ids (:func:`members_of`), so that the change, its seq
# and its event's audience need no other query. Built once (see models.PROJECTS).
_PROJECT_COLUMNS = (
    PROJECTS.c.id,
    PROJECTS.c.name,
    PROJECTS.c.description,
    PROJECTS.c.owner_id,
    PROJECTS.c.created_at,
    PROJECTS.c.updated_at,
    PROJECTS.c.last_seq,
)
_CHANGE = SEQ_BUMP.returning(
    *_PROJECT_COLUMNS,
    select(USERS.c.username)
    .where(USERS.c.id == PROJECTS.c.owner_id)
    .scalar_subquery()
    .label("owner"),
    select(func.aggregate_strings(MEMBERS.c.user_id, ","))
    .where(MEMBERS.c.project_id == PROJECTS.c.id)
    .scalar_subquery()
    .label("members"),
)


def members_of(row: Row[Any]) -> list[str]:
    """The member ids a :data:`_CHANGE` row hands back (ids have no commas)."""
    return row.members.split(",") if row.members else []


# A change by anyone who sees the project; a PATCH sets the fields given (None keeps a
# field as it is).
_CHANGE_IF_SEEN = _CHANGE.where(visible_to(bindparam("user_id")))
_EDIT = _CHANGE_IF_SEEN.values(
    name=func.coalesce(bindparam("name", type_=String), PROJECTS.c.name),
    description=func.coalesce(bindparam("description", type_=String), PROJECTS.c.description),
    updated_at=bindparam("now", type_=PROJECTS.c.updated_at.type),
)
# A member added, by the owner only.
_CHANGE_IF_OWNER = _CHANGE.where(PROJECTS.c.owner_id == bindparam("user_id"))
_USER_NAMED = select(USERS.c.id, USERS.c.username).where(USERS.c.username == bindparam("username"))
_ADD_MEMBER = insert(MEMBERS)
_REMOVE_MEMBER = delete(MEMBERS).where(
    MEMBERS.c.project_id == bindparam("project_id"), MEMBERS.c.user_id == bindparam("user_id")
)
_CREATE = insert(PROJECTS).returning(*_PROJECT_COLUMNS)


@router.post("", response_model=ProjectOut, status_code=status.HTTP_201_CREATED)
async def create_project(body: ProjectIn, user: CurrentUser, app: App, response: Response) -> Any:
    now = datetime.now(UTC)
    # Its first event, project.created, is seq 1.
    values = {
        "id": new_id(),
        "name": body.name,
        "description": body.description,
        "owner_id": user.user_id,
        "created_at": now,
        "updated_at": now,
        "last_seq": 1,
    }

    def create(tx: Tx) -> tuple[dict[str, Any], int]:
        out = project_out(tx.execute(_CREATE, values).one(), user.username)
        seq = app.eventlog.log(tx, out["id"], 1, PROJECT_CREATED, {"data": out}, [user.user_id])
        return out, seq

    out, seq = await app.db.commit(create)
    tell_seq(response, seq)
    return out


@router.get("", response_model=list[ProjectOut])
async def list_projects(user: CurrentUser, app: App) -> Any:
    async with app.db.read() as session:
        rows = await session.execute(
            select(Project, User.username)
            .join(User, User.id == Project.owner_id)
            .where(visible_to(user.user_id))
            .order_by(Project.created_at, Project.id)
        )
        return [project_out(p, owner) for p, owner in rows]


@router.get("/{project_id}", response_model=ProjectOut)
async def get_project(project_id: Id, user: CurrentUser, app: App) -> Any:
    async with app.db.read() as session:
        project = await visible_project(session, user.user_id, project_id)
        if project is None:
            raise not_found()
        return project_out(project, await _owner_name(session, project))


@router.patch("/{project_id}", response_model=ProjectOut)
async def update_project(
    project_id: Id, body: ProjectPatch, user: CurrentUser, app: App, response: Response
) -> Any:
    params = {
        "project_id": project_id,
        "user_id": user.user_id,
        "name": body.name,
        "description": body.description,
        "now": datetime.now(UTC),
    }

    def change(tx: Tx) -> tuple[dict[str, Any], int]:
        row = tx.execute(_EDIT, params).first()
        if row is None:
            raise not_found()
        out = project_out(row, row.owner)
        audience = [row.owner_id, *members_of(row)]
        seq = app.eventlog.log(
            tx, project_id, row.last_seq, PROJECT_UPDATED, {"data": out}, audience
        )
        return out, seq

    out, seq = await app.db.commit(change, key=project_id)
    tell_seq(response, seq)
    return out


@router.delete("/{project_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_project(project_id: Id, user: CurrentUser, app: App, response: Response) -> None:
    async with app.db.write() as session:
        project = await visible_project(session, user.user_id, project_id, for_update=True)
        if project is None:
            raise not_found()
        if project.owner_id != user.user_id:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "only the owner can delete a project")
        tell_seq(response, await record_project_event(app, session, project, PROJECT_DELETED))
        await app.eventlog.forget_project(session, project.id, keep_from=project.last_seq)
        await session.delete(project)
        after_commit(session, lambda: app.processes.project_deleted(project_id))
        after_commit(session, lambda: asyncio.to_thread(app.storage.remove_project, project_id))


# -- members ---------------------------------------------------------------------------


@router.get("/{project_id}/members", response_model=list[MemberOut])
async def list_members(project_id: Id, user: CurrentUser, app: App) -> Any:
    async with app.db.read() as session:
        project = await visible_project(session, user.user_id, project_id)
        if project is None:
            raise not_found()
        owner = await _owner_name(session, project)
        rows = await session.execute(
            select(User.id, User.username)
            .join(Member, Member.user_id == User.id)
            .where(Member.project_id == project_id)
            .order_by(User.username)
        )
        members = [MemberOut(user_id=project.owner_id, username=owner, role="owner")]
        members += [MemberOut(user_id=i, username=n, role="member") for i, n in rows]
        return members


@router.post(
    "/{project_id}/members", response_model=MemberAdded, status_code=status.HTTP_201_CREATED
)
async def add_member(
    project_id: Id, body: MemberIn, user: CurrentUser, app: App, response: Response
) -> Any:

    def add(tx: Tx) -> MemberAdded | None:
        target = tx.execute(_USER_NAMED, {"username": body.username}).first()
        row = tx.execute(_CHANGE_IF_OWNER, {"project_id": project_id, "user_id": user.user_id})
        project = row.first()
        if project is None:
            return None  # no such project, or not the caller's: told apart below
        if target is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "user not found")
        members = members_of(project)
        if target.id == project.owner_id or target.id in members:
            raise HTTPException(status.HTTP_409_CONFLICT, "already a member")
        added = {"project_id": project_id, "user_id": target.id, "created_at": datetime.now(UTC)}
        tx.execute(_ADD_MEMBER, added)
        # The new member's project list learns of the project through this event.
        audience = [project.owner_id, *members, target.id]
        body_out = {"data": project_out(project, project.owner)}
        seq = app.eventlog.log(
            tx, project_id, project.last_seq, PROJECT_UPDATED, body_out, audience
        )
        return MemberAdded(user_id=target.id, username=target.username, role="member", seq=seq)

    added = await app.db.commit(add, key=project_id)
    if added is None:
        async with app.db.read() as session:
            project = await visible_project(session, user.user_id, project_id)
        if project is not None and project.owner_id != user.user_id:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "only the owner manages members")
        raise not_found()
    tell_seq(response, added.seq)
    return added


@router.delete("/{project_id}/members/{username}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_member(
    project_id: Id, username: PathUsername, user: CurrentUser, app: App, response: Response
) -> None:
    """The owner removes a member, or a member leaves (``username`` is their own). Their
    subscriptions to the project end at once (``access_revoked``). The owner cannot be
    removed: 409."""

    def remove(tx: Tx) -> int:
        seen_by = {"project_id": project_id, "user_id": user.user_id}
        row = tx.execute(_CHANGE_IF_SEEN, seen_by).first()
        if row is None:
            raise not_found()
        if row.owner_id != user.user_id and username != user.username:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "only the owner manages members")
        target = tx.execute(_USER_NAMED, {"username": username}).first()
        if target is not None and target.id == row.owner_id:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                "the owner cannot be removed from the project; delete the project instead",
            )
        members = members_of(row)
        if target is None or target.id not in members:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "member not found")
        tx.execute(_REMOVE_MEMBER, {"project_id": project_id, "user_id": target.id})
        audience = [row.owner_id, *(m for m in members if m != target.id)]
        body = {"data": project_out(row, row.owner)}
        seq = app.eventlog.log(
            tx, project_id, row.last_seq, PROJECT_UPDATED, body, audience, revoked=[target.id]
        )
        removed = {"project_id": project_id, "user_id": target.id}
        after_commit(tx, lambda: app.eventlog.publish_control(MEMBER_REMOVED, removed))
        return seq

    tell_seq(response, await app.db.commit(remove, key=project_id))
