"""hub.py with a real event log and broker, driven step by step on the test's own loop.

The socket here only records what the hub writes: these tests pin down interleavings that
real clients can hit only by chance (the sockets themselves are tested over TCP elsewhere).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import delete, update

from tests.conftest import TIMEOUT, eventually
from tidings import hub as hub_module
from tidings.auth import Authenticator
from tidings.broker.memory import MemoryBroker
from tidings.connection import Connection
from tidings.db import Database, create_engine, migrate
from tidings.events import PROJECT_CREATED, PROJECT_UPDATED, Envelope, EventLog
from tidings.frames import Frame
from tidings.hub import LARGE_FLUSH, Channel, Expiries, Hub
from tidings.messages import ClientMessages
from tidings.metrics import Metrics
from tidings.models import ApiToken, File, Member, Project, User, utcnow


class RecordingSocket:
    """Takes every write at once and keeps the messages, in order."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.closed: int | None = None

    async def send(self, frames: list[Frame], batch: bool) -> None:
        self.write_nowait(frames, batch)

    def writable(self) -> bool:
        return True

    def write_nowait(self, frames: list[Frame], batch: bool) -> None:
        self.messages += [orjson.loads(f.text) for f in frames]

    async def close(self, code: int, reason: str) -> None:
        self.closed = code

    def abort(self) -> None:
        pass


class World:
    def __init__(self, db: Database, hub: Hub, user_id: str) -> None:
        self.db = db
        self.hub = hub
        self.user_id = user_id
        # Logs without publishing: the test hands envelopes to the hub itself, when it wants.
        self.log = EventLog(db, MemoryBroker(), 10_000, "nowhere")

    async def project(self) -> str:
        async with self.db.write() as session:
            project = Project(name="p", owner_id=self.user_id, last_seq=0)
            session.add(project)
            await session.flush()
            await self.log.record(session, project.id, PROJECT_CREATED, {"data": {}})
        return project.id

    async def change(self, project_id: str, count: int, history: int = 10_000) -> list[Envelope]:
        """Commit ``count`` project updates, keeping ``history`` events in the log; return
        the envelopes, unpublished."""
        envelopes = []
        self.log.history = history
        for i in range(count):
            async with self.db.write() as session:
                seq = await self.log.record(session, project_id, PROJECT_UPDATED, {"n": i})
            [event] = await self.log.read_after(project_id, seq - 1, 1)
            envelopes.append(
                Envelope(
                    type=PROJECT_UPDATED,
                    frame=event.frame.encode(),
                    project_id=project_id,
                    seq=seq,
                    audience=(self.user_id,),
                )
            )
        return envelopes

    async def user(self, username: str) -> str:
        async with self.db.write() as session:
            user = User(username=username, password_hash="-")
            session.add(user)
        return user.id

    async def add_member(self, project_id: str, user_id: str) -> None:
        async with self.db.write() as session:
            session.add(Member(project_id=project_id, user_id=user_id))
            await self.log.record(session, project_id, PROJECT_UPDATED, {"n": "added"})

    async def remove_member(self, project_id: str, user_id: str) -> int:
        """Remove the member and log the change (unpublished); return its seq."""
        async with self.db.write() as session:
            await session.execute(
                delete(Member).where(Member.project_id == project_id, Member.user_id == user_id)
            )
            return await self.log.record(
                session, project_id, PROJECT_UPDATED, {"n": "removed"}, revoked=(user_id,)
            )

    async def files(self, project_id: str, count: int) -> None:
        """Add ``count`` files with long names (no events: the snapshot reads the table)."""
        async with self.db.write() as session:
            for i in range(count):
                name = f"{i:03}-{'n' * 100}.txt"
                session.add(
                    File(
                        project_id=project_id,
                        name=name,
                        path="/",
                        size=1,
                        content_type="text/plain",
                        asset_type="document",
                        sha256="0" * 64,
                    )
                )

    def connection(
        self,
        socket: RecordingSocket,
        max_queue_bytes: int = 1 << 20,
        client_id: str = "c1",
        user_id: str | None = None,
    ) -> Connection:
        conn = Connection(
            client_id=client_id,
            user_id=user_id or self.user_id,
            username="alice",
            credential="token:t",
            socket=socket,
            owner=self.hub,
            messages=ClientMessages(max_message_bytes=65536, rate=1000, burst=1000, now=0),
            max_subscriptions=10,
            max_queue_messages=1000,
            max_queue_bytes=max_queue_bytes,
            close_timeout=1,
        )
        self.hub.register(conn)
        return conn


@asynccontextmanager
async def built_world(
    tmp_path: Path, options: Callable[[Database], dict[str, Any]] = lambda db: {}
) -> AsyncIterator[World]:
    """A started hub on a fresh database with one user; ``options``: more of the hub's
    keyword arguments, given the database."""
    db = Database(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"))
    await migrate(db.engine)
    async with db.write() as session:
        user = User(username="alice", password_hash="-")
        session.add(user)
    hub = Hub(
        EventLog(db, MemoryBroker(), 10_000, "hub"),
        Metrics(),
        heartbeat_interval=3600,
        head_sync_interval=3600,
        **options(db),
    )
    await hub.start()
    try:
        yield World(db, hub, user.id)
    finally:
        await hub.stop()
        await db.dispose()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with built_world(tmp_path) as world:
        yield world


def _brief(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": m["type"], "seq": m.get("seq")} for m in messages]


def subscribe(project_id: str, since: int | None = None, snapshot: bool = False) -> str:
    message: dict[str, Any] = {"type": "subscribe", "project_id": project_id}
    if since is not None:
        message["since"] = since
    if snapshot:
        message["snapshot"] = True
    return orjson.dumps(message).decode()


async def test_project_events_wait_for_a_queued_subscribe(world: World) -> None:
    """The client resubscribes to several projects after a reconnect; the last one's
    subscribe still waits behind the others while that project changes. Its events must
    not reach the connection through the project-list (audience) path before its
    `subscribed`, then arrive again through the replay: that broke per-connection order,
    and the client, whose cursor had moved on, dropped the replay as duplicates."""
    first, second, watched = [await world.project() for _ in range(3)]
    changes = await world.change(watched, 5)  # seq 2..6, committed, not yet delivered
    socket = RecordingSocket()
    conn = world.connection(socket)
    for raw in (subscribe(first), subscribe(second), subscribe(watched, since=1)):
        conn.receive(raw)  # the first subscribe runs; the others wait in order
    for envelope in changes:  # the broker delivers the changes meanwhile
        world.hub.fan_out(envelope)
    await conn.idle()
    await eventually(lambda: {"type": PROJECT_UPDATED, "seq": 6} in _brief(socket.messages))

    about = [m for m in socket.messages if m.get("project_id") == watched]
    assert about[0]["type"] == "subscribed" and about[0]["recovered"] is True
    assert [m["seq"] for m in about[1:]] == [2, 3, 4, 5, 6]


async def test_an_event_a_replay_read_first_still_reaches_the_live_subscribers(
    world: World,
) -> None:
    """Found by the chaos suite (tests/chaos.py): a replay read from the log an event whose
    broker message was lost (its node was killed after the commit, or Redis was down) and
    raised the channel's head to it; head sync then saw nothing new, and the subscribers
    already live on the node never got it, nor anything else until the next change. Now a
    replay that reads past the channel's head sends the live subscriptions behind it to
    the log (head sync is off here)."""
    watched = await world.project()
    live_socket = RecordingSocket()
    live = world.connection(live_socket, client_id="live")
    live.receive(subscribe(watched))
    await live.idle()
    assert live_socket.messages[-1]["type"] == "subscribed"
    second, _ = await world.change(watched, 2)  # seq 2 and 3: only 2 is published
    world.hub.fan_out(second)
    await eventually(lambda: live_socket.messages[-1].get("seq") == 2)
    # A client resumes from the start: its replay reads 1..3 from the log (the memory
    # tail starts at 2), so this node learns of seq 3 from the log, not from the broker.
    late_socket = RecordingSocket()
    late = world.connection(late_socket, client_id="late")
    late.receive(subscribe(watched, since=0))
    await late.idle()
    await eventually(lambda: late_socket.messages[-1].get("seq") == 3)
    await eventually(lambda: live_socket.messages[-1].get("seq") == 3)
    assert [m.get("seq") for m in live_socket.messages[1:]] == [2, 3]


async def test_a_removal_this_node_never_heard_of_is_not_bypassed_from_memory(
    world: World,
) -> None:
    """Found by the chaos suite (tests/chaos.py, a soak: 62 events leaked to a guest). A
    guest removed while this node missed the removal's broker message (its publisher
    killed, Redis down) came back with `since` = the removal's seq, which it had received
    elsewhere: the node still remembered the guest's grant, answered the subscribe from
    memory and replayed the events after the removal from its memory tail, checking
    nothing. Now a node that learns it missed events of a project (a gap in the broker's
    messages, a head sync, a log read ahead of it) forgets the grants to that project."""
    watched = await world.project()
    guest_id = await world.user("bob")
    await world.add_member(watched, guest_id)
    owner_socket, guest_socket = RecordingSocket(), RecordingSocket()
    owner = world.connection(owner_socket, client_id="owner")
    guest = world.connection(guest_socket, client_id="guest", user_id=guest_id)
    for conn in (owner, guest):
        conn.receive(subscribe(watched))
        await conn.idle()
    removal = await world.remove_member(watched, guest_id)  # its broker message is lost
    [after] = await world.change(watched, 1)
    world.hub.fan_out(after)  # the next change arrives: the guest's replay finds no access
    await eventually(lambda: guest_socket.messages[-1].get("reason") == "access_revoked")
    # The guest had the removal's event from elsewhere and resumes right after it here.
    back_socket = RecordingSocket()
    back = world.connection(back_socket, client_id="back", user_id=guest_id)
    back.receive(subscribe(watched, since=removal))
    await back.idle()
    await eventually(lambda: bool(back_socket.messages))
    assert [m["type"] for m in back_socket.messages] == ["error"]
    assert back_socket.messages[0]["code"] == "not_found"
    assert after.seq not in [m.get("seq") for m in back_socket.messages]


async def test_a_grant_read_before_a_removal_this_node_missed_is_not_trusted(
    world: World,
) -> None:
    """Defect 10 (the chaos suite: events between a guest's removal and their next
    addition). A subscribe's database read saw the guest still a member; before it
    finished, the guest was removed (the broker lost that message) and the next change
    reached the node. The channel, not yet synced (its first read still running), took
    that change without treating the gap as news, so the node kept the old read's grant;
    the subscriber left before any replay could find access gone. A later subscribe of the
    guest, resuming right after the removal, was answered from memory and replayed from
    the memory tail. Now a grant remembers the seq it was read at, and is trusted only
    while the node has seen every event of the project since."""
    watched = await world.project()
    guest_id = await world.user("bob")
    await world.add_member(watched, guest_id)  # seq 2
    read = world.hub.bounds.read
    reading, release = asyncio.Event(), asyncio.Event()

    async def held(project_id: str, user_id: str) -> tuple[int, int] | None:
        answer = await read(project_id, user_id)  # read now: the guest is a member
        reading.set()
        await release.wait()
        return answer

    world.hub.bounds.read = held  # type: ignore[method-assign]
    first = world.connection(RecordingSocket(), client_id="first", user_id=guest_id)
    first.receive(subscribe(watched))
    await asyncio.wait_for(reading.wait(), TIMEOUT)
    removal = await world.remove_member(watched, guest_id)  # seq 3: its message is lost
    [after] = await world.change(watched, 1)  # seq 4 reaches the node
    world.hub.fan_out(after)
    reading.clear()
    owner = world.connection(RecordingSocket(), client_id="owner")  # keeps the channel
    owner.receive(subscribe(watched))
    await asyncio.wait_for(reading.wait(), TIMEOUT)
    world.hub.disconnected(first, 1006)  # the guest's subscriber leaves before any replay
    world.hub.bounds.read = read  # type: ignore[method-assign]
    release.set()
    await first.idle()
    await owner.idle()
    [later] = await world.change(watched, 1)  # seq 5: no gap, the channel is synced now
    world.hub.fan_out(later)
    # The guest had the removal's event from elsewhere and resumes right after it here.
    back_socket = RecordingSocket()
    back = world.connection(back_socket, client_id="back", user_id=guest_id)
    back.receive(subscribe(watched, since=removal))
    await back.idle()
    await eventually(lambda: bool(back_socket.messages))
    assert [m.get("seq") for m in back_socket.messages if m["type"] == PROJECT_UPDATED] == []
    assert [(m["type"], m.get("code")) for m in back_socket.messages] == [("error", "not_found")]


async def test_audience_events_reach_a_connection_without_a_subscription(world: World) -> None:
    watched = await world.project()
    [change] = await world.change(watched, 1)
    socket = RecordingSocket()
    world.connection(socket)
    world.hub.fan_out(change)
    await eventually(lambda: bool(socket.messages), TIMEOUT)
    assert [(m["type"], m["seq"]) for m in socket.messages] == [(PROJECT_UPDATED, 2)]


async def test_replay_that_falls_behind_retention_restarts_unrecovered(world: World) -> None:
    watched = await world.project()
    socket = RecordingSocket()
    conn = world.connection(socket)
    conn.receive(subscribe(watched))
    await conn.idle()
    assert socket.messages[-1]["type"] == "subscribed" and socket.messages[-1]["seq"] == 1
    # Four changes, of which only the last reaches this node, and the log keeps only two:
    # the replay that the gap starts finds the log beginning past its cursor.
    changes = await world.change(watched, 4, history=2)  # seq 2..5; the log keeps 4..5
    world.hub.fan_out(changes[-1])
    await eventually(lambda: len(socket.messages) > 1)
    restart = socket.messages[-1]
    assert (restart["recovered"], restart["seq"]) == (False, 5)
    assert [m["type"] for m in socket.messages] == ["subscribed", "subscribed"]
    # And it is live again from there.
    [later] = await world.change(watched, 1)
    world.hub.fan_out(later)
    await eventually(lambda: socket.messages[-1].get("seq") == 6)


async def test_a_restart_past_retention_sends_the_snapshot_the_subscribe_asked_for(
    world: World,
) -> None:
    watched = await world.project()
    socket = RecordingSocket()
    conn = world.connection(socket)
    conn.receive(subscribe(watched, snapshot=True))
    await conn.idle()
    assert socket.messages[-1]["snapshot"]["project"]["id"] == watched
    changes = await world.change(watched, 4, history=2)  # the log keeps 4..5 of 2..5
    await world.files(watched, 2)
    world.hub.fan_out(changes[-1])
    await eventually(lambda: len(socket.messages) > 1)
    restart = socket.messages[-1]
    assert (restart["recovered"], restart["seq"]) == (False, 5)
    assert len(restart["snapshot"]["files"]) == 2  # the state at seq 5


class HeldSocket(RecordingSocket):
    """Takes nothing until ``release``: the client has stopped reading."""

    def __init__(self) -> None:
        super().__init__()
        self.released = asyncio.Event()

    def writable(self) -> bool:
        return self.released.is_set()

    async def send(self, frames: list[Frame], batch: bool) -> None:
        await self.released.wait()
        self.write_nowait(frames, batch)


async def test_snapshots_wait_for_room_instead_of_overflowing_the_queue(world: World) -> None:
    """A client resubscribes to several projects at once, each with a snapshot that takes
    most of its queue: they are paced by what it reads, not closed as a slow consumer."""
    projects = [await world.project() for _ in range(4)]
    for project_id in projects:
        await world.files(project_id, 9)  # about 3.2 KB of snapshot each
    socket = HeldSocket()
    conn = world.connection(socket, max_queue_bytes=8192)
    for project_id in projects:
        conn.receive(subscribe(project_id, snapshot=True))
    # The first is on its way (the writer holds it), the second waits in the queue; the
    # third would still fit the queue, the fourth not: both wait for the client to read.
    await eventually(lambda: conn.queue.count == 1)
    assert 3000 < conn.queue.nbytes < 4000
    assert conn.open and conn.subs[projects[2]].state.value == "pending"
    socket.released.set()
    await conn.idle()
    await eventually(lambda: len(socket.messages) == 4)
    assert [m["project_id"] for m in socket.messages] == projects
    assert all(len(m["snapshot"]["files"]) == 9 for m in socket.messages)
    assert socket.closed is None and conn.open


def test_expiries_report_each_credential_once_when_due() -> None:
    expiries = Expiries()
    expiries.add("a", 10.0)
    expiries.add("b", 5.0)
    expiries.add("c", 7.0)
    assert expiries.due(4.0) == []
    assert expiries.due(7.0) == ["b", "c"]
    assert expiries.due(7.0) == []
    expiries.discard("a")  # its last connection left
    assert expiries.due(11.0) == []
    expiries.add("a", 12.0)  # it came back, expiring later
    expiries.add("a", 20.0)  # and again: only the newest expiry counts
    assert expiries.due(15.0) == []
    assert expiries.due(20.0) == ["a"]


def test_expiries_compact_what_left() -> None:
    expiries = Expiries()
    for i in range(1000):
        expiries.add(f"c{i}", 100.0 + i)
        expiries.discard(f"c{i}")
    expiries.add("kept", 50.0)
    assert len(expiries) == 1 and expiries.pending() <= 2 * len(expiries) + 64
    assert expiries.due(2000.0) == ["kept"]


async def test_head_sync_while_the_database_is_down_is_a_line_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A PostgreSQL restart fails every head sync of every node until it is back: one
    warning line each, not a traceback (which stays for anything else)."""
    db = Database(create_engine("postgresql+asyncpg://tidings@127.0.0.1:1/nowhere"))
    hub = Hub(
        EventLog(db, MemoryBroker(), 10_000, "hub"),
        Metrics(),
        heartbeat_interval=3600,
        head_sync_interval=0.05,
    )
    hub.channels["p"] = Channel()  # a project with subscribers, as far as head sync cares
    await hub.start()
    try:
        await eventually(lambda: any("head sync failed" in r.getMessage() for r in caplog.records))
    finally:
        await hub.stop()
        await db.dispose()
    failed = [r for r in caplog.records if "head sync failed" in r.getMessage()]
    assert all(r.levelname == "WARNING" and r.exc_info is None for r in failed)


@pytest.mark.parametrize("resubscribed", [True, False], ids=["resubscribed", "periodic"])
async def test_a_revocation_the_broker_lost_still_closes_the_sockets(
    tmp_path: Path, resubscribed: bool
) -> None:
    """The revocation's control message never reached this node (Redis was down as it was
    published): when the node learns it may have missed messages (its broker
    subscription came back), or at its next periodic check, it asks the database about
    the credentials of its open connections and closes the revoked ones' with 4401."""

    def checked(db: Database) -> dict[str, Any]:
        return {
            "revoked_among": Authenticator(db).revoked_among,
            "credential_check_interval": 3600 if resubscribed else 0.2,
        }

    async with built_world(tmp_path, checked) as world:
        async with world.db.write() as session:
            tokens = [ApiToken(secret_hash=f"{i:064}", user_id=world.user_id) for i in range(2)]
            session.add_all(tokens)
        revoked_socket, kept_socket = RecordingSocket(), RecordingSocket()
        revoked = world.connection(revoked_socket, client_id="revoked")
        kept = world.connection(kept_socket, client_id="kept")
        for conn, token in ((revoked, tokens[0]), (kept, tokens[1])):
            world.hub._unregister(conn)
            conn.credential = f"token:{token.id}"
            world.hub.register(conn)  # indexed under its own token
        async with world.db.write() as session:  # revoked, and no broker message at all
            await session.execute(
                update(ApiToken).where(ApiToken.id == tokens[0].id).values(revoked_at=utcnow())
            )
        if resubscribed:
            world.hub._maybe_missed()  # the broker subscription is back: messages may be lost
        await eventually(lambda: revoked_socket.closed == 4401)
        assert kept_socket.closed is None and kept.open


class CountingSocket(RecordingSocket):
    """Also counts the writes: one per flush that had something for it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write_nowait(self, frames: list[Frame], batch: bool) -> None:
        self.writes += 1
        super().write_nowait(frames, batch)


async def test_after_a_large_fan_out_the_next_events_leave_together(tmp_path: Path) -> None:
    """Each change committed on its own used to cost every subscriber a write of its own:
    after a flush to many connections, the next waits a little (here 1 s, to be sure of
    it on any machine), and what arrives meanwhile leaves in one write each."""
    async with built_world(tmp_path, lambda db: {"flush_spacing": 1.0}) as world:
        watched = await world.project()
        sockets = [CountingSocket() for _ in range(LARGE_FLUSH)]
        for n, socket in enumerate(sockets):
            conn = world.connection(socket, client_id=f"c{n}")
            conn.receive(subscribe(watched))
            await conn.idle()
        first, second, third = await world.change(watched, 3)
        await asyncio.sleep(1.5)  # whatever flushes the subscribes caused are over
        before = [s.writes for s in sockets]
        world.hub.fan_out(first)  # a large flush, at once
        await eventually(lambda: all(s.messages[-1].get("seq") == 2 for s in sockets))
        world.hub.fan_out(second)
        await asyncio.sleep(0)  # the next loop iteration: it waits all the same
        world.hub.fan_out(third)
        await eventually(lambda: all(s.messages[-1].get("seq") == 4 for s in sockets))
        assert [s.writes - b for s, b in zip(sockets, before, strict=True)] == [2] * len(sockets)


def presence_joined(project_id: str, user_id: str) -> Envelope:
    user = {"id": user_id, "username": user_id}
    body = {"type": "presence.joined", "project_id": project_id, "user": user}
    return Envelope(type="presence.joined", frame=orjson.dumps(body), project_id=project_id)


async def test_presence_changes_wait_for_company_and_take_no_event_with_them(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When clients come back together every arrival is a presence change for each viewer
    of its project: alone in a queue, a change waits (``PRESENCE_WAIT``) and the ones that
    join it leave in the same write. An event queued behind a waiting change is written at
    once and takes it along, in order: events never wait for presence."""
    project_id = await world.project()
    sockets = [CountingSocket() for _ in range(3)]
    for n, socket in enumerate(sockets):
        conn = world.connection(socket, client_id=f"c{n}")
        conn.receive(subscribe(project_id))
        await conn.idle()
    [change] = await world.change(project_id, 1)

    def joined(socket: RecordingSocket) -> list[str]:
        return [m["user"]["id"] for m in socket.messages if m["type"] == "presence.joined"]

    monkeypatch.setattr(hub_module, "PRESENCE_WAIT", 2.0)
    before = [s.writes for s in sockets]
    for n in range(5):
        world.hub.fan_out_presence(presence_joined(project_id, f"u{n}"))
        await asyncio.sleep(0.01)
    await eventually(lambda: all(len(joined(s)) == 5 for s in sockets))
    assert [s.writes - b for s, b in zip(sockets, before, strict=True)] == [1, 1, 1]

    monkeypatch.setattr(hub_module, "PRESENCE_WAIT", 60.0)  # longer than any test waits
    world.hub.fan_out_presence(presence_joined(project_id, "late"))
    world.hub.fan_out(change)
    await eventually(lambda: all(s.messages[-1].get("seq") == 2 for s in sockets))
    for socket in sockets:
        assert joined(socket)[-1] == "late"  # taken along, before the event
        assert socket.messages[-2]["type"] == "presence.joined"


async def test_subscribes_answered_by_one_read_catch_their_channel_up_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a restart every client of a project comes back at once, and one batched read
    tells all of them of events the node never got from the broker. The channel is caught
    up once, not once per subscribe going through all of its subscribers (10,000 clients
    on 100 projects: a million checks, a second of the restart's catch-up)."""
    project_id = await world.project()
    await world.change(project_id, 5)  # seq 2..6, in the log, never published
    catch_ups: list[int] = []
    catch_up = world.hub._catch_up

    def counted(project_id: str, channel: Channel, head: int) -> None:
        catch_ups.append(head)
        catch_up(project_id, channel, head)

    monkeypatch.setattr(world.hub, "_catch_up", counted)
    sockets = [RecordingSocket() for _ in range(50)]
    conns = [world.connection(s, client_id=f"c{i}") for i, s in enumerate(sockets)]
    for conn in conns:
        conn.receive(subscribe(project_id, since=1))
    for conn in conns:
        await conn.idle()
    for socket in sockets:
        await eventually(lambda s=socket: len(s.messages) == 6)
        updates = [m["seq"] for m in socket.messages if m["type"] == PROJECT_UPDATED]
        assert updates == [2, 3, 4, 5, 6]
    assert catch_ups == [6]
