"""/ws over real sockets against a real uvicorn: handshake, auth, subscriptions, events."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import (
    MS,
    TIMEOUT,
    ServerThread,
    TestUser,
    api,
    browser_session,
    closed_with,
    connected,
    create_project,
    create_user,
    eventually,
    recv,
    recv_until,
    send,
    subscribe,
    upload,
    ws_connect,
)
from tidings.ws import Upgrades, _route_path

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def test_handshake(server: ServerThread, alice: TestUser) -> None:
    ws = await ws_connect(server, alice)
    hello = await recv(ws)
    assert hello["type"] == "connection.established"
    assert hello["user"] == {"id": alice.id, "username": "alice"}
    assert hello["heartbeat_interval"] == 30
    assert hello["protocol"] == 1
    assert isinstance(hello["client_id"], str) and hello["client_id"]
    assert RFC3339_MS.match(hello["timestamp"])
    assert hello["expires_at"] is None  # the test token never expires
    await ws.close()


async def test_cookie_session_authenticates(server: ServerThread, alice: TestUser) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        login = await client.post(
            "/api/auth/login", json={"username": "alice", "password": alice.password}
        )
        assert login.status_code == 200
        cookie = login.cookies["tidings_session"]
    ws = await ws_connect(server, additional_headers={"Cookie": f"tidings_session={cookie}"})
    assert (await recv(ws))["user"]["username"] == "alice"
    await ws.close()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer tdg_not-a-real-token"},
        {"Authorization": "Basic YWxpY2U6cHc="},
        {"Cookie": "tidings_session=forged"},
    ],
)
async def test_missing_or_invalid_credentials_close_4401(
    server: ServerThread, headers: dict[str, str]
) -> None:
    ws = await ws_connect(server, additional_headers=headers)
    assert await closed_with(ws) == 4401


async def test_an_expiring_token_closes_its_sockets_with_4401(
    server: ServerThread, alice: TestUser
) -> None:
    async with browser_session(server, alice) as browser:
        created = await browser.post("/api/auth/tokens", json={"name": "brief", "expires_in": 2})
        assert created.status_code == 201, created.text
    token = created.json()
    holder = TestUser(alice.id, "alice", alice.password, token["token"])
    ws = await ws_connect(server, holder)
    hello = await recv(ws)
    announced = datetime.fromisoformat(hello["expires_at"])
    assert abs(announced - datetime.fromisoformat(token["expires_at"])) < timedelta(seconds=0.001)
    assert await closed_with(ws) == 4401  # soon after it expires, though it is idle
    assert datetime.now(UTC) >= announced
    assert await closed_with(await ws_connect(server, holder)) == 4401


async def test_an_expiring_session_closes_its_sockets_with_4401(make_server) -> None:
    srv = make_server(session_max_age=2)
    alice = await create_user(srv.settings, "alice")
    async with browser_session(srv, alice) as browser:
        cookie = browser.cookies["tidings_session"]
    ws = await ws_connect(srv, additional_headers={"Cookie": f"tidings_session={cookie}"})
    hello = await recv(ws)
    assert RFC3339_MS.match(hello["expires_at"])
    assert await closed_with(ws) == 4401
    again = await ws_connect(srv, additional_headers={"Cookie": f"tidings_session={cookie}"})
    assert await closed_with(again) == 4401  # and it cannot come back


async def test_connections_per_user_are_capped_with_1013(make_server) -> None:
    srv = make_server(ws_max_connections_per_user=2)
    alice = await create_user(srv.settings, "alice")
    bob = await create_user(srv.settings, "bob")
    held = [await connected(srv, alice) for _ in range(2)]
    refused = await ws_connect(srv, alice)
    assert await closed_with(refused) == 1013  # accepted, then closed: before any message
    assert refused.close_reason == "too many connections for this user"
    await connected(srv, bob)  # another user is not affected
    await held[0].close()
    await eventually(lambda: srv.services.hub.connections_of(alice.id) == 1)
    await connected(srv, alice)


async def test_revoking_a_token_closes_its_sockets(server: ServerThread, alice: TestUser) -> None:
    async with browser_session(server, alice) as client:
        created = (await client.post("/api/auth/tokens", json={"name": "ws"})).json()
    second = TestUser(alice.id, alice.username, alice.password, created["token"])
    doomed = await connected(server, second)
    survivor = await connected(server, alice)
    async with api(server, alice) as client:
        assert (await client.delete(f"/api/auth/tokens/{created['id']}")).status_code == 204
    assert await closed_with(doomed) == 4401
    await send(survivor, {"type": "ping"})
    assert (await recv_until(survivor, lambda m: m["type"] == "pong"))["type"] == "pong"
    await survivor.close()


async def test_logout_closes_the_sessions_sockets(server: ServerThread, alice: TestUser) -> None:
    async with browser_session(server, alice) as client:
        cookie = client.cookies["tidings_session"]
        ws = await ws_connect(server, additional_headers={"Cookie": f"tidings_session={cookie}"})
        await recv(ws)
        assert (await client.post("/api/auth/logout")).status_code == 204
    assert await closed_with(ws) == 4401


async def test_foreign_origin_refused_before_upgrade(server: ServerThread, alice: TestUser) -> None:
    with pytest.raises(websockets.InvalidStatus) as excinfo:
        await ws_connect(server, alice, origin="https://evil.example")
    assert excinfo.value.response.status_code == 403


async def test_own_and_allowed_origins_accepted(make_server) -> None:
    srv = make_server(allowed_origins=["https://app.example"])
    carol = await create_user(srv.settings, "carol")
    for origin in (f"http://127.0.0.1:{srv.port}", "https://app.example"):
        ws = await ws_connect(srv, carol, origin=origin)
        assert (await recv(ws))["type"] == "connection.established"
        await ws.close()


async def test_subscribe_reports_latest_seq(server, alice, alice_api) -> None:
    project = await create_project(alice_api)
    await upload(alice_api, project["id"])
    ws = await connected(server, alice)
    await send(ws, {"type": "subscribe", "project_id": project["id"], "id": "r1"})
    reply = await recv_until(ws, lambda m: m["type"] == "subscribed")
    assert reply["project_id"] == project["id"]
    assert reply["seq"] == 2
    assert reply["id"] == "r1"
    assert "recovered" not in reply
    assert RFC3339_MS.match(reply["timestamp"])
    await send(ws, {"type": "unsubscribe", "project_id": project["id"]})
    reply = await recv_until(ws, lambda m: m["type"] == "unsubscribed")
    assert reply["project_id"] == project["id"] and "reason" not in reply
    await ws.close()


async def test_foreign_and_missing_projects_look_the_same(server, alice, bob, alice_api) -> None:
    project = await create_project(alice_api)
    ws = await connected(server, bob)
    foreign = await subscribe(ws, project["id"])
    missing = await subscribe(ws, "0" * 32)
    for reply in (foreign, missing):
        assert reply["type"] == "error"
        assert reply["code"] == "not_found"
    assert foreign["message"] == missing["message"]
    await ws.close()


async def test_only_subscribers_get_project_events(server, alice, bob, alice_api, bob_api) -> None:
    mine = await create_project(alice_api, "alice's")
    theirs = await create_project(bob_api, "bob's")
    alice_ws = await connected(server, alice)
    bob_ws = await connected(server, bob)
    await subscribe(alice_ws, mine["id"])
    await subscribe(bob_ws, theirs["id"])
    await upload(alice_api, mine["id"], "secret.txt")
    await upload(bob_api, theirs["id"], "bob.txt")
    got = await recv_until(alice_ws, lambda m: m["type"] == "file.uploaded")
    assert got["file"]["name"] == "secret.txt"
    got = await recv_until(bob_ws, lambda m: m["type"] == "file.uploaded")
    assert got["file"]["name"] == "bob.txt"  # alice's file never reached bob
    # And nothing else is waiting for bob.
    await send(bob_ws, {"type": "ping"})
    assert (await recv(bob_ws))["type"] == "pong"
    await alice_ws.close()
    await bob_ws.close()


async def test_every_event_type_from_rest(server, alice, bob, alice_api) -> None:
    alice_ws = await connected(server, alice)
    bob_ws = await connected(server, bob)

    project = await create_project(alice_api, "launch")
    created = await recv_until(alice_ws, lambda m: m["type"] == "project.created")
    assert created["seq"] == 1 and created["data"]["name"] == "launch"
    assert created["project_id"] == project["id"]
    pid = project["id"]
    await subscribe(alice_ws, pid)

    # Adding bob tells bob's open connections about the project (no subscription needed).
    assert (
        await alice_api.post(f"/api/projects/{pid}/members", json={"username": "bob"})
    ).status_code == 201
    seen = await recv_until(bob_ws, lambda m: m["type"] == "project.updated")
    assert seen["data"]["id"] == pid and seen["seq"] == 2
    await subscribe(bob_ws, pid)

    await alice_api.patch(f"/api/projects/{pid}", json={"description": "v2"})
    for ws in (alice_ws, bob_ws):
        updated = await recv_until(ws, lambda m: m["type"] == "project.updated" and m["seq"] == 3)
        assert updated["data"]["description"] == "v2"

    uploaded = await upload(alice_api, pid, "model.glb", b"glTF", path="/assets")
    file_id = uploaded.json()["id"]
    for ws in (alice_ws, bob_ws):
        event = await recv_until(ws, lambda m: m["type"] == "file.uploaded")
        assert event["seq"] == 4
        assert event["file"] == {
            "id": file_id,
            "name": "model.glb",
            "path": "/assets",
            "size": 4,
            "asset_type": "model",
        }
        assert RFC3339_MS.match(event["timestamp"])

    await alice_api.delete(f"/api/projects/{pid}/files/{file_id}")
    for ws in (alice_ws, bob_ws):
        event = await recv_until(ws, lambda m: m["type"] == "file.deleted")
        assert event["seq"] == 5 and event["file"]["id"] == file_id

    # Removing bob ends his subscription at once.
    await alice_api.delete(f"/api/projects/{pid}/members/bob")
    revoked = await recv_until(bob_ws, lambda m: m["type"] == "unsubscribed")
    assert revoked["project_id"] == pid and revoked["reason"] == "access_revoked"

    await alice_api.delete(f"/api/projects/{pid}")
    deleted = await recv_until(alice_ws, lambda m: m["type"] == "project.deleted")
    assert deleted["seq"] == 7 and deleted["project_id"] == pid
    # The subscription ended with the project: unsubscribing answers plainly, and a new
    # subscription is refused.
    assert (await subscribe(alice_ws, pid))["code"] == "not_found"
    await alice_ws.close()
    await bob_ws.close()


async def test_resume_while_events_keep_flowing(server, alice, alice_api) -> None:
    project = await create_project(alice_api)
    pid = project["id"]
    total = 60

    async def produce() -> None:
        async with api(server, alice) as client:
            for i in range(total):
                response = await client.patch(f"/api/projects/{pid}", json={"description": str(i)})
                assert response.status_code == 200

    producer = asyncio.create_task(produce())
    # Wait until part of the history exists, then resume from an early point mid-flow.
    watcher = await connected(server, alice)
    await subscribe(watcher, pid)
    await recv_until(watcher, lambda m: m.get("seq", 0) >= 15)
    ws = await connected(server, alice)
    reply = await subscribe(ws, pid, since=5)
    assert reply["type"] == "subscribed" and reply["recovered"] is True
    seqs: list[int] = []
    while not seqs or seqs[-1] < total + 1:
        message = await recv(ws)
        if "seq" in message and message["type"] != "subscribed":
            seqs.append(message["seq"])
    await producer
    assert seqs == list(range(6, total + 2))
    await ws.close()
    await watcher.close()


async def test_resume_past_retention_is_not_recovered(make_server, tmp_path) -> None:
    srv = make_server(event_history=5)
    user = await create_user(srv.settings)
    async with api(srv, user) as client:
        project = await create_project(client)
        for i in range(9):
            await client.patch(f"/api/projects/{project['id']}", json={"description": str(i)})
    ws = await connected(srv, user)
    lost = await subscribe(ws, project["id"], since=1)
    assert lost["recovered"] is False and lost["seq"] == 10
    kept = await subscribe(ws, project["id"], since=5)
    assert kept["recovered"] is True
    replayed = [(await recv(ws))["seq"] for _ in range(5)]
    assert replayed == [6, 7, 8, 9, 10]
    await ws.close()


async def test_heartbeat(make_server) -> None:
    interval = 200 * MS
    srv = make_server(heartbeat_interval=interval)
    user = await create_user(srv.settings)
    ws = await ws_connect(srv, user)
    hello = await recv(ws)
    assert hello["heartbeat_interval"] == interval
    beats = [await recv_until(ws, lambda m: m["type"] == "system.heartbeat") for _ in range(2)]
    assert all(RFC3339_MS.match(b["timestamp"]) for b in beats)
    await ws.close()


async def test_many_simultaneous_clients(server, alice, alice_api) -> None:
    project = await create_project(alice_api)
    users = [alice]  # three users: 60 sockets of one would pass the per-user cap
    for name in ("bob", "carol"):
        users.append(await create_user(server.settings, name))
        added = await alice_api.post(
            f"/api/projects/{project['id']}/members", json={"username": name}
        )
        assert added.status_code == 201
    clients = await asyncio.gather(*(connected(server, users[i % 3]) for i in range(60)))
    await asyncio.gather(*(subscribe(ws, project["id"]) for ws in clients))
    await upload(alice_api, project["id"], "shared.txt")
    events = await asyncio.gather(
        *(recv_until(ws, lambda m: m["type"] == "file.uploaded") for ws in clients)
    )
    assert {e["file"]["name"] for e in events} == {"shared.txt"}
    assert len(server.services.hub.connections) == 60
    await asyncio.gather(*(ws.close() for ws in clients))


async def test_garbage_gets_an_error_and_the_connection_stays(server, alice) -> None:
    ws = await connected(server, alice)
    for raw in ("{nope", "[]", '{"type":"dance","id":4}', '{"type":"subscribe"}'):
        await ws.send(raw)
        reply = await recv(ws)
        assert reply["type"] == "error" and reply["code"] == "bad_request", raw
        assert reply["message"]
    await send(ws, {"type": "ping", "id": 1})
    assert (await recv(ws))["type"] == "pong"
    await ws.close()


async def test_oversized_message_closes_1009(server, alice) -> None:
    ws = await connected(server, alice)
    await ws.send("x" * (server.settings.ws_max_message_bytes + 1))
    assert await closed_with(ws) == 1009


async def test_flooding_is_rate_limited_then_closed(make_server) -> None:
    srv = make_server(ws_rate_limit=1, ws_rate_burst=2)
    user = await create_user(srv.settings)
    ws = await connected(srv, user)
    codes = []
    try:
        for _ in range(40):
            await send(ws, {"type": "ping"})
        while True:
            codes.append((await recv(ws)).get("code"))
    except websockets.ConnectionClosed:
        pass
    assert "rate_limited" in codes
    assert ws.close_code == 4429


async def test_subscription_limit(make_server) -> None:
    srv = make_server(ws_max_subscriptions=2)
    user = await create_user(srv.settings)
    async with api(srv, user) as client:
        projects = [await create_project(client, f"p{i}") for i in range(3)]
    ws = await connected(srv, user)
    assert (await subscribe(ws, projects[0]["id"]))["type"] == "subscribed"
    assert (await subscribe(ws, projects[1]["id"]))["type"] == "subscribed"
    refused = await subscribe(ws, projects[2]["id"])
    assert refused["code"] == "too_many_subscriptions"
    await ws.close()


ANSWERS = frozenset({"subscribed", "error", "pong"})


async def test_subscribe_to_several_projects_answers_each_in_order(
    server, alice, bob, alice_api, bob_api
) -> None:
    """One `subscribe` with `projects`: one answer per entry, in the order given, mixing
    `subscribed`, `not_found` and `bad_request`; later messages wait behind them all."""
    a = (await create_project(alice_api, "a"))["id"]
    b = (await create_project(alice_api, "b"))["id"]
    await upload(alice_api, a, "one.txt")
    foreign = (await create_project(bob_api, "bob's"))["id"]
    ws = await connected(server, alice)
    entries = [
        {"project_id": a, "since": 1},
        {"project_id": foreign},
        {"project_id": "0" * 32, "snapshot": True},
        {"project_id": b, "snapshot": True},
        {"project_id": b, "since": "1"},
        "garbage",
    ]
    await send(ws, {"type": "subscribe", "id": "many", "projects": entries})
    await send(ws, {"type": "ping", "id": "after"})
    answers = []
    replayed = []
    while not answers or answers[-1]["type"] != "pong":
        message = await recv(ws)
        if message["type"] in ANSWERS:
            answers.append(message)
        elif message.get("project_id") == a:
            replayed.append(message)
    got = [(m["type"], m.get("code"), m.get("project_id"), m.get("id")) for m in answers]
    assert got == [
        ("subscribed", None, a, "many"),
        ("error", "not_found", foreign, "many"),
        ("error", "not_found", "0" * 32, "many"),
        ("subscribed", None, b, "many"),
        ("error", "bad_request", b, "many"),
        ("error", "bad_request", None, "many"),
        ("pong", None, None, "after"),
    ]
    assert (answers[0]["seq"], answers[0]["recovered"]) == (2, True)
    assert answers[3]["seq"] == 1 and answers[3]["snapshot"]["project"]["id"] == b
    # Both subscriptions are live: the missed event was replayed, new ones arrive.
    if not replayed:
        replayed.append(await recv_until(ws, lambda m: m.get("project_id") == a))
    assert [(m["type"], m["seq"]) for m in replayed] == [("file.uploaded", 2)]
    await upload(alice_api, b, "two.txt")
    event = await recv_until(ws, lambda m: m["type"] == "file.uploaded")
    assert (event["project_id"], event["seq"]) == (b, 2)
    await ws.close()


async def test_a_project_list_is_bounded_by_the_subscription_limit(make_server) -> None:
    srv = make_server(ws_max_subscriptions=2)
    user = await create_user(srv.settings)
    async with api(srv, user) as client:
        projects = [(await create_project(client, f"p{i}"))["id"] for i in range(3)]
    ws = await connected(srv, user)
    await send(ws, {"type": "subscribe", "projects": [{"project_id": p} for p in projects]})
    refused = await recv(ws)
    assert (refused["type"], refused["code"]) == ("error", "too_many_subscriptions")
    assert "project_id" not in refused
    assert (await subscribe(ws, projects[0]))["type"] == "subscribed"
    # Within the list's bound but over the connection's: entries beyond it are refused.
    await send(ws, {"type": "subscribe", "projects": [{"project_id": p} for p in projects[1:]]})
    first, second = await recv(ws), await recv(ws)
    assert (first["type"], first["project_id"]) == ("subscribed", projects[1])
    assert (second["code"], second["project_id"]) == ("too_many_subscriptions", projects[2])
    await ws.close()


async def refused_after_removal(node_a: ServerThread, node_b: ServerThread, owner, member) -> None:
    """``member`` subscribes on ``node_b`` (the second time from the node's memory); the
    owner removes them on ``node_a``; once ``node_b`` has ended the subscription, the
    next subscribe there is refused."""
    async with api(node_a, owner) as owner_api:
        pid = (await create_project(owner_api))["id"]
        added = await owner_api.post(
            f"/api/projects/{pid}/members", json={"username": member.username}
        )
        assert added.status_code == 201
        ws = await connected(node_b, member)
        assert (await subscribe(ws, pid))["type"] == "subscribed"
        await send(ws, {"type": "unsubscribe", "project_id": pid})
        await recv_until(ws, lambda m: m["type"] == "unsubscribed")
        assert node_b.services.hub.access.allowed(member.id, pid, 0)  # answered from memory
        assert (await subscribe(ws, pid, since=2))["recovered"] is True
        removed = await owner_api.delete(f"/api/projects/{pid}/members/{member.username}")
        assert removed.status_code == 204
    revoked = await recv_until(ws, lambda m: m["type"] == "unsubscribed")
    assert revoked["reason"] == "access_revoked"
    refused = await subscribe(ws, pid)
    assert (refused["type"], refused["code"]) == ("error", "not_found")
    assert not node_b.services.hub.access.allowed(member.id, pid, 0)
    await ws.close()


async def test_a_removed_member_is_refused_on_the_next_subscribe(server, alice, bob) -> None:
    await refused_after_removal(server, server, alice, bob)


@pytest.mark.parametrize("cache", [0, 100])
async def test_subscribes_from_memory_answer_what_the_database_would(make_server, cache) -> None:
    """With the access cache (and a channel kept open) every subscribe below is answered
    from the node's memory; without, from the database: the same answers either way."""
    srv = make_server(access_cache_entries=cache)
    user = await create_user(srv.settings)
    async with api(srv, user) as client:
        pid = (await create_project(client))["id"]
        for name in ("a", "b", "c"):
            await upload(client, pid, name)
    keeper = await connected(srv, user)  # keeps the channel (and what it knows) alive
    assert (await subscribe(keeper, pid))["seq"] == 4
    registry = srv.services.hub.metrics.registry
    answers = {}
    for since in (None, 0, 2, 4, 5):
        ws = await connected(srv, user)
        reply = await subscribe(ws, pid, since=since)
        replayed = []
        while (replayed[-1] if replayed else since if since is not None else 4) < 4:
            replayed.append((await recv_until(ws, lambda m: "seq" in m))["seq"])
        answers[since] = (reply["seq"], reply.get("recovered"), replayed)
        await ws.close()
    assert answers == {
        None: (4, None, []),
        0: (4, True, [1, 2, 3, 4]),
        2: (4, True, [3, 4]),
        4: (4, True, []),
        5: (4, False, []),  # past the head: only the database can tell
    }
    from_memory = registry.get_sample_value("tidings_ws_subscribes_from_memory_total")
    assert from_memory == (4 if cache else 0)
    await keeper.close()


@pytest.mark.parametrize("cache", [0, 100])
async def test_subscribes_from_memory_resume_as_far_back_as_the_log_keeps(
    make_server, cache
) -> None:
    """The log is trimmed at every hundredth of its history, so it holds up to 1 % more
    than ``TIDINGS_EVENT_HISTORY`` between trims: a subscribe answered from memory
    resumes from exactly where the database would (with 200 kept, 203 events: 3 to 203)."""
    srv = make_server(event_history=200, access_cache_entries=cache)
    user = await create_user(srv.settings)
    async with api(srv, user) as client:
        pid = (await create_project(client))["id"]
        for i in range(202):
            await client.patch(f"/api/projects/{pid}", json={"description": str(i)})
        gone = await client.get(f"/api/projects/{pid}/events", params={"after": 0})
        assert (gone.status_code, gone.json()["oldest"]) == (410, 3)
    keeper = await connected(srv, user)  # keeps the channel (and what it knows) alive
    assert (await subscribe(keeper, pid))["seq"] == 203
    answers = {}
    for since in (1, 2):
        ws = await connected(srv, user)
        reply = await subscribe(ws, pid, since=since)
        first = await recv_until(ws, lambda m: "seq" in m) if reply["recovered"] else None
        answers[since] = (reply["recovered"], first and first["seq"])
        await ws.close()
    assert answers == {1: (False, None), 2: (True, 3)}
    registry = srv.services.hub.metrics.registry
    from_memory = registry.get_sample_value("tidings_ws_subscribes_from_memory_total")
    assert from_memory == (2 if cache else 0)
    await keeper.close()


async def test_shutdown_closes_with_1012(make_server) -> None:
    srv = make_server()
    user = await create_user(srv.settings)
    ws = await connected(srv, user)
    stopping = asyncio.create_task(asyncio.to_thread(srv.stop))
    assert await closed_with(ws) == 1012
    await stopping


async def test_batch_subprotocol_packs_frames(server, alice, alice_api) -> None:
    project = await create_project(alice_api)
    ws = await ws_connect(server, alice, subprotocols=["tidings.batch.v1"])
    assert ws.subprotocol == "tidings.batch.v1"
    import orjson

    async def batch() -> list[dict[str, object]]:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert isinstance(frame, list) and frame, frame  # every frame is an array
        return frame

    assert (await batch())[0]["type"] == "connection.established"
    await send(ws, {"type": "subscribe", "project_id": project["id"]})
    assert [m["type"] for m in await batch()] == ["subscribed"]
    await upload(alice_api, project["id"])
    assert [m["type"] for m in await batch()] == ["file.uploaded"]
    await ws.close()
    plain = await ws_connect(server, alice, subprotocols=["tidings.v1"])
    assert plain.subprotocol == "tidings.v1"
    assert (await recv(plain))["type"] == "connection.established"
    await plain.close()


async def test_silent_peer_is_dropped(make_server) -> None:
    srv = make_server(ws_ping_interval=200 * MS, ws_ping_timeout=300 * MS)
    user = await create_user(srv.settings)
    ws = await ws_connect(srv, user, ping_interval=None)
    hello = await recv(ws)
    hub = srv.services.hub
    assert hello["client_id"] in hub.connections
    ws.transport.pause_reading()  # pings go unanswered from now on
    await eventually(lambda: hello["client_id"] not in hub.connections)


def _samples(text: str) -> dict[str, float]:
    """Prometheus text format -> {"name{labels}": value}."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def _metrics(server: ServerThread) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    return _samples(response.text)


async def test_metrics_count_connections_and_events(server, alice, alice_api) -> None:
    project = await create_project(alice_api)
    before = await _metrics(server)  # each app has its own registry: all at zero
    assert before["tidings_ws_connections"] == 0
    assert before["tidings_ws_subscriptions"] == 0
    uploaded = 'tidings_events_published_total{type="file.uploaded"}'
    delivered = 'tidings_events_delivered_total{type="file.uploaded"}'
    assert uploaded not in before
    ws = await connected(server, alice)
    await subscribe(ws, project["id"])
    await upload(alice_api, project["id"])
    await recv_until(ws, lambda m: m["type"] == "file.uploaded")
    during = await _metrics(server)
    assert during["tidings_ws_connections"] == 1
    assert during["tidings_ws_subscriptions"] == 1
    assert during["tidings_ws_channels"] == 1
    assert during[uploaded] == 1
    assert during[delivered] == 1
    await ws.close()
    await eventually(lambda: not server.services.hub.connections)
    after = await _metrics(server)
    assert after["tidings_ws_connections"] == 0
    assert after["tidings_ws_subscriptions"] == 0
    assert after["tidings_ws_channels"] == 0


async def test_upgrades_take_ws_under_any_root_path_and_pass_the_rest_on() -> None:
    """``Upgrades`` answers ``/ws`` itself (also mounted under a proxy's root path) and
    hands every other request, and every other socket, to the app unchanged."""
    assert _route_path({"path": "/ws"}) == "/ws"
    assert _route_path({"path": "/tidings/ws", "root_path": "/tidings"}) == "/ws"
    assert _route_path({"path": "/other/ws", "root_path": "/tidings"}) == "/other/ws"

    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(f"{scope['type']} {scope['path']}")

    upgrades = Upgrades(app, errors=(), handler=None)  # type: ignore[arg-type]
    for scope in ({"type": "http", "path": "/ws"}, {"type": "websocket", "path": "/wss"}):
        await upgrades(scope, None, None)  # type: ignore[arg-type]
    assert seen == ["http /ws", "websocket /wss"]
