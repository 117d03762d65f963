"""A client that stops reading must never hold anyone else up, nor grow server memory."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import orjson
import pytest
import websockets

from tests.conftest import (
    MS,
    TIMEOUT,
    ServerThread,
    api,
    connected,
    create_project,
    create_user,
    eventually,
    recv_until,
    send,
    serve,
    subscribe,
    ws_connect,
)
from tidings import Settings

EVENT_BYTES = 256 * 1024
MiB_TEXT = 1024 * 1024 - 16  # a description just under the 1 MiB limit


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
    srv = make_server(ws_max_queue_bytes=1024 * 1024, ws_close_timeout=2000 * MS)
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
            assert time.monotonic() - started < 5000 * MS
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
    srv = make_server(ws_max_queue_bytes=1024 * 1024, ws_close_timeout=30_000 * MS)
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
        # 20 MB: more than the socket buffers take (Linux: up to 4 MiB), so updates must
        # wait in the queue even when the broker spreads the burst out (Redis: one round
        # trip per publish) instead of handing it over at once (memory).
        for i in range(1, published + 1):
            body = {"process_id": "p1", "progress": i / published, "message": "x" * 10_000}
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


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(300)
async def test_replays_to_clients_that_never_read_stay_bounded(
    tmp_path: Path, database_url: str
) -> None:
    """A member logs 40 events of 1 MiB, then opens sockets that subscribe from 0 and
    never read: each replay reads the log only as fast as its connection's queue drains,
    in pages bounded by bytes, so five of them cost the server tens of MiB at most (not
    a 500-event page each), while a reading client gets all 40 in order."""
    node = await serve(
        tmp_path / "data",
        database_url=database_url,
        create_admin="false",
        ws_max_connections_per_user="100",
    )
    try:
        await node.read_until("Uvicorn running on")
        settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
        alice = await create_user(settings, "alice")
        async with httpx.AsyncClient(
            base_url=node.url, headers={"Authorization": f"Bearer {alice.token}"}, timeout=TIMEOUT
        ) as client:
            pid = (await client.post("/api/projects", json={"name": "big"})).json()["id"]
            for i in range(40):
                body = {"description": f"{i:04d}" + "x" * MiB_TEXT}
                assert (await client.patch(f"/api/projects/{pid}", json=body)).status_code == 200
        gc_settle = rss_bytes(node.proc.pid)
        url = node.url.replace("http", "ws") + "/ws"
        headers = {"Authorization": f"Bearer {alice.token}"}
        stalled = []
        for _ in range(5):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", int(node.url.rsplit(":", 1)[1])))
            ws = await websockets.connect(
                url, sock=sock, additional_headers=headers, max_size=None, max_queue=None
            )
            await ws.send(orjson.dumps({"type": "subscribe", "project_id": pid, "since": 0}))
            ws.transport.pause_reading()
            stalled.append(ws)
        reader = await websockets.connect(url, additional_headers=headers, max_size=None)
        await reader.send(orjson.dumps({"type": "subscribe", "project_id": pid, "since": 0}))
        seqs = []
        async with asyncio.timeout(TIMEOUT * 6):
            while len(seqs) < 41:
                message = orjson.loads(await reader.recv())
                if "seq" in message and message["type"] != "subscribed":
                    seqs.append(message["seq"])
        assert seqs == list(range(1, 42))
        grown = rss_bytes(node.proc.pid) - gc_settle
        assert grown < 64 * 1024 * 1024, f"RSS grew by {grown / 2**20:.0f} MiB"
        for ws in [reader, *stalled]:
            ws.transport.abort()
    finally:
        await node.stop()
