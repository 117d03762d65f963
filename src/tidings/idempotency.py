"""Idempotency keys: a retried request answers what the first one did, and does nothing.

A key is scoped to a project and kept :data:`KEY_LIFETIME`. :func:`claim` runs inside the
write transaction of the request it protects: it inserts the key, or finds the one a
first request inserted. The primary key (project, key) decides between identical requests
racing each other, in the database: the second insert waits for the first transaction and
then finds its row (PostgreSQL), or never runs concurrently at all (SQLite's write lock).
Expired keys are deleted lazily, a project's own with each claim in it (the project's
lock is held, so claims of one project never contend over the rows they delete).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.models import IdempotencyKey

KEY_LIFETIME = timedelta(hours=24)
# What a key may be: 1 to 255 visible ASCII characters (a UUID, a hash, a job id …).
KEY_PATTERN = r"^[!-~]{1,255}$"


@dataclass(frozen=True, slots=True)
class Answer:
    """What the first request with the key answered."""

    status: int
    seq: int | None


class KeyReused(Exception):
    """The key was first used for a different request: its answer would be a lie."""


def fingerprint(request: Any) -> str:
    """SHA-256 of a request's JSON (keys sorted): equal for equal requests only."""
    return hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def claim(
    session: AsyncSession,
    dialect: str,
    project_id: str,
    key: str,
    request: str,
    status: int,
    now: datetime,
) -> Answer | None:
    """Take ``key`` for the request of fingerprint ``request``, answering ``status``.

    Returns None when this request is the first: the caller carries it out in the same
    transaction and then calls :func:`settle`. Otherwise returns the first one's answer,
    or raises :class:`KeyReused` if that was a different request. The caller must hold the
    project's lock in the transaction (``visible_project(…, for_update=True)``).
    """
    await session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.project_id == project_id,
            IdempotencyKey.created_at < now - KEY_LIFETIME,
        )
    )
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    taken = await session.scalar(
        insert(IdempotencyKey)
        .values(project_id=project_id, key=key, fingerprint=request, status=status, created_at=now)
        .on_conflict_do_nothing(index_elements=["project_id", "key"])
        .returning(IdempotencyKey.key)
    )
    if taken is not None:
        return None
    first = await session.get(IdempotencyKey, (project_id, key), populate_existing=True)
    assert first is not None  # it made our insert do nothing, and expired ones are gone
    if first.fingerprint != request:
        raise KeyReused(key)
    return Answer(first.status, first.seq)


async def settle(session: AsyncSession, project_id: str, key: str, seq: int | None) -> None:
    """Record the seq the first request's event got, for the retries to answer."""
    await session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.project_id == project_id, IdempotencyKey.key == key)
        .values(seq=seq)
    )
