"""transport.py, driven directly (see transport_peer.py): the ASGI handshake, messages,
liveness and the closing handshake. The ``tidings.socket`` side is in
test_transport_socket.py; runs over real sockets are in test_server.py, test_ws.py and
the other suites."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from tests.conftest import MS, TIMEOUT
from tests.transport_peer import (
    DATE,
    Peer,
    Recorder,
    closes,
    detached,
    echo_app,
    until,
)
from tidings.frames import Frame as EventFrame
from tidings.sockets import EXTENSION, SocketClosed
from tidings.transport import TransportOptions

# -- the opening handshake ----------------------------------------------------------------


async def test_accept_with_subprotocol_headers_and_the_asgi_scope() -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope)
        assert await receive() == {"type": "websocket.connect"}
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": "tidings.v1",
                "headers": [(b"x-extra", b"1")],
            }
        )
        await receive()

    state = {"flag": 1}
    peer = Peer(
        app,
        path="/ws/a%20b?x=1",
        subprotocols=["tidings.v1", "other"],
        app_state=state,
        root_path="/r",
    )
    assert peer.proto in peer.server_state.connections
    response = await peer.accepted()
    assert response.headers["Sec-WebSocket-Protocol"] == "tidings.v1"
    assert response.headers["x-extra"] == "1"
    assert response.headers["server"] == "tidings-test"
    assert response.headers.get_all("date") == [DATE[1].decode()]  # replaced, not doubled
    assert peer.client.state is State.OPEN and peer.client.subprotocol == "tidings.v1"
    assert len(peer.server_state.tasks) == 1  # the app runs in a task uvicorn waits for

    scope = scopes[0]
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert (scope["http_version"], scope["scheme"]) == ("1.1", "ws")
    assert scope["server"] == ("127.0.0.1", 8000)
    assert scope["client"] == ("203.0.113.7", 50123)
    assert (scope["root_path"], scope["path"]) == ("/r", "/r/ws/a b")
    assert (scope["raw_path"], scope["query_string"]) == (b"/r/ws/a%20b", b"x=1")
    assert (b"host", b"127.0.0.1:8000") in scope["headers"]
    assert (b"sec-websocket-protocol", b"tidings.v1, other") in scope["headers"]
    assert scope["subprotocols"] == ["tidings.v1", "other"]
    assert scope["state"]["flag"] == 1 and scope["state"] is not state
    assert scope["extensions"] == {"websocket.http.response": {}, EXTENSION: peer.proto}


async def test_scope_addresses_of_a_unix_socket_and_of_tls() -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope)
        await send({"type": "websocket.close"})

    peer = Peer(
        app, extra={"peername": "", "sockname": "/run/tidings.sock", "sslcontext": object()}
    )
    peer.open()
    await peer.response()
    assert scopes[0]["server"] == ("/run/tidings.sock", None)
    assert scopes[0]["client"] is None
    assert scopes[0]["scheme"] == "wss"


async def test_close_before_accept_is_403_and_the_app_sees_the_end() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1008})
        seen.append(await receive())
        with pytest.raises(SocketClosed):  # the handshake is over: nothing can follow
            await send({"type": "websocket.accept"})

    peer = Peer(app)
    peer.open()
    response = await peer.response()
    assert response.status_code == 403
    assert response.headers["server"] == "tidings-test"
    await until(lambda: not peer.server_state.tasks)
    assert seen == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]
    await until(lambda: peer.proto not in peer.server_state.connections)


async def test_denial_response_from_the_app() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
        await send(
            {"type": "websocket.http.response.body", "body": b'{"detail":', "more_body": True}
        )
        await send({"type": "websocket.http.response.body", "body": b'"no"}'})

    peer = Peer(app)
    peer.open()
    response = await peer.response()
    assert (response.status_code, response.reason_phrase) == (401, "Unauthorized")
    assert response.body == b'{"detail":"no"}'
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == "15"
    assert response.headers["connection"] == "close"
    assert response.headers.get_all("server") == ["tidings-test"]


async def test_unusual_status_of_a_denial_response() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 599})
        await send({"type": "websocket.http.response.body", "body": b"?"})

    peer = Peer(app)
    peer.open()
    response = await peer.response()
    assert (response.status_code, response.reason_phrase, response.body) == (599, "", b"?")


async def test_invalid_upgrade_is_answered_without_the_app() -> None:
    started: list[object] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started.append(scope)

    peer = Peer(app)
    peer.proto.data_received(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"  # no Sec-WebSocket-Key
    )
    assert peer.transport.closing
    assert bytes(peer.transport.data).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Sec-WebSocket-Key" in bytes(peer.transport.data)
    await until(lambda: peer.proto not in peer.server_state.connections)
    assert started == []


async def test_garbage_instead_of_a_request_closes_the_connection() -> None:
    peer = Peer(echo_app([]))
    peer.proto.data_received(b"\x16\x03\x01 not http at all\r\n\r\n")
    assert peer.transport.closing and not peer.server_state.tasks


@pytest.mark.parametrize(
    "misbehaviour", ["raise", "return", "bad message", "bad status", "close after response"]
)
async def test_an_app_that_fails_before_accepting_gets_a_500(
    misbehaviour: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        if misbehaviour == "raise":
            raise ValueError("bug")
        if misbehaviour == "bad message":
            await send({"type": "websocket.send", "text": "too early"})
        if misbehaviour == "bad status":
            await send({"type": "websocket.http.response.start", "status": 42})
        if misbehaviour == "close after response":
            await send({"type": "websocket.http.response.start", "status": 400})
            await send({"type": "websocket.close"})

    peer = Peer(app)
    peer.open()
    assert (await peer.response()).status_code == 500
    assert any(r.levelno == logging.ERROR for r in caplog.records)


async def test_client_data_before_the_handshake_response_drops_the_connection() -> None:
    gate = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await gate.wait()
        with pytest.raises(SocketClosed):
            await send({"type": "websocket.accept"})

    peer = Peer(app)
    peer.open()
    peer.proto.data_received(b"\x81\x80\x00\x00\x00\x00")  # a frame, before any response
    assert peer.transport.aborted
    gate.set()
    await until(lambda: not peer.server_state.tasks)


# -- messages -----------------------------------------------------------------------------


async def test_text_and_binary_messages_both_ways() -> None:
    log: list[dict[str, Any]] = []
    peer = Peer(echo_app(log))
    await peer.accepted()
    peer.client.send_text("héllo".encode())
    peer.client.send_binary(b"\x00\xff")
    peer.push()
    await until(lambda: len(peer.transport.data) >= 12)
    frames = peer.frames()
    assert [(f.opcode, bytes(f.data)) for f in frames] == [
        (Opcode.TEXT, "héllo".encode()),
        (Opcode.BINARY, b"\x00\xff"),
    ]
    assert log[1:] == [
        {"type": "websocket.receive", "text": "héllo"},
        {"type": "websocket.receive", "bytes": b"\x00\xff"},
    ]


async def test_fragments_are_reassembled_around_control_frames() -> None:
    receiver = Recorder()
    peer = await detached(receiver)
    client = peer.client
    client.send_text(b"caf\xc3", fin=False)  # a character split across fragments
    client.send_ping(b"p1")
    client.send_continuation(b"\xa9 ", fin=False)
    client.send_pong(b"unsolicited")
    client.send_continuation(b"ok", fin=True)
    client.send_binary(b"\x01", fin=False)
    client.send_continuation(b"\x02", fin=True)
    peer.push()
    assert receiver.messages == ["café ok", b"\x01\x02"]
    frames = peer.frames()
    assert [(f.opcode, bytes(f.data)) for f in frames] == [(Opcode.PONG, b"p1")]


async def test_invalid_utf8_closes_1007() -> None:
    receiver = Recorder()
    peer = await detached(receiver)
    peer.client.send_text(b"ok \xff")  # ClientProtocol frames it as given
    peer.push()
    assert closes(peer.frames()) == [(1007, "invalid UTF-8 in a text message")]
    assert peer.transport.closing
    assert receiver.ends == [1007] and receiver.messages == []
    with pytest.raises(SocketClosed):
        peer.socket.write_nowait([EventFrame('{"type":"x"}', "x")], False)


async def test_oversized_message_closes_1009_and_the_app_hears_of_it() -> None:
    log: list[dict[str, Any]] = []
    peer = Peer(echo_app(log), ws_max_size=16)
    await peer.accepted()
    peer.client.send_text(b"x" * 10, fin=False)
    peer.client.send_continuation(b"x" * 10, fin=True)  # the message, not a frame, is too big
    peer.push()
    assert [code for code, _ in closes(peer.frames())] == [1009]
    await until(lambda: not peer.server_state.tasks)
    assert log[-1]["type"] == "websocket.disconnect" and log[-1]["code"] == 1009


async def test_protocol_error_closes_1002() -> None:
    receiver = Recorder()
    peer = await detached(receiver)
    peer.proto.data_received(b"\x81\x05hello")  # unmasked: clients must mask (RFC 6455 §5.1)
    assert [code for code, _ in closes(peer.frames())] == [1002]
    assert receiver.ends == [1002]


async def test_a_client_ping_is_answered() -> None:
    peer = await detached(Recorder())
    peer.client.send_ping(b"are you there")
    peer.push()
    assert [(f.opcode, bytes(f.data)) for f in peer.frames()] == [(Opcode.PONG, b"are you there")]


# -- liveness -----------------------------------------------------------------------------


async def test_pings_answered_keep_the_connection() -> None:
    receiver = Recorder()
    peer = await detached(receiver, ws_ping_interval=5 * MS, ws_ping_timeout=TIMEOUT)
    for _ in range(3):
        await until(lambda: bool(peer.transport.data))
        assert [f.opcode for f in peer.frames()] == [Opcode.PING]
        peer.push()  # the client's automatic pong
    assert not peer.transport.closing and receiver.ends == []


async def test_pings_without_a_timeout_keep_going() -> None:
    peer = await detached(Recorder(), ws_ping_interval=5 * MS, ws_ping_timeout=None)
    for _ in range(2):  # unanswered, yet nobody is dropped
        await until(lambda: bool(peer.transport.data))
        assert [f.opcode for f in peer.frames()] == [Opcode.PING]
    assert not peer.transport.closing


async def test_a_silent_peer_is_dropped_after_the_ping_timeout() -> None:
    receiver = Recorder()
    peer = await detached(receiver, ws_ping_interval=5 * MS, ws_ping_timeout=20 * MS)
    await until(lambda: peer.transport.closing)
    frames = peer.frames()
    assert [f.opcode for f in frames] == [Opcode.PING, Opcode.CLOSE]
    assert closes(frames) == [(1011, "keepalive ping timeout")]
    assert receiver.ends == [1011]
    await until(lambda: peer.proto not in peer.server_state.connections)


# -- the closing handshake ----------------------------------------------------------------


async def test_client_initiated_close() -> None:
    log: list[dict[str, Any]] = []
    peer = Peer(echo_app(log))
    await peer.accepted()
    peer.client.send_close(1000, "bye")
    peer.push()
    assert closes(peer.frames()) == [(1000, "bye")]  # echoed
    assert peer.transport.closing  # and the server closes the TCP connection first
    assert peer.client.state is State.CLOSED and peer.client.close_code == 1000
    await until(lambda: not peer.server_state.tasks)
    assert log[-1] == {"type": "websocket.disconnect", "code": 1000, "reason": "bye"}


async def test_server_initiated_close_waits_for_the_peer() -> None:
    receiver = Recorder()
    peer = await detached(receiver)
    socket = peer.socket
    await socket.close(4008, "slow consumer")
    peer.client.send_text(b"late")  # crossing our close frame: not delivered
    peer.push()
    assert receiver.messages == []
    assert closes(peer.frames()) == [(4008, "slow consumer")]
    assert not peer.transport.closing and receiver.ends == []  # waiting for the answer
    assert not socket.writable()
    with pytest.raises(SocketClosed):
        socket.write_nowait([EventFrame("{}", "x")], False)
    with pytest.raises(SocketClosed):
        await socket.send([EventFrame("{}", "x")], False)
    await socket.close(1012, "service restart")  # a second close is harmless: no frame
    assert peer.transport.data == b""
    peer.push()  # the client's answer to the close (queued when it read it)
    assert peer.transport.closing and receiver.ends == [4008]
    await until(lambda: peer.proto not in peer.server_state.connections)
    assert receiver.ends == [4008]  # once, although the connection was lost after


async def test_a_peer_that_never_answers_the_close_is_dropped() -> None:
    receiver = Recorder()
    peer = await detached(receiver, options=TransportOptions(close_timeout=20 * MS))
    peer.transport.stuck = True
    await peer.socket.close(4008, "slow consumer")
    await until(lambda: peer.transport.aborted)
    await until(lambda: receiver.ends == [1006])


async def test_a_close_the_peer_starts_but_never_reads_is_dropped() -> None:
    peer = await detached(Recorder(), options=TransportOptions(close_timeout=20 * MS))
    peer.transport.stuck = True  # the echo and the close never leave the buffer
    peer.client.send_close(1001, "")
    peer.push()
    assert peer.transport.closing and not peer.transport.aborted
    await until(lambda: peer.transport.aborted)


async def test_end_of_stream_without_close_is_1006() -> None:
    receiver = Recorder()
    peer = await detached(receiver)
    peer.proto.eof_received()
    assert receiver.ends == [1006]
    assert peer.transport.closing


async def test_abort_drops_at_once() -> None:
    receiver = Recorder()
    peer = await detached(receiver)
    peer.socket.abort()
    assert peer.transport.aborted and not peer.socket.writable()
    with pytest.raises(SocketClosed):
        peer.socket.write_nowait([EventFrame("{}", "x")], False)
    await until(lambda: receiver.ends == [1006])
    peer.socket.abort()  # harmless once gone
    await peer.socket.close(1000, "")


# -- an undetached app --------------------------------------------------------------------


async def test_an_app_that_returns_after_accepting_closes_1000() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})

    peer = Peer(app)
    await peer.accepted()
    await until(lambda: not peer.server_state.tasks)
    assert closes(peer.frames()) == [(1000, "")]
    # The client's message crossed the close frame; nobody reads messages any more.
    peer.proto.data_received(Frame(Opcode.TEXT, b"ignored").serialize(mask=True))
    assert peer.transport.data == b""


@pytest.mark.parametrize("misbehaviour", ["raise", "bad message"])
async def test_an_app_that_fails_after_accepting_closes_1011(
    misbehaviour: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        if misbehaviour == "raise":
            raise ValueError("bug")
        await send({"type": "websocket.accept"})

    peer = Peer(app)
    await peer.accepted()
    await until(lambda: not peer.server_state.tasks)
    assert closes(peer.frames()) == [(1011, "internal error")]
    assert "WebSocket application failed" in caplog.text


async def test_the_app_closes_and_sends_after_the_peer_left() -> None:
    gate = asyncio.Event()
    outcome: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await gate.wait()
        await send({"type": "websocket.close", "code": 1000})  # no-op: already closed
        try:
            await send({"type": "websocket.send", "text": "x"})
        except OSError:  # what ASGI asks of a server, and what Starlette expects
            outcome.append("OSError")

    peer = Peer(app)
    await peer.accepted()
    peer.client.send_close(1000, "")
    peer.push()
    gate.set()
    await until(lambda: not peer.server_state.tasks)
    assert outcome == ["OSError"]


async def test_the_app_closes_with_its_code() -> None:
    log: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4000, "reason": "done"})
        log.append(await receive())

    peer = Peer(app)
    await peer.accepted()
    await until(lambda: bool(peer.backlog) or bool(peer.transport.data))
    assert closes(peer.frames()) == [(4000, "done")]
    assert not peer.transport.closing  # waiting for the peer's answer
    peer.socket.resume_reading()  # not detached: harmless
    peer.push()
    await until(lambda: not peer.server_state.tasks)
    assert log == [{"type": "websocket.disconnect", "code": 4000, "reason": "done"}]


async def test_the_peer_gone_during_the_handshake() -> None:
    gate = asyncio.Event()
    outcome: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await gate.wait()
        try:
            await send({"type": "websocket.accept"})
        except SocketClosed:
            outcome.append("closed")
        raise ValueError("and a bug on top")  # no 500 can be sent now: nothing is written

    peer = Peer(app)
    peer.open()
    await until(lambda: bool(peer.server_state.tasks))
    peer.transport.closing = True  # (closed by the server under the protocol)
    gate.set()
    await until(lambda: not peer.server_state.tasks)
    assert outcome == ["closed"] and peer.transport.data == b""


async def test_the_end_of_stream_during_the_handshake() -> None:
    gate = asyncio.Event()
    log: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        log.append(await receive())
        await gate.wait()
        await send({"type": "websocket.accept"})

    peer = Peer(app)
    peer.open()
    await until(lambda: bool(peer.server_state.tasks))
    peer.proto.eof_received()
    await until(lambda: bool(log))
    assert log == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]
    gate.set()
    await until(lambda: not peer.server_state.tasks)  # SocketClosed ended the app quietly


async def test_receive_queue_is_bounded_by_pausing_reads() -> None:
    gate = asyncio.Event()
    got: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await gate.wait()
        for _ in range(3):
            got.append(await receive())

    peer = Peer(app, ws_max_queue=2)
    await peer.accepted()
    peer.client.send_text(b"1")
    peer.push()
    assert peer.transport.reading
    peer.client.send_text(b"2")
    peer.push()
    assert not peer.transport.reading  # the app is behind: stop reading the socket
    gate.set()
    await until(lambda: len(got) == 2)
    assert peer.transport.reading
    peer.client.send_text(b"3")
    peer.push()
    await until(lambda: len(got) == 3)
    assert [m.get("text") for m in got] == ["1", "2", "3"]


async def test_app_send_waits_for_the_transport_to_drain() -> None:
    gate = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await gate.wait()
        await send({"type": "websocket.send", "bytes": b"\x07"})
        await receive()

    peer = Peer(app)
    await peer.accepted()
    peer.proto.pause_writing()
    gate.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert peer.transport.data == b""
    peer.proto.resume_writing()
    await until(lambda: bool(peer.transport.data))
    assert [(f.opcode, bytes(f.data)) for f in peer.frames()] == [(Opcode.BINARY, b"\x07")]
