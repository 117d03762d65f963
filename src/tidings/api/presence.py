"""``GET /api/projects/{id}/presence``: who is viewing a project now (``presence.py``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from tidings import schema
from tidings.access import sees
from tidings.api.deps import App, CurrentUser, not_found
from tidings.api.validation import Id

router = APIRouter(prefix="/api/projects", tags=["projects"])


@router.get("/{project_id}/presence", response_model=list[schema.User])
async def project_presence(project_id: Id, user: CurrentUser, app: App) -> Any:
    """The distinct users subscribed to the project on any node, by username: the list a
    ``subscribed`` reply carries, which ``presence.joined`` / ``presence.left`` update."""
    async with app.db.read() as session:
        if not await sees(session, user.user_id, project_id):
            raise not_found()
    return await app.hub.presence.viewers(project_id)
