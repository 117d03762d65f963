"""The event log: per-project seq without gaps, retention, and one transaction with the change."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import (
    TIMEOUT,
    ServerThread,
    api,
    create_project,
    create_user,
    db_scalars,
    on_stacks,
    upload,
)
from tidings.broker.memory import MemoryBroker
from tidings.db import Database, after_commit, create_engine, migrate
from tidings.events import (
    FILE_UPLOADED,
    MEMBER_REMOVED,
    PROJECT_CREATED,
    PROJECT_DELETED,
    Envelope,
    EventLog,
)
from tidings.models import Event, Member, Project, User


async def events_of(server: ServerThread, project_id: str) -> list[Event]:
    return await db_scalars(
        server.settings, select(Event).where(Event.project_id == project_id).order_by(Event.seq)
    )


async def test_project_created_is_seq_1(server: ServerThread, alice_api: httpx.AsyncClient) -> None:
    project = await create_project(alice_api)
    (event,) = await events_of(server, project["id"])
    assert (event.seq, event.type) == (1, PROJECT_CREATED)
    frame = orjson.loads(event.frame)
    assert frame["type"] == "project.created"
    assert frame["project_id"] == project["id"]
    assert frame["seq"] == 1
    assert frame["timestamp"].endswith("Z")
    assert frame["data"]["name"] == "demo"
    assert frame["data"]["seq"] == 1


async def test_every_change_logs_its_event(
    server: ServerThread, alice_api: httpx.AsyncClient, bob_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    await alice_api.patch(f"/api/projects/{pid}", json={"name": "renamed"})
    file = (await upload(alice_api, pid)).json()
    await alice_api.post(f"/api/projects/{pid}/members", json={"username": "bob"})
    await alice_api.delete(f"/api/projects/{pid}/members/bob")
    await alice_api.delete(f"/api/projects/{pid}/files/{file['id']}")
    events = await events_of(server, pid)
    assert [(e.seq, e.type) for e in events] == [
        (1, "project.created"),
        (2, "project.updated"),
        (3, "file.uploaded"),
        (4, "project.updated"),
        (5, "project.updated"),
        (6, "file.deleted"),
    ]
    uploaded = orjson.loads(events[2].frame)
    assert uploaded["file"] == {
        "id": file["id"],
        "name": "a.txt",
        "path": "/",
        "size": 5,
        "asset_type": "document",
    }
    # A deleted project keeps only its tombstone.
    assert (await alice_api.delete(f"/api/projects/{pid}")).status_code == 204
    assert [(e.seq, e.type) for e in await events_of(server, pid)] == [(7, "project.deleted")]


async def test_concurrent_changes_get_consecutive_seqs(
    server: ServerThread, alice_api: httpx.AsyncClient, bob_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    await alice_api.post(f"/api/projects/{pid}/members", json={"username": "bob"})
    changes = [upload(alice_api, pid, f"a{i}.txt") for i in range(8)]
    changes += [upload(bob_api, pid, f"b{i}.txt") for i in range(8)]
    changes += [
        alice_api.patch(f"/api/projects/{pid}", json={"description": str(i)}) for i in range(6)
    ]
    responses = await asyncio.gather(*changes)
    assert all(r.is_success for r in responses), [r.text for r in responses if not r.is_success]
    seqs = [e.seq for e in await events_of(server, pid)]
    assert seqs == list(range(1, 2 + 1 + len(changes)))
    last = await db_scalars(server.settings, select(Project.last_seq).where(Project.id == pid))
    assert last == [len(seqs)]
    # Concurrent work on another project does not touch this one's numbering.
    other = (await create_project(bob_api, "other"))["id"]
    assert [e.seq for e in await events_of(server, other)] == [1]


async def test_many_concurrent_writers_of_every_kind_get_gap_free_seqs(
    server: ServerThread, alice_api: httpx.AsyncClient
) -> None:
    """64 writers at once on one project, of the four hot kinds of change: each gets its
    own seq, the log holds exactly 1…N, and every answer's seq is the logged one."""
    pid = (await create_project(alice_api))["id"]
    for i in range(16):
        await create_user(server.settings, f"m{i}")
    changes = [upload(alice_api, pid, f"f{i}.txt") for i in range(16)]
    changes += [
        alice_api.patch(f"/api/projects/{pid}", json={"description": str(i)}) for i in range(16)
    ]
    changes += [
        alice_api.post(f"/api/projects/{pid}/members", json={"username": f"m{i}"})
        for i in range(16)
    ]
    changes += [
        alice_api.post(f"/api/projects/{pid}/events", json={"type": "custom.n", "data": {"i": i}})
        for i in range(16)
    ]
    responses = await asyncio.gather(*changes)
    assert all(r.is_success for r in responses), [r.text for r in responses if not r.is_success]
    told = sorted(int(r.headers["Tidings-Seq"]) for r in responses)
    assert told == list(range(2, 2 + len(changes)))
    logged = await events_of(server, pid)
    assert [e.seq for e in logged] == list(range(1, 2 + len(changes)))
    # Each frame carries its own seq, and PATCH's project data the seq it was given.
    for event in logged:
        frame = orjson.loads(event.frame)
        assert frame["seq"] == event.seq
        if event.type == "project.updated":
            assert frame["data"]["seq"] == event.seq
    last = await db_scalars(server.settings, select(Project.last_seq).where(Project.id == pid))
    assert last == [len(logged)]


async def test_retention_keeps_the_newest_events(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(event_history=3)
    user = await create_user(server.settings, "alice")
    async with api(server, user) as client:
        pid = (await create_project(client))["id"]
        for i in range(5):
            await client.patch(f"/api/projects/{pid}", json={"description": str(i)})
        assert [e.seq for e in await events_of(server, pid)] == [4, 5, 6]
        project = (await client.get(f"/api/projects/{pid}")).json()
        assert project["seq"] == 6


async def test_a_failed_change_logs_no_event(
    server: ServerThread, alice_api: httpx.AsyncClient, bob_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    assert (await upload(alice_api, pid, "a.txt")).status_code == 201
    await alice_api.post(f"/api/projects/{pid}/members", json={"username": "bob"})
    # Refused at the database (unique constraint), by permission, or by validation.
    assert (await upload(alice_api, pid, "a.txt")).status_code == 409
    assert (await bob_api.delete(f"/api/projects/{pid}")).status_code == 403
    assert (
        await bob_api.post(f"/api/projects/{pid}/members", json={"username": "bob"})
    ).status_code == 403
    assert (await alice_api.patch(f"/api/projects/{pid}", json={"name": ""})).status_code == 422
    # A file that is not there, or is another project's: the seq taken is given back.
    other = (await create_project(alice_api))["id"]
    elsewhere = (await upload(alice_api, other, "c.txt")).json()["id"]
    for file_id in ("0" * 32, elsewhere):
        gone = await alice_api.delete(f"/api/projects/{pid}/files/{file_id}")
        assert gone.status_code == 404 and gone.json() == {"detail": "file not found"}
    kept = (await alice_api.get(f"/api/projects/{other}/files")).json()
    assert [f["id"] for f in kept["items"]] == [elsewhere]
    assert [e.seq for e in await events_of(server, pid)] == [1, 2, 3]
    # The next change takes the next number: no gap where the failures were.
    assert (await upload(alice_api, pid, "b.txt")).status_code == 201
    assert [e.seq for e in await events_of(server, pid)] == [1, 2, 3, 4]


# -- EventLog against the database directly ----------------------------------------------


class RecordingBroker:
    """A broker that keeps what is published (the database stays real)."""

    def __init__(self) -> None:
        self.published: list[Envelope] = []

    async def connect(self) -> None:
        pass

    async def disconnect(self) -> None:
        pass

    async def publish(self, channel: str, message: bytes) -> None:
        self.published.append(Envelope.decode(message))

    async def subscribe(self, channel: str, on_resubscribed: Any = None) -> Any:
        raise NotImplementedError  # the event log only publishes


async def test_event_is_published_only_after_commit(log_db: tuple[Database, str, str]) -> None:
    db, pid, owner = log_db
    broker = RecordingBroker()
    log = EventLog(db, broker, history=100, channel="test")
    async with db.write() as session:
        seq = await log.record(session, pid, FILE_UPLOADED, {"file": {}}, audience=["u1"])
        assert broker.published == []  # not yet durable
    assert seq == 1
    (envelope,) = broker.published
    assert (envelope.type, envelope.project_id, envelope.seq) == (FILE_UPLOADED, pid, 1)
    assert envelope.audience == ("u1",)
    (logged,) = await log.read_after(pid, 0, 10)
    assert logged.frame.encode() == envelope.frame
    assert await log.bounds(pid, owner) == (1, 1)
    assert await log.bounds(pid, "a-stranger") is None  # invisible looks like missing
    assert await log.heads([pid, "missing"]) == {pid: 1}


async def test_a_long_history_is_trimmed_at_every_hundredth_of_it(
    log_db: tuple[Database, str, str],
) -> None:
    """With 300 events kept, the log is trimmed back to 300 at every third seq: it holds
    300 to 302, the newest ones, with no gap."""
    db, pid, owner = log_db
    log = EventLog(db, RecordingBroker(), history=300, channel="test")

    async def held() -> list[int]:
        return [e.seq for e in await log.read_after(pid, 0, 1000)]

    for seq in range(1, 306):
        async with db.write() as session:
            await log.record(session, pid, FILE_UPLOADED, {"file": {}})
        if seq in (300, 301, 303):  # 301 is not a third: nothing trimmed yet
            assert await held() == list(range(log.oldest_kept(seq), seq + 1))
    assert log.oldest_kept(300) == log.oldest_kept(301) == 1
    assert log.oldest_kept(303) == 4
    assert await held() == list(range(4, 306))  # trimmed at 303, not at 304 or 305
    assert await log.bounds(pid, owner) == (4, 305)
    assert log.oldest_kept(305) == 4


class DownBroker(RecordingBroker):
    async def publish(self, channel: str, message: bytes) -> None:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


async def test_a_failed_publish_keeps_the_change_and_says_so_in_one_line(
    log_db: tuple[Database, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    db, pid, _ = log_db
    log = EventLog(db, DownBroker(), history=100, channel="test")
    async with db.write() as session:
        seq = await log.record(session, pid, FILE_UPLOADED, {"file": {}})
    assert [e.seq for e in await log.read_after(pid, 0, 10)] == [seq]
    (record,) = [r for r in caplog.records if r.name.startswith("tidings")]
    assert record.levelname == "WARNING" and record.exc_info is None
    assert f"event 1 of project {pid} not published (ConnectionError: " in record.getMessage()


async def test_a_failed_control_message_after_its_commit_is_one_line_too(
    log_db: tuple[Database, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A member removal or a revocation while Redis is down: one line each that says
    what the loss costs, not a traceback per change."""
    db, _, _ = log_db
    log = EventLog(db, DownBroker(), history=100, channel="test")
    async with db.write() as session:
        after_commit(session, lambda: log.publish_control(MEMBER_REMOVED, {"user_id": "u"}))
    (record,) = [r for r in caplog.records if r.name.startswith("tidings")]
    assert record.levelname == "WARNING" and record.exc_info is None
    message = record.getMessage()
    assert message.startswith(f"{MEMBER_REMOVED} {{'user_id': 'u'}} not published (ConnectionError")
    assert "the removal's own event still ends" in message


async def test_a_rolled_back_change_leaves_no_event(log_db: tuple[Database, str, str]) -> None:
    db, pid, owner = log_db
    broker = RecordingBroker()
    log = EventLog(db, broker, history=100, channel="test")
    with pytest.raises(RuntimeError, match="change failed"):
        async with db.write() as session:
            await log.record(session, pid, FILE_UPLOADED, {"file": {}})
            raise RuntimeError("change failed")
    assert broker.published == []
    assert await log.read_after(pid, 0, 10) == []
    assert await log.bounds(pid, owner) == (1, 0)  # empty log, latest seq still 0
    async with db.write() as session:
        assert await log.record(session, pid, FILE_UPLOADED, {"file": {}}) == 1


async def test_body_may_depend_on_the_seq(log_db: tuple[Database, str, str]) -> None:
    db, pid, owner = log_db
    log = EventLog(db, RecordingBroker(), history=2, channel="test")

    def body(seq: int) -> dict[str, Any]:
        return {"data": {"seen": seq}}

    async with db.write() as session:
        for _ in range(3):
            await log.record(session, pid, "project.updated", body)
    events = await log.read_after(pid, 0, 10)
    assert [e.seq for e in events] == [2, 3]
    assert orjson.loads(events[-1].frame)["data"] == {"seen": 3}
    assert await log.bounds(pid, owner) == (2, 3)


async def test_recording_for_a_missing_project_fails(log_db: tuple[Database, str, str]) -> None:
    db, _, owner = log_db
    log = EventLog(db, RecordingBroker(), history=10, channel="test")
    with pytest.raises(LookupError):
        async with db.write() as session:
            await log.record(session, "no-such-project", FILE_UPLOADED, {})
    assert await log.bounds("no-such-project", owner) is None


@on_stacks("postgres-redis")
async def test_a_read_cancelled_while_it_waits_leaves_its_connection_usable(
    log_db: tuple[Database, str, str], database_url: str
) -> None:
    """The chaos suite saw "cannot switch to state 12; another operation is in progress"
    from asyncpg after replays were cancelled (docs/reliability.md, defect 9). One way it
    could happen is a read cancelled while it waits inside PostgreSQL: that leaves its
    pooled connection usable. One pooled connection, so the next read gets the same."""
    db, pid, owner = log_db
    log = EventLog(db, RecordingBroker(), 1000, "c")
    async with db.write() as session:
        await log.record(session, pid, PROJECT_CREATED, {})
    single = Database(create_async_engine(database_url, pool_size=1, max_overflow=0))
    locker = Database(create_engine(database_url))
    reader = EventLog(single, RecordingBroker(), 1000, "c")
    try:
        async with locker.write() as session:
            # An exclusive lock makes the read wait inside PostgreSQL, at a known point.
            await session.execute(text("LOCK TABLE events IN ACCESS EXCLUSIVE MODE"))
            read = asyncio.create_task(reader.read_visible_after(pid, owner, 0, 10))
            async with asyncio.timeout(TIMEOUT):
                while not await _lock_waiters(locker):
                    await asyncio.sleep(0.02)
            read.cancel()
            with pytest.raises(asyncio.CancelledError):
                await read
        page = await asyncio.wait_for(reader.read_visible_after(pid, owner, 0, 10), TIMEOUT)
        assert page is not None and [e.seq for e in page] == [1]
    finally:
        await single.dispose()
        await locker.dispose()


async def _lock_waiters(db: Database) -> bool:
    """Whether a statement waits for a lock (asked in a transaction of its own: one that
    holds the lock would read the same statistics snapshot every time)."""
    async with db.read() as session:
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


async def test_replay_pages_read_at_once_are_one_batch_with_each_readers_answer(
    database_url: str,
) -> None:
    """Replays that read together (clients back at once after a restart) share one
    snapshot; each still gets exactly ``read_visible_after``'s answer: its page, None for
    a user who cannot see the project, the log of a deleted project; and readers of the
    same page each get a list of their own."""
    db = Database(create_engine(database_url))
    await migrate(db.engine)
    log = EventLog(db, MemoryBroker(), 100, "nowhere")
    try:
        async with db.write() as session:
            owner, member, other = (User(username=n, password_hash="-") for n in "abc")
            session.add_all([owner, member, other])
            await session.flush()
            busy, quiet = (Project(name=n, owner_id=owner.id, last_seq=0) for n in ("b", "q"))
            session.add_all([busy, quiet])
            await session.flush()
            session.add(Member(project_id=busy.id, user_id=member.id))
            for i in range(5):
                await log.record(session, busy.id, FILE_UPLOADED, {"n": i})
            await log.record(session, quiet.id, PROJECT_CREATED, {"data": {}})
        ghost = "0" * 32  # no such project (any more): its log is read, empty here
        asked = [
            (busy.id, owner.id, 2, 100, None),
            (busy.id, member.id, 2, 100, None),
            (busy.id, other.id, 2, 100, None),
            (busy.id, member.id, 0, 2, None),
            (quiet.id, member.id, 0, 100, None),
            (quiet.id, owner.id, 0, 100, None),
            (ghost, owner.id, 0, 100, None),
        ]
        pages = await asyncio.gather(*(log.read_visible_after(*a) for a in asked))
        seqs = [None if page is None else [e.seq for e in page] for page in pages]
        assert seqs == [[3, 4, 5], [3, 4, 5], None, [1, 2], None, [1], []]
        assert pages[0] is not pages[1]
        assert log.pages.queries == 1
        alone = await log.read_visible_after(busy.id, other.id, 0, 100, None)
        assert alone is None and log.pages.queries == 2
    finally:
        await db.dispose()


async def test_readers_of_one_page_with_different_room_share_one_read(
    log_db: tuple[Database, str, str],
) -> None:
    """After a restart every client replays the same few pages, but each has its own room
    in its queue: the page is read once, and cut to each reader's room (always at least
    one event, as a page read alone). A later batch takes it from memory, unless the
    project has been deleted since (its log is its tombstone now)."""
    db, pid, owner = log_db
    log = EventLog(db, MemoryBroker(), 100, "nowhere")
    async with db.write() as session:
        for i in range(5):
            await log.record(session, pid, FILE_UPLOADED, {"n": i})
    size = len((await log.read_after(pid, 0, 1))[0].frame)
    budgets = [1, 2 * size, 3 * size - 1, size]
    asked = [(pid, owner, 0, 100, budget) for budget in budgets]
    pages = await asyncio.gather(*(log.read_visible_after(*a) for a in asked))
    seqs = [None if page is None else [e.seq for e in page] for page in pages]
    assert seqs == [[1], [1, 2], [1, 2], [1]]
    assert (log.pages.queries, log.pages.pages) == (1, 1)
    for budget, page in zip(budgets, pages, strict=True):
        assert page == await log.read_after(pid, 0, 100, budget)  # as alone
    later = await log.read_visible_after(pid, owner, 0, 100, 4 * size)
    assert [e.seq for e in later or []] == [1, 2, 3, 4]
    assert (log.pages.queries, log.pages.pages) == (2, 1)  # from memory
    async with db.write() as session:
        seq = await log.record(session, pid, PROJECT_DELETED, {})
        await log.forget_project(session, pid, keep_from=seq)
        await session.execute(delete(Project).where(Project.id == pid))
    gone = await log.read_visible_after(pid, "someone else", 0, 100, 4 * size)
    assert [e.seq for e in gone or []] == [seq]
    assert log.pages.pages == 2
