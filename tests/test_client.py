"""tidings.client: the pure bookkeeping on its own, the reconnect loop against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import (
    MS,
    TIMEOUT,
    ServerThread,
    TestUser,
    api,
    browser_session,
    create_project,
    create_user,
    eventually,
    upload,
)
from tests.proxy import silencing_proxy
from tidings import TidingsClient
from tidings.client import (
    Backoff,
    ClientState,
    Closed,
    SubscriptionEnded,
    SubscriptionError,
    Unauthorized,
    decode_frame,
    should_reconnect,
    websocket_url,
)
from tidings.codes import CLOSE_CODES, CloseCode
from tidings.schema import (
    ConnectionEstablished,
    ErrorMessage,
    FileUploaded,
    Received,
    Subscribed,
    UnknownMessage,
)

# -- pure parts --------------------------------------------------------------------------


def test_should_reconnect_reads_the_table() -> None:
    for code, info in CLOSE_CODES.items():
        assert should_reconnect(int(code)) is info.reconnect
    assert should_reconnect(None)  # refused or dropped
    assert should_reconnect(1011)  # not in the table: transient
    assert not should_reconnect(4401)
    assert should_reconnect(1012)


def test_backoff_grows_with_jitter_and_resets() -> None:
    b = Backoff(base=1.0, cap=8.0, rng=lambda lo, hi: hi)
    assert [b.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    b.reset()
    assert b.next_delay() == 1.0
    low = Backoff(base=1.0, cap=8.0, rng=lambda lo, hi: lo)
    assert [low.next_delay() for _ in range(3)] == [0.5, 1.0, 2.0]
    real = Backoff(base=0.1, cap=1.0)
    for _ in range(100):
        assert 0.0 < real.next_delay() <= 1.0  # huge attempt counts do not overflow


def test_state_dedupes_by_seq_per_project() -> None:
    s = ClientState()
    assert s.want("p", None) == {"type": "subscribe", "project_id": "p"}
    assert s.receive({"type": "subscribed", "project_id": "p", "seq": 3})
    assert s.last == {"p": 3}
    assert not s.receive({"type": "file.uploaded", "project_id": "p", "seq": 3})
    assert s.receive({"type": "file.uploaded", "project_id": "p", "seq": 4})
    assert not s.receive({"type": "file.uploaded", "project_id": "p", "seq": 4})
    assert s.receive({"type": "file.uploaded", "project_id": "q", "seq": 1})  # own counter
    assert s.receive({"type": "process.progress", "project_id": "p", "progress": 0.5})
    assert s.receive({"type": "process.progress", "project_id": "p", "progress": 0.5})
    # Presence is ephemeral: every one is passed on, and the position is untouched.
    user = {"id": "u", "username": "bob"}
    for kind in ("presence.joined", "presence.left", "presence.joined"):
        assert s.receive({"type": kind, "project_id": "p", "user": user})
    assert not s.receive({"type": "system.heartbeat"})
    assert not s.receive({"type": "pong"})
    assert s.receive({"type": "connection.established"})
    assert s.resubscribe() == {"type": "subscribe", "projects": [{"project_id": "p", "since": 4}]}


def test_state_resume_and_recovery() -> None:
    s = ClientState()
    assert s.want("p", 7) == {"type": "subscribe", "project_id": "p", "since": 7}
    assert s.receive({"type": "subscribed", "project_id": "p", "seq": 9, "recovered": True})
    assert s.last["p"] == 7  # the replay of 8 and 9 follows
    assert s.receive({"type": "file.uploaded", "project_id": "p", "seq": 8})
    # Past retention, or a `since` from another history: start over from the server's seq.
    assert s.receive({"type": "subscribed", "project_id": "p", "seq": 2, "recovered": False})
    assert s.last["p"] == 2
    assert s.receive({"type": "file.uploaded", "project_id": "p", "seq": 3})
    # A fresh subscribe never moves the cursor backwards.
    assert s.receive({"type": "subscribed", "project_id": "p", "seq": 1})
    assert s.last["p"] == 3


def test_state_moves_cursors_only_from_the_subscription_stream() -> None:
    s = ClientState()
    # Not subscribed: project-list events pass through and move no cursor.
    assert s.receive({"type": "project.updated", "project_id": "p", "seq": 12})
    assert s.last == {}
    s.want("p", 10)
    # Sent to the project list before the server took the subscribe: the replay that
    # follows `subscribed` delivers it, in order, so it is dropped here.
    assert not s.receive({"type": "project.updated", "project_id": "p", "seq": 12})
    assert s.last == {"p": 10}
    assert s.receive({"type": "subscribed", "project_id": "p", "seq": 12, "recovered": True})
    assert s.receive({"type": "project.updated", "project_id": "p", "seq": 11})
    assert s.receive({"type": "project.updated", "project_id": "p", "seq": 12})
    assert s.last == {"p": 12}
    # A reconnect starts a new stream: nothing counts until its `subscribed`.
    assert s.resubscribe() == {"type": "subscribe", "projects": [{"project_id": "p", "since": 12}]}
    assert not s.receive({"type": "project.updated", "project_id": "p", "seq": 14})
    assert s.receive({"type": "subscribed", "project_id": "p", "seq": 14, "recovered": True})
    assert s.receive({"type": "project.updated", "project_id": "p", "seq": 13})
    assert s.receive({"type": "project.updated", "project_id": "p", "seq": 14})
    # Unsubscribed: back to the project-list audience.
    s.drop("p")
    assert s.receive({"type": "project.updated", "project_id": "p", "seq": 15})
    assert s.last == {"p": 14}


def test_state_forgets_ended_subscriptions() -> None:
    s = ClientState()
    for p in ("a", "b", "c", "d"):
        s.want(p, None)
    assert s.receive({"type": "unsubscribed", "project_id": "a", "reason": "access_revoked"})
    assert s.receive({"type": "error", "code": "not_found", "project_id": "b"})
    assert s.receive({"type": "subscribed", "project_id": "c", "seq": 4})
    assert s.receive({"type": "project.deleted", "project_id": "c", "seq": 5})
    assert s.subscriptions == {"d"}
    assert s.drop("d") == {"type": "unsubscribe", "project_id": "d"}
    assert s.resubscribe() is None
    # An unsubscribed reply to our own request keeps nothing either.
    assert s.receive({"type": "unsubscribed", "project_id": "d"})
    assert s.receive({"type": "error", "code": "bad_request"})


def test_state_asks_for_snapshots_and_knows_what_it_has_seen() -> None:
    s = ClientState()
    assert s.want("p", None, snapshot=True) == {
        "type": "subscribe",
        "project_id": "p",
        "snapshot": True,
    }
    assert not s.seen("p", 0)
    assert s.receive({"type": "subscribed", "project_id": "p", "seq": 6, "snapshot": {}})
    assert s.seen("p", 6) and not s.seen("p", 7)  # the snapshot covers what came before
    assert s.receive({"type": "file.uploaded", "project_id": "p", "seq": 7})
    assert s.seen("p", 7)
    # A reconnect resumes from there, and asks for the state should it not recover.
    assert s.resubscribe() == {
        "type": "subscribe",
        "projects": [{"project_id": "p", "since": 7, "snapshot": True}],
    }
    # Subscribing afresh with a snapshot and no since starts from the new state …
    assert s.want("p", None, snapshot=True) == {
        "type": "subscribe",
        "project_id": "p",
        "snapshot": True,
    }
    # … with since, it resumes from there; without snapshot, no state is asked for.
    assert s.want("p", 3, snapshot=True)["since"] == 3
    assert s.want("p", None) == {"type": "subscribe", "project_id": "p", "since": 3}
    s.want("q", None, snapshot=True)
    assert s.receive({"type": "error", "code": "not_found", "project_id": "q"})
    s.want("q", None)
    # Every subscription in one message, each entry as its own subscribe would say it.
    assert s.resubscribe() == {
        "type": "subscribe",
        "projects": [{"project_id": "p", "since": 3}, {"project_id": "q"}],
    }


def test_url_and_frames() -> None:
    assert websocket_url("http://h:1") == "ws://h:1/ws"
    assert websocket_url("https://h/") == "wss://h/ws"
    assert websocket_url("ws://h/ws") == "ws://h/ws"
    assert decode_frame(b'{"type":"a"}') == [{"type": "a"}]
    assert decode_frame('[{"type":"a"},{"type":"b"},3]') == [{"type": "a"}, {"type": "b"}]


# -- against a real server ---------------------------------------------------------------


def fast_backoff() -> Backoff:
    return Backoff(base=20 * MS, cap=250 * MS)


async def next_event(
    client: TidingsClient, predicate: Callable[[Received], bool], timeout: float = TIMEOUT
) -> Received:
    async with asyncio.timeout(timeout):
        async for event in client:
            if predicate(event):
                return event
    raise AssertionError("iteration ended")


def file_events(seen: list[Received]) -> list[tuple[str, int]]:
    return [(e.file.name, e.seq) for e in seen if isinstance(e, FileUploaded)]


async def test_token_subscribe_and_receive(server: ServerThread, alice: TestUser, alice_api):
    project = await create_project(alice_api)
    async with TidingsClient(server.url, token=alice.token, backoff=fast_backoff()) as client:
        hello = await next_event(client, lambda e: True)
        assert isinstance(hello, ConnectionEstablished)
        assert hello.user.username == "alice"
        assert hello.heartbeat_interval == client.heartbeat_interval == 30
        reply = await client.subscribe(project["id"])
        assert isinstance(reply, Subscribed)
        assert (reply.project_id, reply.seq, reply.recovered) == (project["id"], 1, None)
        assert (await upload(alice_api, project["id"], "x.txt")).status_code == 201
        event = await next_event(client, lambda e: e.type == "file.uploaded")
        assert isinstance(event, FileUploaded)
        assert event.seq == 2 and event.file.name == "x.txt" and event.file.size == 5
        # Item access reads the message as it came, for code written against dicts.
        assert event["file"]["name"] == "x.txt" and event.get("recovered") is None
        assert client.state.last[project["id"]] == 2
        await client.unsubscribe(project["id"])
        assert client.state.subscriptions == set()
        with pytest.raises(SubscriptionError) as info:
            await client.subscribe("no-such-project")
        assert isinstance(info.value.message, ErrorMessage)
        assert info.value.message.code == "not_found" == info.value.message["code"]


async def test_cookie_auth(server: ServerThread, alice: TestUser) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        login = await http.post(
            "/api/auth/login", json={"username": "alice", "password": alice.password}
        )
        assert login.status_code == 200
        cookie = login.cookies["tidings_session"]
    async with TidingsClient(server.ws_url, cookie=cookie) as client:
        hello = await next_event(client, lambda e: True)
        assert hello["user"]["username"] == "alice"


async def test_bad_credentials_stop_at_once(server: ServerThread) -> None:
    client = TidingsClient(server.url, token="tid_wrong", backoff=fast_backoff())
    with pytest.raises(Unauthorized):
        await client.connect()


async def test_revoked_session_ends_iteration(server: ServerThread, alice: TestUser) -> None:
    async with browser_session(server, alice) as http:
        created = await http.post("/api/auth/tokens", json={"name": "short-lived"})
        token = created.json()
    async with TidingsClient(server.url, token=token["token"], backoff=fast_backoff()) as c:
        await next_event(c, lambda e: e["type"] == "connection.established")
        async with api(server, alice) as http:
            assert (await http.delete(f"/api/auth/tokens/{token['id']}")).status_code == 204
        with pytest.raises(Unauthorized):
            await next_event(c, lambda e: False)
        with pytest.raises(Unauthorized):  # and stays ended
            await next_event(c, lambda e: False)
        assert c.reconnects == 0


async def test_events_during_restart_arrive_once(
    server: ServerThread, alice: TestUser, alice_api
) -> None:
    """The server stops (1012), another node takes writes meanwhile, the server comes back
    on the same port: the client reconnects, resumes, gets each missed event exactly once."""
    project = await create_project(alice_api)
    pid = project["id"]
    seen: list[dict[str, Any]] = []
    async with TidingsClient(server.url, token=alice.token, backoff=fast_backoff()) as client:
        await client.subscribe(pid)
        await upload(alice_api, pid, "before.txt")
        seen.append(await next_event(client, lambda e: e["type"] == "file.uploaded"))

        await server.stop_async()
        other = ServerThread(server.settings)  # same database, another port
        other.start()
        try:
            async with api(other, alice) as http:
                for name in ("during-1.txt", "during-2.txt"):
                    assert (await upload(http, pid, name)).status_code == 201
        finally:
            await other.stop_async()
        server.start()

        await next_event(client, lambda e: e["type"] == "connection.established")
        resumed = await next_event(client, lambda e: e["type"] == "subscribed")
        assert resumed["recovered"] is True and resumed["seq"] == 4
        await upload(alice_api, pid, "after.txt")
        async with asyncio.timeout(TIMEOUT):
            async for event in client:
                seen.append(event)
                if event.get("seq") == 5:
                    break
        assert client.reconnects >= 1
    assert file_events(seen) == [
        ("before.txt", 2),
        ("during-1.txt", 3),
        ("during-2.txt", 4),
        ("after.txt", 5),
    ]


def test_a_restart_spread_is_random_up_to_the_suggestion_and_the_cap() -> None:
    b = Backoff(base=1.0, cap=8.0, rng=lambda lo, hi: hi)
    assert (b.spread(2.5), b.spread(60.0)) == (2.5, 8.0)
    assert Backoff(rng=lambda lo, hi: lo).spread(2.5) == 0.0
    assert b.attempt == 0  # a restart is not a failure: the back-off is not advanced


async def test_after_a_restart_the_first_reconnect_waits_within_the_suggested_spread(
    make_server: Any,
) -> None:
    """The server stops with 1012 and `reconnect_within_ms=1500`: the first reconnect
    waits a random time in [0, 1.5 s], drawn from the back-off's generator."""
    srv = make_server(ws_reconnect_spread=1.5)
    user = await create_user(srv.settings)
    async with api(srv, user) as http:
        pid = (await create_project(http))["id"]
    drawn: list[tuple[float, float]] = []

    def rng(lo: float, hi: float) -> float:
        drawn.append((lo, hi))
        return lo + (hi - lo) / 10

    backoff = Backoff(base=20 * MS, cap=5.0, rng=rng)
    async with TidingsClient(srv.url, token=user.token, backoff=backoff) as client:
        await client.subscribe(pid)
        assert drawn == []
        await srv.stop_async()
        await eventually(lambda: bool(drawn))
        assert drawn[0] == (0.0, 1.5)
        srv.start()
        resumed = await next_event(
            client, lambda e: e["type"] == "subscribed" and client.reconnects
        )
        assert (resumed["project_id"], resumed["recovered"]) == (pid, True)
        # Attempts that failed while the server was down backed off as usual.
        assert all(hi <= 5.0 and lo == hi / 2 for lo, hi in drawn[1:])


async def test_subscribe_while_disconnected_is_sent_on_reconnect(
    server: ServerThread, alice: TestUser, alice_api
) -> None:
    project = await create_project(alice_api)
    async with TidingsClient(server.url, token=alice.token, backoff=fast_backoff()) as client:
        await server.stop_async()
        await eventually(lambda: not client.connected.is_set())
        pending = asyncio.create_task(client.subscribe(project["id"]))
        server.start()
        async with asyncio.timeout(TIMEOUT):
            reply = await pending
        assert reply["seq"] == 1


async def test_unrecovered_is_surfaced(make_server, alice_api) -> None:
    srv = make_server(event_history=2)
    user = await create_user(srv.settings, "carol")
    async with api(srv, user) as http:
        project = await create_project(http)
        for i in range(4):
            await upload(http, project["id"], f"f{i}.txt")
    lost: list[str] = []
    client = TidingsClient(srv.url, token=user.token, on_unrecovered=lost.append)
    async with client:
        reply = await client.subscribe(project["id"], since=1)
        assert reply.recovered is False and reply.seq == 5
        assert lost == [project["id"]]
        assert client.state.last[project["id"]] == 5


async def test_normal_close_ends_iteration() -> None:
    """A server that closes with 1000 (reconnect: false in the table) is not retried;
    messages batched with the hello in the first frame are not lost."""
    import websockets

    first = [{"type": "connection.established"}, {"type": "project.updated", "project_id": "p"}]

    async def handler(ws: Any) -> None:
        await ws.send(orjson.dumps(first).decode())
        await ws.close(CloseCode.NORMAL)

    async with websockets.serve(handler, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        async with TidingsClient(f"ws://127.0.0.1:{port}/ws", backoff=fast_backoff()) as c:
            received = [await anext(c), await anext(c)]
            assert [m.raw for m in received] == first
            # Neither fits its declared shape: handed out untyped, not dropped.
            assert [type(m) for m in received] == [UnknownMessage, UnknownMessage]
            with pytest.raises(Closed) as info:
                await next_event(c, lambda e: False)
            assert info.value.code == 1000
            assert c.reconnects == 0


async def test_a_silent_connection_is_given_up_and_resumed(make_server) -> None:
    """A connection that stays open but carries nothing (a NAT forgot it, a laptop slept)
    is dropped after twice the heartbeat interval; the client reconnects and resumes, and
    an event committed meanwhile arrives."""
    interval = 1000 * MS
    srv = make_server(heartbeat_interval=interval)
    user = await create_user(srv.settings, "carol")
    loop = asyncio.get_running_loop()
    async with api(srv, user) as http, silencing_proxy(srv.port) as proxy:
        pid = (await create_project(http))["id"]
        client = TidingsClient(proxy.ws_url, token=user.token, backoff=fast_backoff())
        async with client:
            await next_event(client, lambda e: e.type == "connection.established")
            assert client.heartbeat_interval == pytest.approx(interval)
            await client.subscribe(pid)
            # Heartbeats keep a live connection: nothing happens for a while (a wait for
            # nothing to happen can only be a wait of some length).
            await asyncio.sleep(2.5 * interval)
            assert client.reconnects == 0 and proxy.connections == 1

            proxy.silence()
            silenced_at = loop.time()
            assert (await upload(http, pid, "meanwhile.txt")).status_code == 201
            await next_event(client, lambda e: e.type == "connection.established")
            assert loop.time() - silenced_at < 3 * interval
            event = await next_event(client, lambda e: isinstance(e, FileUploaded))
            assert isinstance(event, FileUploaded)
            assert (event.file.name, event.seq) == ("meanwhile.txt", 2)
            assert client.reconnects == 1 and proxy.connections == 2


async def test_wait_for_returns_once_the_event_is_delivered(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient
) -> None:
    """Read-your-writes: the app uploads over REST, waits for the seq the answer tells,
    and then finds its own upload among the events, once."""
    pid = (await create_project(alice_api))["id"]
    async with TidingsClient(server.url, token=alice.token, backoff=fast_backoff()) as client:
        with pytest.raises(SubscriptionEnded):
            await client.wait_for(pid, 2)  # no subscription: nothing would ever come
        reply = await client.subscribe(pid, snapshot=True)
        assert reply["snapshot"]["files"] == []
        await client.wait_for(pid, 1)  # covered by the snapshot: at once
        made = await upload(alice_api, pid, "mine.txt")
        seq = int(made.headers["Tidings-Seq"])
        async with asyncio.timeout(TIMEOUT):
            await client.wait_for(pid, seq)
        assert client.state.seen(pid, seq)
        # Already delivered: the event is waiting in the iteration, exactly once.
        event = await next_event(client, lambda e: e["type"] == "file.uploaded")
        assert (event["seq"], event["file"]["name"]) == (seq, "mine.txt")
        # A wait for an event that never comes ends with the subscription.
        waiting = asyncio.create_task(client.wait_for(pid, seq + 5))
        assert (await alice_api.delete(f"/api/projects/{pid}")).status_code == 204
        with pytest.raises(SubscriptionEnded):
            await asyncio.wait_for(waiting, TIMEOUT)
        # And with an unsubscribe.
        other = (await create_project(alice_api))["id"]
        await client.subscribe(other)
        waiting = asyncio.create_task(client.wait_for(other, 9))
        await asyncio.sleep(0)
        await client.unsubscribe(other)
        with pytest.raises(SubscriptionEnded):
            await asyncio.wait_for(waiting, TIMEOUT)


async def test_a_resume_that_cannot_recover_brings_the_state(make_server: Any) -> None:
    server = make_server(event_history=2)
    alice = await create_user(server.settings, "alice")
    async with api(server, alice) as http:
        pid = (await create_project(http))["id"]
        async with TidingsClient(server.url, token=alice.token, backoff=fast_backoff()) as client:
            reply = await client.subscribe(pid, snapshot=True)
            assert (reply["seq"], reply["snapshot"]["project"]["id"]) == (1, pid)
            await server.stop_async()
            other = ServerThread(server.settings)  # same database: writes while we are away
            other.start()
            try:
                async with api(other, alice) as elsewhere:
                    for name in ("a", "b", "c", "d"):
                        assert (await upload(elsewhere, pid, name)).status_code == 201
            finally:
                await other.stop_async()
            server.start()
            resumed = await next_event(client, lambda e: "recovered" in e)
            assert (resumed["recovered"], resumed["seq"]) == (False, 5)
            assert [f["name"] for f in resumed["snapshot"]["files"]] == ["a", "b", "c", "d"]
            made = await upload(http, pid, "e")
            async with asyncio.timeout(TIMEOUT):
                await client.wait_for(pid, int(made.headers["Tidings-Seq"]))
