"""Nothing lost, nothing doubled: gaps, lost broker messages and restarts recover from the log."""

from __future__ import annotations

from typing import Any

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
    await commit_unpublished(server, pid, 1200)  # more than one replay page
    ws = await connected(server, alice)
    reply = await subscribe(ws, pid, since=0)
    assert reply["recovered"] is True and reply["seq"] == 1201
    got = [await recv(ws) for _ in range(1201)]
    assert seqs(got) == list(range(1, 1202))


async def test_replays_beyond_the_concurrency_wait_their_turn(make_server) -> None:
    server = make_server(replay_concurrency=1)
    alice = await create_user(server.settings, "alice")
    async with api(server, alice) as alice_api:
        project = await create_project(alice_api)
    pid = project["id"]
    await commit_unpublished(server, pid, 1200)  # several pages each
    sockets = [await connected(server, alice) for _ in range(4)]
    for ws in sockets:
        await send(ws, {"type": "subscribe", "project_id": pid, "since": 0})
    for ws in sockets:
        reply = await recv(ws)
        assert reply["type"] == "subscribed" and reply["recovered"] is True
        got = [await recv(ws) for _ in range(1201)]
        assert seqs(got) == list(range(1, 1202))
