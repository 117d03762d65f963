"""A test bench for transport.py: a fake asyncio transport underneath, websockets'
client-side sans-I/O ``ClientProtocol`` as the peer (it masks and parses frames as a real
client does), and tiny ASGI apps on top."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.conftest import TIMEOUT
from tidings.sockets import EXTENSION, DetachableSocket
from tidings.transport import OPTIONS_KEY, TransportOptions, WebSocketTransport

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
DATE = (b"date", b"Thu, 01 Jan 2026 00:00:00 GMT")


class FakeTransport(asyncio.Transport):
    """Records what the protocol writes and asks; loses the connection like asyncio does
    (``connection_lost`` on the next loop iteration) unless the peer is ``stuck``."""

    def __init__(self, extra: dict[str, Any]) -> None:
        super().__init__()
        self.protocol: WebSocketTransport | None = None
        self.data = bytearray()
        self.reading = True
        self.closing = False
        self.aborted = False
        self.lost = False
        self.stuck = False  # the peer reads nothing: a graceful close never completes
        self.error: Exception | None = None  # raised by the next write
        self.extra = extra

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.error is not None:
            raise self.error
        self.data += data

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            if not self.stuck:
                self._lose()

    def abort(self) -> None:
        self.closing = True
        self.aborted = True
        self._lose()

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            assert self.protocol is not None
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        assert self.reading
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)


class Peer:
    """One connection under test: the transport, its fake TCP transport, and a client."""

    def __init__(
        self,
        app: App,
        *,
        path: str = "/ws",
        subprotocols: list[str] | None = None,
        options: TransportOptions | None = None,
        app_state: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        **config: Any,
    ) -> None:
        cfg = uvicorn.Config(
            app,
            log_config=None,
            lifespan="off",
            proxy_headers=False,
            **{"ws_ping_interval": None} | config,
        )
        cfg.load()  # as uvicorn does before serving
        self.server_state = ServerState()
        self.server_state.default_headers = [DATE, (b"server", b"tidings-test")]
        state = {OPTIONS_KEY: options or TransportOptions(close_timeout=TIMEOUT)}
        self.proto = WebSocketTransport(
            config=cfg, server_state=self.server_state, app_state=state | (app_state or {})
        )
        self.transport = FakeTransport(
            extra
            if extra is not None
            else {"peername": ("203.0.113.7", 50123), "sockname": ("127.0.0.1", 8000)}
        )
        self.transport.protocol = self.proto
        self.proto.connection_made(self.transport)
        self.backlog: list[Any] = []
        self.client = ClientProtocol(
            parse_uri(f"ws://127.0.0.1:8000{path}"), subprotocols=subprotocols, max_size=None
        )

    @property
    def socket(self) -> DetachableSocket:
        return self.proto

    def open(self) -> None:
        """Send the upgrade request, as uvicorn replays it."""
        self.client.send_request(self.client.connect())
        self.push()

    def push(self) -> None:
        """Deliver what the client has sent to the transport under test."""
        data = self.client.data_to_send()
        payload = b"".join(data)
        if payload:
            self.proto.data_received(payload)
        if b"" in data:
            self.proto.eof_received()

    def pull(self) -> list[Any]:
        """What the client has received since last time (and its EOF once the server
        closed the TCP connection)."""
        data = bytes(self.transport.data)
        self.transport.data.clear()
        self.client.receive_data(data)
        if self.transport.closing and not self.transport.stuck:
            self.client.receive_eof()
        return self.client.events_received()

    def frames(self) -> list[Frame]:
        events, self.backlog = self.backlog + self.pull(), []
        return [e for e in events if isinstance(e, Frame)]

    async def accepted(self) -> Response:
        self.open()
        await until(lambda: bool(self.transport.data))
        events = self.pull()
        assert isinstance(events[0], Response) and events[0].status_code == 101, events
        self.backlog = events[1:]  # frames written right after the response
        return events[0]

    async def response(self) -> Response:
        """The HTTP response that refused the upgrade."""
        await until(lambda: self.transport.closing)
        events = self.pull()
        assert isinstance(events[0], Response), events
        return events[0]


async def until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Let the loop run until ``predicate`` holds; fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0)


def closes(frames: list[Frame]) -> list[tuple[int, str]]:
    return [
        (c.code, c.reason)
        for c in (Close.parse(f.data) for f in frames if f.opcode is Opcode.CLOSE)
    ]


def texts(frames: list[Frame]) -> list[str]:
    return [bytes(f.data).decode() for f in frames if f.opcode is Opcode.TEXT]


class Recorder:
    """A receiver: records messages and ends; busy (True) on the messages in ``busy_on``;
    raises on ``fail_on``, and in ``disconnected`` if ``fail_on_end``."""

    def __init__(
        self,
        busy_on: tuple[str | bytes, ...] = (),
        fail_on: str | None = None,
        fail_on_end: bool = False,
    ) -> None:
        self.messages: list[str | bytes] = []
        self.ends: list[int] = []
        self.busy_on = busy_on
        self.fail_on = fail_on
        self.fail_on_end = fail_on_end

    def receive(self, data: str | bytes) -> bool:
        if data == self.fail_on:
            raise ValueError("receiver bug")
        self.messages.append(data)
        return data in self.busy_on

    def disconnected(self, code: int) -> None:
        self.ends.append(code)
        if self.fail_on_end:
            raise ValueError("receiver bug")


def echo_app(log: list[dict[str, Any]]) -> App:
    """Accepts, echoes every message, records what receive() returned."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        log.append(await receive())
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            log.append(message)
            if message["type"] == "websocket.disconnect":
                return
            await send({**message, "type": "websocket.send"})

    return app


def detaching_app(receiver: Recorder, before: asyncio.Event | None = None) -> App:
    """Accepts, optionally waits for ``before``, then detaches to ``receiver`` and returns."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        if before is not None:
            await before.wait()
        socket: DetachableSocket = scope["extensions"][EXTENSION]
        socket.detach(receiver)

    return app


async def detached(receiver: Recorder, **kwargs: Any) -> Peer:
    peer = Peer(detaching_app(receiver), **kwargs)
    await peer.accepted()
    await until(lambda: not peer.server_state.tasks)
    return peer
