"""Request and response bodies of the REST API.

A project, a file and a process are the records of the message schema
(:mod:`tidings.schema`) under their REST names: one declaration for the REST body, the
``project.*`` / ``file.*`` / ``process.*`` events, a ``subscribed`` snapshot and
``tidings.d.ts``, so a field added there appears in all of them at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Row

from tidings import schema
from tidings.api.validation import check_json
from tidings.models import File, Project
from tidings.settings import MiB


class Body(BaseModel):
    """Base of every JSON request body.

    Before any field is read, the whole body passes :func:`check_json`: no NUL or unpaired
    surrogate in any key or string, integers within 64 bits, finite floats, at most 32
    levels of nesting. So no endpoint hands the database or the event encoder a value it
    cannot store (a 422 instead of a 500), whatever its own fields are.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        check_json(data)
        return data


class LoginIn(Body):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class UserOut(BaseModel):
    id: str
    username: str


MAX_TOKEN_LIFETIME = 366 * 24 * 3600  # seconds; omit expires_in for a token that never expires


class TokenIn(Body):
    name: str = Field(default="", max_length=100)
    expires_in: int | None = Field(
        default=None, gt=0, le=MAX_TOKEN_LIFETIME, description="seconds until it expires"
    )


class TokenOut(BaseModel):
    id: str
    name: str
    created_at: datetime
    last_used_at: datetime | None = None
    expires_at: datetime | None = None


class NewTokenOut(TokenOut):
    token: str


class PasswordIn(Body):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)
    revoke_tokens: bool = False


class PasswordChanged(BaseModel):
    revoked_sessions: int
    revoked_tokens: int


class ProjectIn(Body):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=1 * MiB)


class ProjectPatch(Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=1 * MiB)


class ProjectOut(schema.Project):
    """A project, as ``project.*`` events and snapshots carry it too (``Project`` there)."""


class MemberIn(Body):
    username: str = Field(min_length=1, max_length=64)


class MemberOut(BaseModel):
    user_id: str
    username: str
    role: str


class MemberAdded(MemberOut):
    seq: int = Field(description="seq of the project.updated event the change recorded")


class FileOut(schema.StoredFile):
    """A file, as snapshots list it too (``StoredFile`` there)."""


class FileCreated(FileOut):
    seq: int = Field(description="seq of the file.uploaded event the upload recorded")


class FilePage(BaseModel):
    items: list[FileOut]
    total: int
    next_offset: int | None


def project_out(project: Project | Row[Any], owner: str) -> dict[str, Any]:
    """A project as the API shows it, from its ORM object or a row of the same columns."""
    return ProjectOut(
        id=project.id,
        name=project.name,
        description=project.description,
        owner=owner,
        created_at=project.created_at,
        updated_at=project.updated_at,
        seq=project.last_seq,
    ).model_dump(mode="json")


def file_out(file: File) -> dict[str, Any]:
    return FileOut.model_validate(file, from_attributes=True).model_dump(mode="json")


def file_event(file: File | Row[Any]) -> dict[str, Any]:
    """The ``file`` object of ``file.*`` events (:class:`~tidings.schema.FileInfo`), from
    its ORM object or a row of its columns."""
    return schema.FileInfo.model_validate(file, from_attributes=True).model_dump(mode="json")
