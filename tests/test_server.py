"""/ws end to end under tidings' transport (detached sessions) and uvicorn's own protocol."""

from __future__ import annotations

import asyncio
import gc
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator

import pytest
import websockets

from tests.conftest import (
    TIMEOUT,
    ServerThread,
    api,
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
from tidings import Settings
from tidings.codes import reconnect_within
from tidings.server import uvicorn_options


@pytest.fixture(params=["tidings", "plain"])
async def any_server(
    request: pytest.FixtureRequest, settings: Settings
) -> AsyncIterator[ServerThread]:
    """The same app under tidings' transport and under uvicorn's own WebSocket protocol."""
    ws = uvicorn_options(settings)["ws"] if request.param == "tidings" else "websockets-sansio"
    srv = ServerThread(settings, ws=ws)
    srv.start()
    try:
        yield srv
    finally:
        await srv.stop_async()


async def test_idle_connections_hold_no_task(server: ServerThread) -> None:
    alice = await create_user(server.settings, "alice")
    async with api(server, alice) as client:
        project = await create_project(client)
        sockets = [await connected(server, alice) for _ in range(5)]
        for ws in sockets:
            assert (await subscribe(ws, project["id"]))["type"] == "subscribed"
        # Each endpoint returned once its connection was handed over.
        await eventually(lambda: not server.asgi_tasks)
        assert len(server.services.hub.connections) == 5
        assert (await upload(client, project["id"], "a.txt")).status_code == 201
    for ws in sockets:
        event = await recv_until(ws, lambda m: m["type"] == "file.uploaded")
        assert event["file"]["name"] == "a.txt"
        await send(ws, {"type": "ping", "id": "p"})
        assert (await recv_until(ws, lambda m: m["type"] == "pong"))["id"] == "p"
        await ws.close()
    await eventually(lambda: not server.services.hub.connections)


async def test_messages_sent_at_once_are_answered_in_order(any_server: ServerThread) -> None:
    alice = await create_user(any_server.settings, "alice")
    async with api(any_server, alice) as client:
        project = await create_project(client)
    ws = await ws_connect(any_server, alice)
    # Sent before reading anything: some arrive before the endpoint hands the connection
    # over, the rest while the subscribe is still reading the database.
    for message in (
        {"type": "subscribe", "project_id": project["id"], "id": 1},
        {"type": "ping", "id": 2},
        {"type": "unsubscribe", "project_id": project["id"], "id": 3},
        {"type": "subscribe", "project_id": project["id"], "id": 4},
        {"type": "ping", "id": 5},
    ):
        await send(ws, message)
    assert (await recv(ws))["type"] == "connection.established"
    replies = [await recv(ws) for _ in range(5)]
    assert [(m["type"], m["id"]) for m in replies] == [
        ("subscribed", 1),
        ("pong", 2),
        ("unsubscribed", 3),
        ("subscribed", 4),
        ("pong", 5),
    ]


async def test_events_errors_and_close_on_either_protocol(any_server: ServerThread) -> None:
    alice = await create_user(any_server.settings, "alice")
    async with api(any_server, alice) as client:
        project = await create_project(client)
        ws = await connected(any_server, alice)
        assert (await subscribe(ws, project["id"]))["seq"] == 1
        assert (await upload(client, project["id"], "b.txt")).status_code == 201
        event = await recv_until(ws, lambda m: m["type"] == "file.uploaded")
        assert (event["seq"], event["file"]["name"]) == (2, "b.txt")
    await ws.send(b"\xff\xfe not json")  # a binary frame: answered, not fatal
    assert (await recv(ws))["code"] == "bad_request"
    await ws.send("x" * (any_server.settings.ws_max_message_bytes + 1))
    assert await closed_with(ws) == 1009
    await eventually(lambda: not any_server.services.hub.connections)


async def test_text_frames_must_be_utf8(server: ServerThread) -> None:
    alice = await create_user(server.settings, "alice")
    ws = await connected(server, alice)
    # websockets refuses to send invalid UTF-8 as text: frame it by hand (masked, zero key).
    ws.transport.write(bytes((0x81, 0x80 | 1, 0, 0, 0, 0)) + b"\xff")
    assert await closed_with(ws) == 1007
    await eventually(lambda: not server.services.hub.connections)


async def test_the_close_timeout_setting_reaches_the_transport(make_server) -> None:
    """On shutdown the transport closes every socket with 1012 and drops a peer that does
    not answer within TIDINGS_WS_CLOSE_TIMEOUT, not the transport's default of 10 s (the
    setting travels in the lifespan state)."""
    srv = make_server(ws_close_timeout=0.2)
    alice = await create_user(srv.settings, "alice")
    ws = await connected(srv, alice)
    ws.transport.pause_reading()  # the close frame is never read, so never answered
    started = time.monotonic()
    await srv.stop_async()
    assert time.monotonic() - started < 5.0


async def test_a_node_collects_garbage_less_often_while_it_runs(make_server) -> None:
    """TIDINGS_GC_THRESHOLD sets the young generation's threshold for the node's life;
    the interpreter's setting comes back when it stops."""
    before = gc.get_threshold()
    srv = make_server(gc_threshold=12_345)
    assert gc.get_threshold() == (12_345, *before[1:])
    await srv.stop_async()
    assert gc.get_threshold() == before


async def test_connections_beyond_the_cap_get_503_before_the_upgrade(make_server) -> None:
    """TIDINGS_MAX_CONNECTIONS bounds what idle or half-open TCP connections can hold."""
    srv = make_server(max_connections=4)
    alice = await create_user(srv.settings, "alice")
    held = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
    try:
        async with api(srv) as client:
            response = await client.get("/healthz")
            assert response.status_code == 503
            with pytest.raises(websockets.InvalidStatus) as refused:
                await ws_connect(srv, alice)
            assert refused.value.response.status_code == 503
    finally:
        for sock in held:
            sock.close()
    async with api(srv) as client:
        async with asyncio.timeout(TIMEOUT):
            while (await client.get("/healthz")).status_code != 200:
                await asyncio.sleep(0.02)
    await connected(srv, alice)


async def test_a_stopping_node_suggests_a_reconnect_spread(make_server) -> None:
    srv = make_server(ws_reconnect_spread=2.5)
    alice = await create_user(srv.settings, "alice")
    ws = await connected(srv, alice)
    await srv.stop_async()
    assert await closed_with(ws) == 1012
    assert ws.close_reason == "service restart; reconnect_within_ms=2500"
    assert reconnect_within(ws.close_reason) == 2.5


async def test_the_listen_backlog_setting_reaches_the_listening_socket(make_server) -> None:
    """TIDINGS_LISTEN_BACKLOG is the queue the kernel keeps for connections the node has
    not accepted yet: clients reconnecting at once after a restart wait there. uvicorn's
    own default (2,048) would be used without it. ``ss`` reads the listening socket's
    backlog from the kernel (its Send-Q column)."""
    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2) to read a listening socket's backlog")
    assert uvicorn_options(Settings(listen_backlog=321))["backlog"] == 321
    srv = make_server(listen_backlog=321)
    shown = await asyncio.to_thread(
        subprocess.run,
        ["ss", "-ltnH", f"sport = :{srv.port}"],
        capture_output=True,
        text=True,
        check=True,
    )
    listing = shown.stdout.split()
    assert listing[0] == "LISTEN"
    assert int(listing[2]) == 321  # State Recv-Q Send-Q …: Send-Q is the backlog
