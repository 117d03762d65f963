"""A client that stops reading must never hold anyone else up, nor grow server memory."""

from __future__ import annotations

import asyncio
import socket
import time

import websockets

from tests.conftest import (
    TIMEOUT,
    ServerThread,
    api,
    connected,
    create_project,
    create_user,
    eventually,
    recv_until,
    send,
    subscribe,
    ws_connect,
)

EVENT_BYTES = 256 * 1024


def slow_consumer_closes(server: ServerThread) -> float:
    registry = server.services.metrics.registry
    return registry.get_sample_value("tidings_ws_slow_consumer_closes_total") or 0.0


async def stalled_client(server: ServerThread, user, project_id: str):  # type: ignore[no-untyped-def]
    """A subscribed client with a tiny receive buffer that then stops reading its socket."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    ws = await ws_connect(server, user, sock=sock, max_size=None)
    hello = await recv_until(ws, lambda m: m["type"] == "connection.established")
    await subscribe(ws, project_id)
    ws.transport.pause_reading()
    return ws, server.services.hub.connections[hello["client_id"]]


async def test_stalled_client_is_cut_off_and_others_keep_flowing(make_server) -> None:
    srv = make_server(ws_max_queue_bytes=1024 * 1024, ws_close_timeout=2)
    user = await create_user(srv.settings)
    async with api(srv, user) as client:
        project = await create_project(client)
        pid = project["id"]
        stalled, stalled_conn = await stalled_client(srv, user, pid)
        fast = [await connected(srv, user, max_size=None) for _ in range(3)]
        for ws in fast:
            await subscribe(ws, pid)
        before = slow_consumer_closes(srv)
        hub = srv.services.hub
        peak_queue = 0
        for i in range(40):
            body = {"description": f"{i:04d}" + "x" * EVENT_BYTES}
            started = time.monotonic()
            assert (await client.patch(f"/api/projects/{pid}", json=body)).status_code == 200
            seq = i + 2
            for ws in fast:
                event = await recv_until(
                    ws, lambda m, seq=seq: m["type"] == "project.updated" and m["seq"] == seq
                )
                assert event["data"]["description"].startswith(f"{i:04d}")
            # Each event reaches every reading client promptly, stalled peer or not.
            assert time.monotonic() - started < 5.0
            peak_queue = max(peak_queue, stalled_conn.queue.nbytes)
        assert slow_consumer_closes(srv) == before + 1
        assert stalled_conn.close_code == 4008
        assert peak_queue <= srv.settings.ws_max_queue_bytes
        # The stalled connection is gone from the hub (its TCP connection dropped after the
        # close timeout, since it never read the close frame).
        await eventually(lambda: stalled_conn.client_id not in hub.connections)
        stalled.transport.resume_reading()
        try:
            async with asyncio.timeout(TIMEOUT):
                async for _ in stalled:
                    pass
        except websockets.ConnectionClosed:
            pass
        assert stalled.close_code in (4008, 1006)


async def test_stalled_client_that_wakes_up_sees_4008(make_server) -> None:
    srv = make_server(ws_max_queue_bytes=1024 * 1024, ws_close_timeout=30)
    user = await create_user(srv.settings)
    async with api(srv, user) as client:
        project = await create_project(client)
        pid = project["id"]
        stalled, _ = await stalled_client(srv, user, pid)
        before = slow_consumer_closes(srv)
        for i in range(40):
            body = {"description": f"{i:04d}" + "x" * EVENT_BYTES}
            await client.patch(f"/api/projects/{pid}", json=body)
            if slow_consumer_closes(srv) > before:
                break
        assert slow_consumer_closes(srv) == before + 1
    # Reading again lets the closing handshake through: the client learns why it was cut off
    # and can resume from its last seq.
    stalled.transport.resume_reading()
    try:
        async with asyncio.timeout(TIMEOUT):
            async for _ in stalled:
                pass
    except websockets.ConnectionClosed:
        pass
    assert stalled.close_code == 4008


async def test_progress_coalesces_for_a_slow_reader(server: ServerThread, alice, alice_api) -> None:
    project = await create_project(alice_api)
    pid = project["id"]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    ws = await ws_connect(server, alice, sock=sock)
    await recv_until(ws, lambda m: m["type"] == "connection.established")
    await subscribe(ws, pid)
    ws.transport.pause_reading()

    eventlog = server.services.eventlog
    published = 2000

    async def burst() -> None:
        for i in range(1, published + 1):
            body = {"process_id": "p1", "progress": i / published, "message": "x" * 1000}
            await eventlog.publish_ephemeral(pid, "process.progress", body, coalesce="progress:p1")

    await server.run_in_loop(burst())
    ws.transport.resume_reading()
    seen: list[float] = []
    while not seen or seen[-1] < 1.0:
        message = await recv_until(ws, lambda m: m["type"] == "process.progress")
        seen.append(message["progress"])
    assert seen == sorted(set(seen)), "progress went backwards or repeated"
    assert len(seen) < published  # queued updates were coalesced, not all delivered
    await send(ws, {"type": "ping"})
    assert (await recv_until(ws, lambda m: m["type"] == "pong"))["type"] == "pong"
