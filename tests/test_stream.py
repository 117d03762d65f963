"""``GET /api/stream``: Server-Sent Events with the socket's guarantees, over real servers.

The stream is read with httpx as a browser's EventSource reads it (``event:``, ``id:``,
``data:`` lines, blank line ends an event); a reconnect sends the last ``id`` back as
``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
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
    on_stacks,
    upload,
)
from tidings import Settings
from tidings.frames import Frame
from tidings.stream import BadCursor, EventStreamSocket, decode_cursor, encode_cursor

PATH = "/api/stream"


@dataclass
class Event:
    type: str
    data: dict[str, Any]
    id: str | None
    comments: list[str] = field(default_factory=list)


class Reader:
    """One open stream, parsed event by event (comments kept for the next event)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.last_id: str | None = None
        self.comments: list[str] = []  # every comment line so far

    async def next(self, timeout: float = TIMEOUT) -> Event:
        async with asyncio.timeout(timeout):
            kind, data, event_id, comments = None, [], None, []
            async for line in self.lines:
                if line.startswith(":"):
                    comments.append(line[1:].strip())
                    self.comments.append(line[1:].strip())
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif line == "" and kind is not None:
                    if event_id is not None:
                        self.last_id = event_id
                    return Event(kind, orjson.loads("\n".join(data)), event_id, comments)
            raise EOFError("the stream ended")

    async def until(self, predicate: Callable[[Event], bool]) -> Event:
        while True:
            event = await self.next()
            if predicate(event):
                return event


@contextlib.asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, *projects: str, last_id: str | None = None, **params: Any
) -> AsyncIterator[Reader]:
    headers = {"Last-Event-ID": last_id} if last_id is not None else {}
    query = [("project", p) for p in projects] + list(params.items())
    async with client.stream("GET", PATH, params=query, headers=headers) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        yield Reader(response)


async def publish(client: httpx.AsyncClient, project_id: str, n: int) -> int:
    response = await client.post(
        f"/api/projects/{project_id}/events", json={"type": "custom.tick", "data": {"n": n}}
    )
    assert response.status_code == 201, response.text
    return int(response.json()["seq"])


# -- the cursor, on its own ----------------------------------------------------------------


def test_cursor_round_trip() -> None:
    positions = {"a1": 0, "b-2_": 2**63 - 1}
    assert decode_cursor(encode_cursor(positions), 10) == positions


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not base64!",
        "x" * 70_000,
        _b64(b"not json"),
        _b64(b"[1]"),
        _b64(b'{"v":2,"p":{}}'),
        _b64(b'{"v":true,"p":{}}'),
        _b64(b'{"v":1,"p":{},"x":1}'),
        _b64(b'{"v":1,"p":[]}'),
        _b64(b'{"v":1,"p":{"a b":1}}'),
        _b64(b'{"v":1,"p":{"a":-1}}'),
        _b64(b'{"v":1,"p":{"a":true}}'),
        _b64(b'{"v":1,"p":{"a":1.5}}'),
        _b64(b'{"v":1,"p":{"a":9223372036854775808}}'),
        _b64(b'{"v":1,"p":{"a":1,"b":2,"c":3}}'),  # more projects than allowed
        encode_cursor({"a": 1}) + "=",  # not canonical
        encode_cursor({"a": 1})[:-1] + "*",
    ],
)
def test_cursor_refuses_what_it_did_not_write(text: str) -> None:
    with pytest.raises(BadCursor):
        decode_cursor(text, 2)


def test_frames_become_events_and_move_the_cursor() -> None:
    socket = EventStreamSocket(["a", "b"], {"a": 3, "z": 9})  # z: not in the stream
    resumed = '{"type":"subscribed","project_id":"a","seq":7,"recovered":true}'
    fresh = '{"type":"subscribed","project_id":"b","seq":5}'
    text = socket.encode(
        [
            Frame(resumed, "subscribed"),
            Frame(fresh, "subscribed"),
            Frame('{"type":"file.uploaded","seq":4}', "file.uploaded", "a", 4),
            Frame('{"type":"project.created","seq":1}', "project.created", "other", 1),
            Frame('{"type":"system.heartbeat"}', "system.heartbeat"),
            Frame('{"x":\n1}', "custom.odd"),
        ]
    ).decode()
    at_a3 = encode_cursor({"a": 3})  # resuming: a stays at 3 until its replay moves it
    at_b5 = encode_cursor({"a": 3, "b": 5})
    at_a4 = encode_cursor({"a": 4, "b": 5})
    assert text == (
        f"event: subscribed\nid: {at_a3}\ndata: {resumed}\n\n"
        f"event: subscribed\nid: {at_b5}\ndata: {fresh}\n\n"
        f'event: file.uploaded\nid: {at_a4}\ndata: {{"type":"file.uploaded","seq":4}}\n\n'
        'event: project.created\ndata: {"type":"project.created","seq":1}\n\n'
        ': heartbeat\nevent: system.heartbeat\ndata: {"type":"system.heartbeat"}\n\n'
        'event: custom.odd\ndata: {"x":\ndata: 1}\n\n'
    )


# -- one node ------------------------------------------------------------------------------


async def test_events_arrive_as_on_the_socket_with_a_cursor(make_server) -> None:
    server = make_server(heartbeat_interval=0.2)
    alice = await create_user(server.settings)
    async with api(server, alice) as client:
        project = await create_project(client)
        pid = project["id"]
        async with open_stream(client, pid) as stream:
            hello = await stream.next()
            assert hello.type == "connection.established" and hello.id is None
            assert hello.data["user"]["username"] == alice.username
            assert hello.data["heartbeat_interval"] == 0.2
            # (A heartbeat may come first: one every 0.2 s.)
            subscribed = await stream.until(lambda e: e.type != "system.heartbeat")
            assert subscribed.type == "subscribed"
            assert subscribed.data["project_id"] == pid and "recovered" not in subscribed.data
            assert subscribed.id is not None
            assert decode_cursor(subscribed.id, 10) == {pid: subscribed.data["seq"]}
            await upload(client, pid, "a.txt")
            uploaded = await stream.until(lambda e: e.type == "file.uploaded")
            assert uploaded.data["file"]["name"] == "a.txt"
            assert uploaded.data["seq"] == subscribed.data["seq"] + 1
            assert uploaded.id is not None
            assert decode_cursor(uploaded.id, 10) == {pid: uploaded.data["seq"]}
            beat = await stream.until(lambda e: e.type == "system.heartbeat")
            assert beat.id is None and "heartbeat" in beat.comments


async def test_cookie_authenticates_and_a_foreign_origin_is_refused(server, alice) -> None:
    async with browser_session(server, alice) as browser:
        project = await create_project(browser)
        async with open_stream(browser, project["id"]) as stream:
            assert (await stream.next()).type == "connection.established"
        foreign = {"Origin": "https://evil.example"}
        response = await browser.get(PATH, params={"project": project["id"]}, headers=foreign)
        assert response.status_code == 403
        assert response.json() == {"detail": "origin not allowed"}


async def test_a_revoked_session_ends_its_stream_with_4401(server, alice) -> None:
    async with browser_session(server, alice) as browser:
        async with open_stream(browser) as stream:
            assert (await stream.next()).type == "connection.established"
            assert (await browser.post("/api/auth/logout")).status_code == 204
            with pytest.raises(EOFError):
                await stream.next()
            assert stream.comments[-1] == "closed 4401 credentials revoked"
        # And the revoked cookie opens no new stream.
        again = await browser.get(PATH)
        assert again.status_code == 401


async def test_no_or_bad_credentials_get_401(server, alice) -> None:
    async with api(server) as anonymous:
        response = await anonymous.get(PATH)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        bad = await anonymous.get(PATH, headers={"Authorization": "Bearer tdg_nothing"})
        assert bad.status_code == 401


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ([("project", "a b")], "project: project_id must be"),
        ([("project", "a"), ("since", "b:1")], "since must be"),
        ([("project", "a"), ("since", "a:-1")], "since must be"),
        ([("project", "a"), ("since", "a")], "since must be"),
        ([("project", "a"), ("since", "a:²")], "since must be"),
        ([("project", "a"), ("since", "a:9223372036854775808")], "since must be"),
        ([("project", "a"), ("since", "a:" + "9" * 5000)], "since must be"),  # past int()'s cap
        ([("project", "a"), ("snapshot", "b")], "snapshot must name"),
        ([("project", str(i)) for i in range(3)], "at most 2 projects"),
    ],
)
async def test_bad_queries_get_400(make_server, params, detail) -> None:
    server = make_server(ws_max_subscriptions=2)
    alice = await create_user(server.settings)
    async with api(server, alice) as client:
        response = await client.get(PATH, params=params)
    assert response.status_code == 400
    assert response.json()["detail"].startswith(detail)


@on_stacks("sqlite-memory")
async def test_a_bad_last_event_id_gets_400(server, alice_api) -> None:
    project = await create_project(alice_api)
    for garbage in ("garbage", _b64(b'{"v":1,"p":{"x":"1"}}'), "é".encode()):
        response = await alice_api.get(
            PATH, params={"project": project["id"]}, headers={"Last-Event-ID": garbage}
        )
        assert response.status_code == 400
        assert "Last-Event-ID" in response.json()["detail"]


async def test_a_project_the_caller_cannot_see_is_skipped_with_not_found(
    server, alice_api, bob_api
) -> None:
    mine = await create_project(alice_api)
    theirs = await create_project(bob_api)
    async with open_stream(alice_api, "nosuchproject", theirs["id"], mine["id"]) as stream:
        await stream.next()  # connection.established
        for pid in ("nosuchproject", theirs["id"]):
            error = await stream.next()
            assert error.type == "error" and error.id is None
            assert error.data["code"] == "not_found" and error.data["project_id"] == pid
        subscribed = await stream.next()
        assert subscribed.type == "subscribed" and subscribed.data["project_id"] == mine["id"]
        await upload(bob_api, theirs["id"])
        await upload(alice_api, mine["id"])
        event = await stream.until(lambda e: e.type == "file.uploaded")
        assert event.data["project_id"] == mine["id"]
        assert decode_cursor(event.id or "", 10) == {mine["id"]: event.data["seq"]}


async def test_since_in_the_query_resumes_and_says_recovered(server, alice_api) -> None:
    project = await create_project(alice_api)
    pid = project["id"]
    first = await publish(alice_api, pid, 1)
    await publish(alice_api, pid, 2)
    async with open_stream(alice_api, pid, since=f"{pid}:{first}") as stream:
        subscribed = await stream.until(lambda e: e.type == "subscribed")
        assert subscribed.data["recovered"] is True
        # Resuming: the cursor stays where the client was until the replay moves it.
        assert decode_cursor(subscribed.id or "", 10) == {pid: first}
        replayed = await stream.next()
        assert replayed.data["seq"] == first + 1 and replayed.data["data"] == {"n": 2}


async def test_too_many_streams_of_one_user_get_429(make_server) -> None:
    server = make_server(ws_max_connections_per_user=1)
    alice = await create_user(server.settings)
    async with api(server, alice) as client:
        async with open_stream(client) as stream:
            await stream.next()
            response = await client.get(PATH)
            assert response.status_code == 429
        # The first one's end releases its place.
        hub = server.services.hub
        await eventually(lambda: hub.connections_of(alice.id) == 0)
        async with open_stream(client) as stream:
            assert (await stream.next()).type == "connection.established"


# -- resume with Last-Event-ID while events keep flowing -----------------------------------


async def _resume_while_flowing(first: ServerThread, second: ServerThread, user: TestUser):
    """Two projects get events all along (through both nodes); a client reads a stream
    from ``first``, drops it mid-flow and resumes on ``second`` with its last id: every
    project's events arrive exactly once, in order, with no gap."""
    async with api(first, user) as client_a, api(second, user) as client_b:
        pids = [(await create_project(client_a, f"p{i}"))["id"] for i in range(2)]
        total = 60
        last_seq: dict[str, int] = {}

        async def produce() -> None:
            for n in range(total):
                client = (client_a, client_b)[n % 2]
                pid = pids[(n // 2) % 2]
                last_seq[pid] = await publish(client, pid, n)

        seen: dict[str, list[int]] = {pid: [] for pid in pids}
        start: dict[str, int] = {}
        producer = asyncio.create_task(produce())
        try:
            async with open_stream(client_a, *pids) as stream:
                while sum(map(len, seen.values())) < total // 3:
                    event = await stream.next()
                    if event.type == "subscribed":  # ticks published before it do not come
                        start[event.data["project_id"]] = event.data["seq"]
                    if event.type == "custom.tick":
                        seen[event.data["project_id"]].append(event.data["seq"])
                last_id = stream.last_id
            assert last_id is not None
            assert not producer.done()  # the drop happened while events kept flowing
            recovered: dict[str, bool] = {}
            async with open_stream(client_b, *pids, last_id=last_id) as stream:
                # A project's replay may come before the next project's `subscribed`.
                # Every tick once: a gap never reaches the count, a duplicate fails below.
                expected = sum(total // 2 - (start[pid] - 1) for pid in pids)
                while len(recovered) < len(pids) or sum(map(len, seen.values())) < expected:
                    event = await stream.next()
                    if event.type == "subscribed":
                        recovered[event.data["project_id"]] = event.data["recovered"]
                    elif event.type == "custom.tick":
                        seen[event.data["project_id"]].append(event.data["seq"])
            await producer
            assert recovered == dict.fromkeys(pids, True)
        finally:
            producer.cancel()
        for pid in pids:
            # Every tick after the first stream's `subscribed`, once each.
            assert seen[pid] == list(range(start[pid] + 1, last_seq[pid] + 1)), pid


async def test_last_event_id_resumes_every_project_while_events_flow(server) -> None:
    user = await create_user(server.settings)
    await _resume_while_flowing(server, server, user)


@on_stacks("postgres-redis")
async def test_last_event_id_resumes_on_another_node(settings: Settings) -> None:
    a, b = ServerThread(settings), ServerThread(settings)
    a.start()
    b.start()
    try:
        user = await create_user(settings)
        await _resume_while_flowing(a, b, user)
    finally:
        await a.stop_async()
        await b.stop_async()


# -- back-pressure -------------------------------------------------------------------------


async def test_a_stream_that_stops_reading_is_ended_and_released(make_server) -> None:
    server = make_server(ws_max_queue_messages=20, ws_close_timeout=0.5)
    alice = await create_user(server.settings)
    async with api(server, alice) as client:
        pid = (await create_project(client))["id"]
        # A small receive window (set before connecting): the server's buffers fill up.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(
                f"GET {PATH}?project={pid} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {alice.token}\r\n\r\n".encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert head.startswith(b"HTTP/1.1 200")
            hub = server.services.hub
            await eventually(lambda: hub.connections_of(alice.id) == 1)
            slow_before = _slow_consumers(server)
            # Stop reading; publish until the server gives up on the stream. Each event is
            # large, so the kernel's buffers fill after a few megabytes.
            big = {"blob": "x" * 60_000}
            sent = 0
            while hub.connections_of(alice.id) and sent < 2000:
                response = await client.post(
                    f"/api/projects/{pid}/events", json={"type": "custom.big", "data": big}
                )
                assert response.status_code == 201
                sent += 1
            await eventually(lambda: hub.connections_of(alice.id) == 0)
            assert _slow_consumers(server) == slow_before + 1
            # Its request ends too: no task is left writing into the stalled connection.
            await eventually(lambda: not server.asgi_tasks)
        finally:
            writer.transport.abort()
    await asyncio.sleep(10 * MS)


def _slow_consumers(server: ServerThread) -> float:
    registry = server.services.metrics.registry
    return float(registry.get_sample_value("tidings_ws_slow_consumer_closes_total") or 0.0)
