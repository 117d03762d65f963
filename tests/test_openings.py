"""tidings.openings: the grants cache on its own, and batched reads on a real database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tidings.broker.memory import MemoryBroker
from tidings.db import Database, create_engine, migrate
from tidings.events import PROJECT_CREATED, PROJECT_UPDATED, EventLog
from tidings.models import Member, Project, User
from tidings.openings import AccessCache, BoundsReader


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_grants_are_remembered_until_they_expire() -> None:
    clock = Clock()
    cache = AccessCache(10, ttl=30, clock=clock)
    assert not cache.allowed("u", "p", 0)
    cache.grant("u", "p", cache.generation, 5)
    assert cache.allowed("u", "p", 0) and not cache.allowed("v", "p", 0)
    clock.now += 29.9
    assert cache.allowed("u", "p", 0)
    clock.now += 0.1
    assert not cache.allowed("u", "p", 0) and len(cache) == 0


def test_a_grant_read_before_an_invalidation_is_ignored() -> None:
    cache = AccessCache(10)
    before = cache.generation
    cache.forget("p", "u")  # the member was removed while the database was being read
    cache.grant("u", "p", before, 5)
    assert not cache.allowed("u", "p", 0)
    cache.grant("u", "p", cache.generation, 5)
    assert cache.allowed("u", "p", 0)


def test_a_grant_is_trusted_only_from_the_seq_it_was_read_at() -> None:
    """A node that missed events of the project up to ``missed`` cannot tell whether one
    of them removed the member: a grant read before them is not trusted."""
    cache = AccessCache(10)
    cache.grant("u", "p", cache.generation, 5)
    assert cache.allowed("u", "p", 0) and cache.allowed("u", "p", 5)
    assert not cache.allowed("u", "p", 6)
    assert cache.allowed("u", "p", 5)  # still remembered: a newer missed seq is the caller's


def test_forget_one_member_or_a_whole_project() -> None:
    cache = AccessCache(10)
    for user, project in (("u", "p"), ("v", "p"), ("u", "q")):
        cache.grant(user, project, cache.generation, 5)
    cache.forget("p", "u")
    assert (
        not cache.allowed("u", "p", 0) and cache.allowed("v", "p", 0) and cache.allowed("u", "q", 0)
    )
    cache.forget("p")
    assert not cache.allowed("v", "p", 0) and cache.allowed("u", "q", 0)
    cache.forget("never-seen")
    cache.clear()
    assert len(cache) == 0 and not cache.allowed("u", "q", 0)


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache = AccessCache(2)
    cache.grant("a", "p", 0, 5)
    cache.grant("b", "p", 0, 5)
    assert cache.allowed("a", "p", 0)  # b is now the least recently used
    cache.grant("c", "q", 0, 5)
    assert len(cache) == 2
    assert (
        cache.allowed("a", "p", 0) and cache.allowed("c", "q", 0) and not cache.allowed("b", "p", 0)
    )
    off = AccessCache(0)
    off.grant("a", "p", 0, 5)
    assert len(off) == 0 and not off.allowed("a", "p", 0)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'o.db'}"))
    await migrate(database.engine)
    try:
        yield database
    finally:
        await database.dispose()


async def test_concurrent_reads_are_one_batched_query_with_each_answer(db: Database) -> None:
    log = EventLog(db, MemoryBroker(), 3, "nowhere")
    async with db.write() as session:
        owner, member, other = (User(username=n, password_hash="-") for n in "abc")
        session.add_all([owner, member, other])
        await session.flush()
        busy, empty = (Project(name=n, owner_id=owner.id, last_seq=0) for n in ("busy", "empty"))
        session.add_all([busy, empty])
        await session.flush()
        session.add(Member(project_id=busy.id, user_id=member.id))
        await log.record(session, busy.id, PROJECT_CREATED, {"data": {}})
    for i in range(4):  # seq 2..5; the log keeps the newest 3
        async with db.write() as session:
            await log.record(session, busy.id, PROJECT_UPDATED, {"n": i})
    reader = BoundsReader(db)
    asked = [
        (busy.id, owner.id),
        (busy.id, member.id),
        (busy.id, other.id),
        (empty.id, owner.id),
        (empty.id, member.id),
        ("0" * 32, owner.id),
    ]
    answers = await asyncio.gather(*(reader.read(p, u) for p, u in asked))
    assert answers == [(3, 5), (3, 5), None, (1, 0), None, None]
    assert reader.queries == 1
    # Alone, or after a batch: a read of its own.
    assert await reader.read(busy.id, member.id) == (3, 5)
    assert reader.queries == 2
