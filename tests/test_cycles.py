"""A held node's periodic and batched reads leave no garbage cycles behind.

Garbage in a reference cycle is freed only by the collector, and a node runs its young
generation rarely (``TIDINGS_GC_THRESHOLD``): a few cycles a second from the head sync or
the credential recheck grew a held node's memory by megabytes an hour (``make hold``).
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable

import pytest

from tidings.access import memberships
from tidings.auth import Authenticator
from tidings.broker.memory import MemoryBroker
from tidings.db import Database
from tidings.events import PROJECT_UPDATED, EventLog
from tidings.openings import BoundsReader
from tidings.processes.state import ACTIVE, Status
from tidings.processes.store import move


async def cycles_made(work: Callable[[], Awaitable[object]], times: int = 20) -> int:
    """Objects in reference cycles that ``times`` runs of ``work`` left for the collector
    (after one run to warm the caches: compiled statements, the connection pool)."""
    await work()
    gc.collect()
    gc.disable()
    try:
        for _ in range(times):
            await work()
        return gc.collect()
    finally:
        gc.enable()


@pytest.fixture
async def world(
    log_db: tuple[Database, str, str],
) -> tuple[Database, EventLog, str, str]:
    db, project_id, owner_id = log_db
    log = EventLog(db, MemoryBroker(), history=100, channel="test")
    async with db.write() as session:
        await log.record(session, project_id, PROJECT_UPDATED, {"data": {}})
    return db, log, project_id, owner_id


async def test_the_head_sync_makes_no_cycles(
    world: tuple[Database, EventLog, str, str],
) -> None:
    _, log, pid, _ = world
    assert await cycles_made(lambda: log.heads([pid, "gone"])) == 0


async def test_the_credential_recheck_makes_no_cycles(
    world: tuple[Database, EventLog, str, str],
) -> None:
    db, *_ = world
    authenticator = Authenticator(db)
    credentials = [f"session:s{n}" for n in range(3)] + [f"token:t{n}" for n in range(3)]
    assert await cycles_made(lambda: authenticator.revoked_among(credentials)) == 0


async def test_batched_subscribe_and_replay_reads_make_no_cycles(
    world: tuple[Database, EventLog, str, str],
) -> None:
    db, log, pid, owner = world
    bounds = BoundsReader(db)

    async def both() -> None:
        assert await bounds.read(pid, owner) == (1, 1)
        assert [e.seq for e in await log.read_visible_after(pid, "stranger", 0, 10) or []] == []
        async with db.read() as session:
            await memberships(session, [pid], [owner, "stranger"])

    assert await cycles_made(both) == 0


async def test_a_process_status_move_makes_no_cycles(
    world: tuple[Database, EventLog, str, str],
) -> None:
    db, *_ = world

    async def attempt() -> None:
        async with db.write() as session:
            assert await move(session, "no-such-process", ACTIVE, Status.FAILED) is None

    assert await cycles_made(attempt) == 0
