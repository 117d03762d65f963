"""transport.py as the ``tidings.socket`` extension (sockets.DetachableSocket): detached
connections, batched writes and flow control, server shutdown, and how uvicorn gets the
class. Driven directly, as in test_transport.py."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MS, TIMEOUT
from tests.transport_peer import (
    Peer,
    Recorder,
    closes,
    detached,
    detaching_app,
    texts,
    until,
)
from tidings import Settings
from tidings.app import lifespan_state
from tidings.frames import Frame as EventFrame
from tidings.server import uvicorn_options
from tidings.sockets import EXTENSION, SocketClosed
from tidings.transport import OPTIONS_KEY, TransportOptions, WebSocketTransport

# -- detaching ----------------------------------------------------------------------------


async def test_detach_delivers_what_arrived_before_in_order_then_the_rest() -> None:
    before = asyncio.Event()
    receiver = Recorder()
    peer = Peer(detaching_app(receiver, before))
    await peer.accepted()
    for n in (b"1", b"2", b"3"):
        peer.client.send_text(n)
    peer.push()
    before.set()
    await until(lambda: not peer.server_state.tasks)
    assert receiver.messages == ["1", "2", "3"]
    peer.client.send_binary(b"4")
    peer.push()
    assert receiver.messages == ["1", "2", "3", b"4"]


async def test_detach_after_the_peer_already_left() -> None:
    before = asyncio.Event()
    receiver = Recorder()
    peer = Peer(detaching_app(receiver, before))
    await peer.accepted()
    peer.client.send_close(1001, "")
    peer.push()
    before.set()
    await until(lambda: not peer.server_state.tasks)
    assert receiver.ends == [1001]


async def test_detach_before_accepting_is_refused() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["extensions"][EXTENSION].detach(Recorder())

    peer = Peer(app)
    peer.open()
    assert (await peer.response()).status_code == 500


async def test_receive_after_detach_is_a_bug() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        scope["extensions"][EXTENSION].detach(Recorder())
        await receive()

    peer = Peer(app)
    await peer.accepted()
    await until(lambda: not peer.server_state.tasks)
    assert closes(peer.frames()) == [(1011, "internal error")]


async def test_a_busy_receiver_pauses_reading_until_resumed() -> None:
    receiver = Recorder(busy_on=("slow",))
    peer = await detached(receiver)
    for text in (b"a", b"slow", b"b", b"c"):
        peer.client.send_text(text)
    peer.push()  # all four arrive in one read
    assert receiver.messages == ["a", "slow"]  # the rest waits for resume_reading()
    assert not peer.transport.reading
    peer.client.send_text(b"slow")  # (data already in flight when reading paused)
    peer.client.send_text(b"d")
    peer.push()
    assert receiver.messages == ["a", "slow"]
    peer.socket.resume_reading()
    assert receiver.messages == ["a", "slow", "b", "c", "slow"]
    assert not peer.transport.reading  # busy again
    peer.socket.resume_reading()
    assert receiver.messages == ["a", "slow", "b", "c", "slow", "d"]
    assert peer.transport.reading


async def test_messages_waiting_behind_a_busy_receiver_are_dropped_when_the_peer_leaves() -> None:
    receiver = Recorder(busy_on=("slow",))
    peer = await detached(receiver)
    for text in (b"slow", b"b"):
        peer.client.send_text(text)
    peer.client.send_close(1000, "")
    peer.push()
    assert receiver.messages == ["slow"] and receiver.ends == [1000]
    peer.socket.resume_reading()  # what a receiver does when it is done: harmless now
    assert receiver.messages == ["slow"]


async def test_a_receiver_that_raises_closes_1011(caplog: pytest.LogCaptureFixture) -> None:
    receiver = Recorder(fail_on="boom")
    peer = await detached(receiver)
    peer.client.send_text(b"boom")
    peer.push()
    assert closes(peer.frames()) == [(1011, "internal error")]
    assert "WebSocket receiver failed" in caplog.text


async def test_a_receiver_that_raises_when_told_the_end(caplog: pytest.LogCaptureFixture) -> None:
    receiver = Recorder(fail_on_end=True)
    peer = await detached(receiver)
    peer.client.send_close(1000, "")
    peer.push()
    assert receiver.ends == [1000] and "WebSocket receiver failed" in caplog.text
    await until(lambda: not peer.server_state.connections)


async def test_a_detached_idle_connection_keeps_no_task_scope_or_state() -> None:
    class Marker:
        pass

    marker = Marker()
    ref = weakref.ref(marker)
    peer = await detached(Recorder(), app_state={"marker": marker})
    del marker
    gc.collect()
    assert ref() is None, "the scope or the app state outlived the handshake"
    assert not peer.server_state.tasks


# -- writing ------------------------------------------------------------------------------


async def test_batched_writes_and_flow_control() -> None:
    peer = await detached(Recorder())
    socket = peer.socket
    one, two = EventFrame('{"n":1}', "n"), EventFrame('{"n":2}', "n")
    assert socket.writable()
    socket.write_nowait([one], False)
    socket.write_nowait([one, two], False)
    socket.write_nowait([one, two], True)
    assert texts(peer.frames()) == ['{"n":1}', '{"n":1}', '{"n":2}', '[{"n":1},{"n":2}]']

    peer.proto.pause_writing()
    assert not socket.writable()
    sending = [asyncio.create_task(socket.send([f], False)) for f in (two, one)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert not any(t.done() for t in sending) and peer.transport.data == b""
    peer.proto.resume_writing()
    await asyncio.gather(*sending)
    assert socket.writable() and texts(peer.frames()) == ['{"n":2}', '{"n":1}']


async def test_a_send_waiting_on_flow_control_learns_the_connection_is_gone() -> None:
    peer = await detached(Recorder())
    peer.proto.pause_writing()
    sending = asyncio.create_task(peer.socket.send([EventFrame("{}", "x")], False))
    await asyncio.sleep(0)
    peer.socket.abort()
    with pytest.raises(SocketClosed):
        await sending


async def test_a_write_error_that_is_not_a_closed_peer_propagates() -> None:
    peer = await detached(Recorder())
    peer.transport.error = RuntimeError("transport broke")
    with pytest.raises(RuntimeError, match="transport broke"):
        peer.socket.write_nowait([EventFrame("{}", "x")], False)
    with pytest.raises(RuntimeError, match="transport broke"):
        await peer.socket.send([EventFrame("{}", "x")], True)
    peer.transport.error = None
    with pytest.raises(UnicodeEncodeError):  # an unencodable frame is a fault, not a close
        peer.socket.write_nowait([EventFrame("\ud800", "x")], True)


async def test_writing_before_accepting_is_a_bug() -> None:
    gate = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await gate.wait()

    peer = Peer(app)
    peer.open()
    await until(lambda: bool(peer.server_state.tasks))
    assert not peer.socket.writable()
    with pytest.raises(RuntimeError, match="not accepted"):
        peer.socket.write_nowait([EventFrame("{}", "x")], False)
    gate.set()


# -- server shutdown ----------------------------------------------------------------------


async def test_shutdown_closes_1012_and_the_hubs_close_is_harmless() -> None:
    receiver = Recorder()
    peer = await detached(receiver)
    peer.proto.shutdown()
    await peer.socket.close(1012, "service restart")  # the hub, on lifespan shutdown
    assert closes(peer.frames()) == [(1012, "service restart")]
    peer.push()  # the client answers
    assert receiver.ends == [1012]
    await until(lambda: not peer.server_state.connections)
    peer.proto.shutdown()  # gone: nothing to do


async def test_shutdown_drops_a_peer_that_does_not_answer() -> None:
    peer = await detached(Recorder(), options=TransportOptions(close_timeout=20 * MS))
    peer.transport.stuck = True
    peer.proto.shutdown()
    await until(lambda: peer.transport.aborted)
    await until(lambda: not peer.server_state.connections)


async def test_shutdown_during_the_handshake_refuses_it() -> None:
    gate = asyncio.Event()
    outcome: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await gate.wait()
        try:
            await send({"type": "websocket.accept"})
        except SocketClosed:
            outcome.append("closed")
            raise

    peer = Peer(app)
    peer.open()
    await until(lambda: bool(peer.server_state.tasks))
    peer.proto.shutdown()
    assert (await peer.response()).status_code == 503
    gate.set()
    await until(lambda: not peer.server_state.tasks)
    assert outcome == ["closed"]


async def test_shutdown_while_the_app_sends_a_denial_response() -> None:
    gate, started = asyncio.Event(), asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 404})
        started.set()
        await gate.wait()
        await send({"type": "websocket.http.response.body", "body": b"gone"})

    peer = Peer(app, options=TransportOptions(close_timeout=TIMEOUT))
    peer.open()
    await started.wait()
    peer.proto.shutdown()  # the response may still complete, within the close timeout
    gate.set()
    assert (await peer.response()).status_code == 404


# -- configuration ------------------------------------------------------------------------


def test_the_app_hands_its_close_timeout_to_the_transport(tmp_path: Path) -> None:
    """uvicorn gives a ``ws=`` class only its own config: the close timeout travels in the
    lifespan state, which uvicorn passes to every protocol it makes."""
    settings = Settings(data_dir=tmp_path, ws_close_timeout=3.5, ws_reconnect_spread=2)
    assert uvicorn_options(settings)["ws"] is WebSocketTransport
    assert lifespan_state(settings)[OPTIONS_KEY] == TransportOptions(
        close_timeout=3.5, shutdown_reason="service restart; reconnect_within_ms=2000"
    )
