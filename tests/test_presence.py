"""Presence (``presence.py``): who views a project, on one node, across nodes, and after a
node dies; what members and non-members receive; the REST list."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.conftest import (
    TIMEOUT,
    ServerThread,
    TestUser,
    api,
    connected,
    create_project,
    create_user,
    eventually,
    on_stacks,
    send,
    serve,
)
from tidings import Settings
from tidings.broker import Viewer
from tidings.broker.memory import MemoryBroker, MemoryPresence
from tidings.db import Database, create_engine
from tidings.events import Envelope, EventLog
from tidings.presence import Presence


class Watcher:
    """Every message one socket receives, recorded by a background reader."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.messages.append(orjson.loads(raw))
        except websockets.ConnectionClosed:
            pass

    def presence(self, project_id: str | None = None) -> list[tuple[str, str]]:
        """``(kind, username)`` of every presence message so far, in order."""
        return [
            (m["type"].removeprefix("presence."), m["user"]["username"])
            for m in self.messages
            if m["type"].startswith("presence.")
            and (project_id is None or m["project_id"] == project_id)
        ]

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        await eventually(lambda: any(predicate(m) for m in self.messages), TIMEOUT)
        return next(m for m in self.messages if predicate(m))

    async def subscribe(self, project_id: str) -> dict[str, Any]:
        await send(self.ws, {"type": "subscribe", "project_id": project_id})
        return await self.wait_for(
            lambda m: m["type"] in ("subscribed", "error") and m.get("project_id") == project_id
        )

    async def sync(self) -> None:
        """Return once the server has answered everything sent before."""
        marker = f"sync-{len(self.messages)}-{id(self)}"
        await send(self.ws, {"type": "ping", "id": marker})
        await self.wait_for(lambda m: m["type"] == "pong" and m.get("id") == marker)


async def watch(server: ServerThread, user: TestUser) -> Watcher:
    return Watcher(await connected(server, user))


def names(viewers: list[dict[str, str]]) -> list[str]:
    return [v["username"] for v in viewers]


def user_ids(viewers: list[dict[str, str]]) -> set[str]:
    return {v["id"] for v in viewers}


async def shared_project(owner: httpx.AsyncClient, *members: str) -> str:
    pid = (await create_project(owner))["id"]
    for name in members:
        added = await owner.post(f"/api/projects/{pid}/members", json={"username": name})
        assert added.is_success, added.text
    return str(pid)


@pytest.fixture
async def users(server: ServerThread) -> tuple[TestUser, TestUser, TestUser]:
    return (
        await create_user(server.settings, "alice"),
        await create_user(server.settings, "bob"),
        await create_user(server.settings, "carol"),
    )


async def test_join_and_leave_on_one_node(server: ServerThread, users: Any) -> None:
    alice, bob, carol = users
    async with api(server, alice) as owner, api(server, carol) as outsider:
        pid = await shared_project(owner, "bob")
        a = await watch(server, alice)
        first = await a.subscribe(pid)
        assert first["presence"] == [{"id": alice.id, "username": "alice"}]

        b = await watch(server, bob)
        second = await b.subscribe(pid)
        assert names(second["presence"]) == ["alice", "bob"]
        joined = await a.wait_for(
            lambda m: m["type"] == "presence.joined" and m["user"]["id"] != alice.id
        )
        assert joined["project_id"] == pid and "seq" not in joined
        assert joined["user"] == {"id": bob.id, "username": "bob"}
        listed = await owner.get(f"/api/projects/{pid}/presence")
        assert listed.status_code == 200 and names(listed.json()) == ["alice", "bob"]
        assert (await outsider.get(f"/api/projects/{pid}/presence")).status_code == 404

        await send(b.ws, {"type": "unsubscribe", "project_id": pid})
        await a.wait_for(lambda m: m["type"] == "presence.left")
        # Alice's own arrival is in her `subscribed` list, not announced to her.
        assert a.presence(pid) == [("joined", "bob"), ("left", "bob")]
        assert b.presence(pid) == []  # alice was there before bob came
        assert names((await owner.get(f"/api/projects/{pid}/presence")).json()) == ["alice"]

        await b.subscribe(pid)  # and a closed connection leaves too
        await a.wait_for(lambda m: a.presence(pid).count(("joined", "bob")) == 2)
        await b.ws.close()
        await a.wait_for(lambda m: a.presence(pid).count(("left", "bob")) == 2)
        assert a.presence(pid)[-2:] == [("joined", "bob"), ("left", "bob")]


async def test_two_connections_of_one_user_join_once_and_leave_once(
    server: ServerThread, users: Any
) -> None:
    alice, bob, carol = users
    async with api(server, alice) as owner:
        pid = await shared_project(owner, "bob", "carol")
        a = await watch(server, alice)
        await a.subscribe(pid)
        b1, b2 = await watch(server, bob), await watch(server, bob)
        await b1.subscribe(pid)
        assert names((await b2.subscribe(pid))["presence"]) == ["alice", "bob"]
        await b1.ws.close()
        hub = server.services.hub
        await eventually(lambda: hub.connections_of(bob.id) == 1)
        # Carol's arrival is announced after anything the server made of b1 closing.
        c = await watch(server, carol)
        await c.subscribe(pid)
        await a.wait_for(lambda m: ("joined", "carol") in a.presence(pid))
        assert a.presence(pid) == [("joined", "bob"), ("joined", "carol")]
        await b2.ws.close()
        await a.wait_for(lambda m: ("left", "bob") in a.presence(pid))
        await c.wait_for(lambda m: ("left", "bob") in c.presence(pid))
        await a.sync()
        assert a.presence(pid).count(("left", "bob")) == 1
        assert a.presence(pid).count(("joined", "bob")) == 1
        assert ("joined", "bob") not in b2.presence(pid) + b1.presence(pid)


async def test_a_removed_member_leaves_and_non_members_hear_nothing(
    server: ServerThread, users: Any
) -> None:
    alice, bob, carol = users
    async with api(server, alice) as owner:
        pid = await shared_project(owner, "bob")
        a = await watch(server, alice)
        await a.subscribe(pid)
        c = await watch(server, carol)  # not a member: her subscribe is refused
        refused = await c.subscribe(pid)
        assert refused["type"] == "error" and refused["code"] == "not_found"
        b = await watch(server, bob)
        await b.subscribe(pid)
        await a.wait_for(lambda m: ("joined", "bob") in a.presence(pid))

        removed = await owner.delete(f"/api/projects/{pid}/members/bob")
        assert removed.is_success
        await b.wait_for(lambda m: m.get("reason") == "access_revoked")
        await a.wait_for(lambda m: ("left", "bob") in a.presence(pid))
        # Bob, no longer a member, is not told about the project's viewers any more.
        await b.sync()
        await c.sync()
        assert b.presence(pid) == []  # alice was there first; bob is not told about himself
        assert c.presence() == []
        listed = await owner.get(f"/api/projects/{pid}/presence")
        assert names(listed.json()) == ["alice"]


async def test_a_resuming_subscription_hears_presence_too(server: ServerThread, users: Any) -> None:
    """A subscribe with ``since`` (which replays the log) gets the list and the changes
    after it (delivery while still replaying: tests/test_delivery.py)."""
    alice, bob, _ = users
    async with api(server, alice) as owner:
        pid = await shared_project(owner, "bob")
        a = await watch(server, alice)
        await send(a.ws, {"type": "subscribe", "project_id": pid, "since": 0})
        reply = await a.wait_for(lambda m: m["type"] == "subscribed")
        b = await watch(server, bob)
        await b.subscribe(pid)
        await a.wait_for(lambda m: ("joined", "bob") in a.presence(pid))
        assert names(reply["presence"]) == ["alice"]


# -- several nodes ------------------------------------------------------------------------


@pytest.fixture
async def nodes(settings: Settings) -> AsyncIterator[tuple[ServerThread, ServerThread]]:
    """Two nodes on the test's database and Redis channel."""
    a, b = ServerThread(settings), ServerThread(settings)
    a.start()
    b.start()
    try:
        yield a, b
    finally:
        await a.stop_async()
        await b.stop_async()


@on_stacks("postgres-redis")
async def test_presence_across_two_nodes(nodes: tuple[ServerThread, ServerThread]) -> None:
    a_node, b_node = nodes
    alice = await create_user(a_node.settings, "alice")
    bob = await create_user(a_node.settings, "bob")
    async with api(a_node, alice) as owner, api(b_node, bob) as other:
        pid = await shared_project(owner, "bob")
        a = await watch(a_node, alice)
        await a.subscribe(pid)
        b = await watch(b_node, bob)
        assert names((await b.subscribe(pid))["presence"]) == ["alice", "bob"]
        await a.wait_for(lambda m: ("joined", "bob") in a.presence(pid))
        # A second socket of bob's, on the other node: nothing new to announce.
        b2 = await watch(a_node, bob)
        await b2.subscribe(pid)
        for client in (owner, other):
            listed = await client.get(f"/api/projects/{pid}/presence")
            assert user_ids(listed.json()) == {alice.id, bob.id}
        await b.ws.close()
        await eventually(lambda: b_node.services.hub.connections_of(bob.id) == 0)
        await b2.ws.close()
        await a.wait_for(lambda m: ("left", "bob") in a.presence(pid))
        await a.sync()
        assert a.presence(pid) == [("joined", "bob"), ("left", "bob")]
        listed = await other.get(f"/api/projects/{pid}/presence")
        assert user_ids(listed.json()) == {alice.id}


@on_stacks("postgres-redis")
async def test_a_killed_nodes_viewers_leave(
    make_server: Callable[..., ServerThread], settings: Settings, tmp_path: Path
) -> None:
    """A node killed with SIGKILL announces nothing; a surviving node notices that it
    stopped refreshing its entries and announces that its viewers left."""
    expiry = 1.0
    survivor = make_server(presence_expiry=expiry)
    alice = await create_user(settings, "alice")
    bob = await create_user(settings, "bob")
    doomed = await serve(
        tmp_path / "doomed",
        database_url=settings.database_url,
        broker_url=settings.broker_url,
        broker_channel=settings.broker_channel,
        presence_expiry=str(expiry),
        create_admin="false",
    )
    try:
        await doomed.read_until("Uvicorn running on")
        async with api(survivor, alice) as owner:
            pid = await shared_project(owner, "bob")
            a = await watch(survivor, alice)
            await a.subscribe(pid)
            headers = {"Authorization": f"Bearer {bob.token}"}
            url = doomed.url.replace("http", "ws") + "/ws"
            ws = await websockets.connect(url, additional_headers=headers)
            await send(ws, {"type": "subscribe", "project_id": pid})
            async with asyncio.timeout(TIMEOUT):
                while orjson.loads(await ws.recv())["type"] != "subscribed":
                    pass
            await a.wait_for(lambda m: ("joined", "bob") in a.presence(pid))
            listed = await owner.get(f"/api/projects/{pid}/presence")
            assert names(listed.json()) == ["alice", "bob"]

            doomed.proc.send_signal(signal.SIGKILL)
            await doomed.proc.wait()
            await a.wait_for(lambda m: ("left", "bob") in a.presence(pid))
            listed = await owner.get(f"/api/projects/{pid}/presence")
            assert names(listed.json()) == ["alice"]
            ws.transport.abort()
    finally:
        await doomed.stop()


# -- one node's side, on its own ----------------------------------------------------------


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[Presence, list[tuple[str, str, str]]]]:
    """A node's :class:`Presence` on the memory store and broker, with what it publishes
    as ``(type, project, username)``."""
    broker = MemoryBroker()
    db = Database(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"))
    eventlog = EventLog(db, broker, 100, "presence")
    presence = Presence(MemoryPresence(0.2), eventlog, 0.2, node="n1")
    published: list[tuple[str, str, str]] = []
    subscription = await broker.subscribe("presence")

    async def collect() -> None:
        async for raw in subscription:
            env = Envelope.decode(raw)
            frame = orjson.loads(env.frame)
            published.append((env.type, frame["project_id"], frame["user"]["username"]))

    task = asyncio.create_task(collect())
    await presence.start()
    try:
        yield presence, published
    finally:
        await presence.stop()
        await subscription.close()
        await task
        await db.dispose()


async def test_a_subscription_that_opens_and_closes_at_once_announces_nothing(
    node: tuple[Presence, list[tuple[str, str, str]]],
) -> None:
    presence, published = node
    presence.opened("p", "u1", "ann", "c1")
    presence.closed("p", "u1", "c1")
    presence.opened("p", "u2", "bob", "c2")
    presence.opened("p", "u2", "bob", "c3")
    presence.closed("p", "u2", "c2")
    presence.closed("p", "u2", "c9")  # never opened: ignored
    await eventually(lambda: bool(published))
    assert await presence.viewers("p") == [{"id": "u2", "username": "bob"}]
    presence.closed("p", "u2", "c3")
    await eventually(lambda: len(published) == 2)
    assert published == [("presence.joined", "p", "bob"), ("presence.left", "p", "bob")]
    assert presence.local_users() == 0


async def test_a_node_whose_entries_expired_adds_them_again(
    node: tuple[Presence, list[tuple[str, str, str]]],
) -> None:
    """A node that did not refresh in time (paused, cut off from Redis) lost its entries to
    another node's expiry check; its next refresh finds out and adds them again."""
    presence, published = node
    presence.opened("p", "u1", "ann", "c1")
    await eventually(lambda: published == [("presence.joined", "p", "ann")])
    left = await presence.store.forget(presence.node)  # what an expiry check does
    assert [v.username for v in left.left] == ["ann"]
    assert await presence.viewers("p") == []
    await eventually(
        lambda: published[-1:] == [("presence.joined", "p", "ann")] and len(published) == 2
    )
    assert await presence.viewers("p") == [{"id": "u1", "username": "ann"}]


class CountedStore(MemoryPresence):
    """A memory store that counts its viewer reads, and can hold one until let go."""

    def __init__(self) -> None:
        super().__init__(30.0)
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def viewers(self, project_id: str) -> list[Viewer]:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        return await super().viewers(project_id)


def user(user_id: str, username: str) -> dict[str, str]:
    return {"id": user_id, "username": username}


async def test_subscribed_lists_follow_the_changes_heard_without_reading_the_store(
    tmp_path: Path,
) -> None:
    """Every client of a large project coming back at once used to read, build and sort
    the project's viewers for each `subscribed`. The list is read once, then kept in order
    by the changes the node hears; a read during which a change arrives is not kept."""
    db = Database(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"))
    store = CountedStore()
    presence = Presence(store, EventLog(db, MemoryBroker(), 100, "p"), 30.0)
    ann, bob, cy, dee = user("u1", "ann"), user("u2", "bob"), user("u3", "cy"), user("u4", "dee")
    try:
        await store.update("elsewhere", [Viewer("p", "u2", "bob")], [])
        assert await presence.listed("p", "u4", "dee") == [bob, dee]  # the caller in order
        presence.heard("presence.joined", "p", cy)
        presence.heard("presence.joined", "p", ann)
        presence.heard("presence.left", "p", bob)
        presence.heard("presence.left", "p", bob)  # told twice: a set operation
        assert await presence.listed("p", "u4", "dee") == [ann, cy, dee]
        assert await presence.listed("p", "u1", "ann") == [ann, cy]  # no one twice
        assert store.reads == 1

        presence.unwatched("p")  # no subscriber left: the list goes
        store.gate = asyncio.Event()
        reading = asyncio.ensure_future(presence.listed("p", "u4", "dee"))
        await eventually(lambda: store.reads == 2)
        presence.heard("presence.joined", "p", cy)  # while the store is read
        store.gate.set()
        assert await reading == [bob, dee]  # the store's answer, for this caller
        assert await presence.listed("p", "u4", "dee") == [bob, dee]
        assert store.reads == 3  # the read that a change overtook was not kept
        assert await presence.listed("p", "u4", "dee") == [bob, dee]
        assert store.reads == 3
    finally:
        await db.dispose()


class UnreachableStore(MemoryPresence):
    """A presence store whose reads fail as Redis's do while it is down."""

    def __init__(self, error: Exception) -> None:
        super().__init__(0.2)
        self.error = error

    async def viewers(self, project_id: str) -> list[Viewer]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "traceback"),
    [(ConnectionError("Connection refused."), False), (RuntimeError("a bug"), True)],
)
async def test_an_unreadable_store_answers_this_nodes_viewers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, error: Exception, traceback: bool
) -> None:
    """While the store is down every subscribe's read fails: one line each, and the
    viewers this node knows of; anything else is a defect, logged with its traceback."""
    db = Database(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"))
    presence = Presence(UnreachableStore(error), EventLog(db, MemoryBroker(), 100, "p"), 0.2)
    try:
        presence.opened("p", "u1", "ann", "c1")
        assert await presence.viewers("p") == [{"id": "u1", "username": "ann"}]
    finally:
        await db.dispose()
    (record,) = [r for r in caplog.records if r.name == "tidings.presence"]
    assert (record.exc_info is not None) is traceback


class LosesACancellation(MemoryPresence):
    """Its update loses the first cancellation it gets (turned into an error the
    presence task retries after): one way a dependency can lose one."""

    def __init__(self) -> None:
        super().__init__(0.2)
        self.waiting = asyncio.Event()
        self.armed = False  # from the first update after the node registered
        self.lost = False

    async def update(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed and not self.lost:
            self.waiting.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.lost = True
                raise ConnectionError("No connection available.") from None
        return await super().update(*args, **kwargs)


async def test_a_node_stops_even_if_its_presence_task_loses_a_cancellation(
    tmp_path: Path,
) -> None:
    """Found by the restart bench: a node with 20,000 sockets now and then did not stop
    on SIGTERM (killed after 60 s; its presence task was still at work, marked
    "cancelling": the cancellation had been lost on its way through the Redis client,
    where exactly we could not tell). Now stopping cancels again until the task has
    ended."""
    db = Database(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"))
    store = LosesACancellation()
    presence = Presence(store, EventLog(db, MemoryBroker(), 100, "p"), 0.2)
    await presence.start()
    store.armed = True
    try:
        presence.opened("p", "u1", "ann", "c1")  # the next update waits in the "pool"
        await asyncio.wait_for(store.waiting.wait(), TIMEOUT)
        await asyncio.wait_for(presence.stop(), TIMEOUT)
        assert store.lost
    finally:
        await db.dispose()
