"""Nothing lost, nothing doubled: gaps, lost broker messages and restarts recover from the log."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete

from tests.conftest import (
    ServerThread,
    TestUser,
    api,
    closed_with,
    connected,
    create_project,
    create_user,
    recv,
    recv_until,
    send,
    subscribe,
)
from tidings.broker.memory import MemoryBroker
from tidings.db import Database, create_engine
from tidings.events import PROJECT_UPDATED, EventLog
from tidings.hub import REPLAY_PAGE
from tidings.models import Member


async def commit_unpublished(server: ServerThread, project_id: str, count: int) -> None:
    """Log events whose broker message never goes out: a node that died after its commit."""
    db = Database(create_engine(server.settings.effective_database_url))
    log = EventLog(db, MemoryBroker(), server.settings.event_history, "nowhere")
    try:
        async with db.write() as session:  # one transaction: 1,200 commits take seconds on PG
            for i in range(count):
                await log.record(session, project_id, PROJECT_UPDATED, {"data": {"n": i}})
    finally:
        await db.dispose()


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in messages]


async def test_gap_in_live_events_is_filled_from_the_log(
    server: ServerThread, alice: TestUser, alice_api
) -> None:
    project = await create_project(alice_api)
    pid = project["id"]
    ws = await connected(server, alice)
    await subscribe(ws, pid)
    await commit_unpublished(server, pid, 2)  # seq 2 and 3, never published
    await alice_api.patch(f"/api/projects/{pid}", json={"description": "live"})  # seq 4
    got = [await recv_until(ws, lambda m: "seq" in m) for _ in range(3)]
    assert seqs(got) == [2, 3, 4]
    assert got[2]["data"]["description"] == "live"


async def test_lost_last_event_is_found_by_head_sync(make_server) -> None:
    server = make_server(head_sync_interval=0.2)
    alice = await create_user(server.settings, "alice")
    async with api(server, alice) as alice_api:
        project = await create_project(alice_api)
    pid = project["id"]
    ws = await connected(server, alice)
    await subscribe(ws, pid)
    await commit_unpublished(server, pid, 1)
    event = await recv_until(ws, lambda m: "seq" in m)
    assert event["seq"] == 2 and event["data"] == {"n": 0}


async def test_a_lost_last_event_another_subscribe_saw_first_still_arrives(make_server) -> None:
    """Found by the chaos suite (tests/chaos.py): an event whose broker message was lost
    (its node was killed after the commit) and that a *new* subscribe read from the log
    raised the channel's head; head sync then saw nothing new, and the subscribers that
    were already live never got it. Now a subscribe that finds a newer head sends the
    live subscribers behind it to the log at once (no head sync needed: it is off here)."""
    server = make_server(head_sync_interval=3600)
    alice = await create_user(server.settings, "alice")
    async with api(server, alice) as alice_api:
        project = await create_project(alice_api)
    pid = project["id"]
    live = await connected(server, alice)
    await subscribe(live, pid)
    await commit_unpublished(server, pid, 1)  # seq 2: committed, never published
    late = await connected(server, alice)
    # With a snapshot the subscribe reads the log (a plain one may be answered from the
    # node's memory, which has not heard of seq 2: head sync finds it then).
    await send(late, {"type": "subscribe", "project_id": pid, "snapshot": True})
    reply = await recv_until(late, lambda m: m["type"] == "subscribed")
    assert reply["seq"] == 2  # the channel's head is 2 now
    event = await recv_until(live, lambda m: "seq" in m)
    assert event["seq"] == 2 and event["data"] == {"n": 0}


async def test_resume_after_restart_gets_what_happened_meanwhile(
    server: ServerThread, alice: TestUser, alice_api
) -> None:
    project = await create_project(alice_api)
    pid = project["id"]
    ws = await connected(server, alice)
    await subscribe(ws, pid)
    await alice_api.patch(f"/api/projects/{pid}", json={"description": "before"})
    last = (await recv_until(ws, lambda m: m["type"] == "project.updated"))["seq"]
    await server.stop_async()
    assert await closed_with(ws) == 1012
    await commit_unpublished(server, pid, 3)  # changes made elsewhere while this node was down
    server.start()
    ws = await connected(server, alice)
    reply = await subscribe(ws, pid, since=last)
    assert reply["recovered"] is True and reply["seq"] == last + 3
    replayed = [await recv(ws) for _ in range(3)]
    assert seqs(replayed) == [last + 1, last + 2, last + 3]
    await alice_api.patch(f"/api/projects/{pid}", json={"description": "after"})
    live = await recv_until(ws, lambda m: m["type"] == "project.updated")
    assert live["seq"] == last + 4


async def test_resume_of_many_events_in_order(
    server: ServerThread, alice: TestUser, alice_api
) -> None:
    project = await create_project(alice_api)
    pid = project["id"]
    await commit_unpublished(server, pid, REPLAY_PAGE + 100)  # more than one replay page
    ws = await connected(server, alice)
    reply = await subscribe(ws, pid, since=0)
    assert reply["recovered"] is True and reply["seq"] == REPLAY_PAGE + 101
    got = [await recv(ws) for _ in range(REPLAY_PAGE + 101)]
    assert seqs(got) == list(range(1, REPLAY_PAGE + 102))


async def test_replays_beyond_the_concurrency_wait_their_turn(make_server) -> None:
    server = make_server(replay_concurrency=1)
    alice = await create_user(server.settings, "alice")
    async with api(server, alice) as alice_api:
        project = await create_project(alice_api)
    pid = project["id"]
    await commit_unpublished(server, pid, REPLAY_PAGE + 100)  # two pages each
    sockets = [await connected(server, alice) for _ in range(4)]
    for ws in sockets:
        await send(ws, {"type": "subscribe", "project_id": pid, "since": 0})
    for ws in sockets:
        reply = await recv(ws)
        assert reply["type"] == "subscribed" and reply["recovered"] is True
        got = [await recv(ws) for _ in range(REPLAY_PAGE + 101)]
        assert seqs(got) == list(range(1, REPLAY_PAGE + 102))


async def test_a_removal_whose_broker_messages_were_lost_still_ends_the_subscription(
    server: ServerThread, alice: TestUser, alice_api
) -> None:
    """Found by the chaos suite (tests/chaos.py): Redis was down when a member was removed,
    so neither the removal's event nor the control message ending their subscriptions
    reached any node, and the removed member kept receiving the project's events. Now the
    replay that fills the gap reads the log only in a snapshot where the reader still sees
    the project; otherwise the subscription ends with ``access_revoked``."""
    bob = await create_user(server.settings, "bob")
    project = await create_project(alice_api)
    pid = project["id"]
    added = await alice_api.post(f"/api/projects/{pid}/members", json={"username": "bob"})
    assert added.status_code == 201
    ws = await connected(server, bob)
    await subscribe(ws, pid)

    db = Database(create_engine(server.settings.effective_database_url))
    log = EventLog(db, MemoryBroker(), server.settings.event_history, "nowhere")
    try:
        async with db.write() as session:  # the removal commits; its broker messages are lost
            await session.execute(
                delete(Member).where(Member.project_id == pid, Member.user_id == bob.id)
            )
            await log.record(session, pid, PROJECT_UPDATED, {"data": {"removed": "bob"}})
    finally:
        await db.dispose()
    secret = await alice_api.patch(f"/api/projects/{pid}", json={"description": "secret"})
    assert secret.status_code == 200  # published: bob's subscription sees a gap before it

    received: list[dict[str, Any]] = []
    while not received or received[-1]["type"] != "unsubscribed":
        received.append(await recv_until(ws, lambda m: m.get("project_id") == pid))
    assert received[-1]["reason"] == "access_revoked"
    assert all(m.get("seq", 0) < int(secret.headers["Tidings-Seq"]) for m in received), received
