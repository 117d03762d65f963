"""Serving tidings with uvicorn, plus a faster and leaner socket path for ``/ws``.

:class:`TidingsWebSocketProtocol` is uvicorn's sans-I/O WebSocket protocol with one
addition: it puts a ``tidings.socket`` extension (:class:`FastSocket`) in the ASGI scope.
Through it

- the writer frames pre-encoded text itself and hands a whole batch to the transport in
  one ``write``, instead of one ASGI message, one event-loop round trip and one syscall
  per event, and can abort a connection that will not complete its closing handshake;
- the endpoint *detaches* the connection once it is authenticated: client messages then
  go straight to a :class:`Receiver`, and the ASGI app returns. An idle connection holds
  no task, no coroutine frames of the middleware stack, no receive queue and no scope:
  that is most of what a connection costs.

Under any other server the endpoint falls back to plain ASGI messages (see ``ws.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import uvicorn
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from tidings.frames import Frame, batch_text, frame_text
from tidings.settings import Settings

EXTENSION = "tidings.socket"


class Receiver(Protocol):
    """Takes a detached connection's client messages, in order, and its end."""

    def receive(self, data: str | bytes) -> bool:
        """Handle one message; return True to stop reading until :meth:`FastSocket.resume`
        (an answer needs I/O first, and later messages must wait for it)."""
        ...

    def disconnected(self, code: int) -> None:
        """The connection is gone (closed by either side, or dropped); called once."""
        ...


class FastSocket:
    """The ``tidings.socket`` extension: batched writes, abort, and detaching.

    Frames are written straight to the transport (no per-frame websockets ``Frame``
    objects or ASGI messages); ``writable`` mirrors uvicorn's transport flow control.
    """

    __slots__ = ("_proto",)

    def __init__(self, proto: TidingsWebSocketProtocol) -> None:
        self._proto = proto

    async def send(self, frames: list[Frame], batch: bool) -> None:
        await self._proto.writable.wait()  # transport flow control: the peer is reading
        self.write_nowait(frames, batch)

    def writable(self) -> bool:
        return self._proto.writable.is_set()

    def write_nowait(self, frames: list[Frame], batch: bool) -> None:
        proto = self._proto
        if proto.disconnected or proto.close_sent or proto.conn.state is not State.OPEN:
            raise ConnectionError("websocket is closed")
        if batch:
            proto.transport.write(frame_text(batch_text(frames).encode()))
        elif len(frames) == 1:
            proto.transport.write(frames[0].wire)
        else:
            proto.transport.write(b"".join([f.wire for f in frames]))

    async def close(self, code: int, reason: str) -> None:
        """Send the close frame (uvicorn then waits for the peer's, or drops it)."""
        await self._proto.send({"type": "websocket.close", "code": code, "reason": reason})

    def abort(self) -> None:
        transport = self._proto.transport
        if transport is not None:
            transport.abort()

    def detach(self, receiver: Receiver) -> None:
        """From now on, give client messages to ``receiver``; the ASGI app may return."""
        self._proto.detach(receiver)

    def resume(self) -> None:
        """Read client messages again after :meth:`Receiver.receive` returned True."""
        self._proto.resume_receiving()


class _Disconnects:
    """Stands in for uvicorn's receive queue once detached: of what uvicorn would queue
    for the app, only the disconnect matters, and it goes to the receiver."""

    __slots__ = ("receiver",)

    def __init__(self, receiver: Receiver) -> None:
        self.receiver: Receiver | None = receiver

    def put_nowait(self, message: dict[str, Any]) -> None:
        receiver = self.receiver
        if message["type"] == "websocket.disconnect" and receiver is not None:
            self.receiver = None
            receiver.disconnected(message.get("code", 1005))


class TidingsWebSocketProtocol(WebSocketsSansIOProtocol):
    receiver: Receiver | None = None  # set once the endpoint detaches

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][EXTENSION] = FastSocket(self)

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept":
            # The handshake is done: don't keep its request and response (headers and all)
            # for the life of an idle connection.
            self.request = None  # type: ignore[assignment]
            self.response = None  # type: ignore[assignment]

    def detach(self, receiver: Receiver) -> None:
        queued: asyncio.Queue[Any] = self.queue
        self.receiver = receiver
        self.queue = _Disconnects(receiver)  # type: ignore[assignment]
        busy = False
        while not queued.empty():  # what arrived before detaching, in order
            message = queued.get_nowait()
            if message["type"] == "websocket.receive":
                busy = self._deliver(message.get("text") or message.get("bytes") or "")
            else:
                self.queue.put_nowait(message)
        if not busy:
            self.resume_receiving()  # uvicorn paused reading for the app's receive()

    def send_receive_event_to_app(self) -> None:
        if self.receiver is None:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        if self.curr_msg_data_type == "bytes":
            self._deliver(data)
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:  # as uvicorn does for the app
            self.conn.send_close(1007)
            self.handle_parser_exception()
            return
        self._deliver(text)

    def _deliver(self, data: str | bytes) -> bool:
        assert self.receiver is not None
        busy = self.receiver.receive(data)
        if busy and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        return busy

    def resume_receiving(self) -> None:
        if self.read_paused and not self.disconnected:
            self.read_paused = False
            self.transport.resume_reading()

    async def run_asgi(self) -> None:
        """uvicorn's, except that a detached connection outlives the app's return."""
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned %r.", result)
        if self.receiver is not None:
            self.scope = None  # type: ignore[assignment]
        elif self.close_timer is None:
            self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn options tidings needs, whoever starts the server (CLI, tests, benchmarks)."""
    return {
        "ws": TidingsWebSocketProtocol,
        "ws_per_message_deflate": False,  # encode once for everyone: no per-socket compression
        "ws_max_size": settings.ws_max_message_bytes,
        "ws_ping_interval": settings.ws_ping_interval,
        "ws_ping_timeout": settings.ws_ping_timeout,
        "timeout_graceful_shutdown": 10,
    }


def serve(settings: Settings, host: str, port: int, workers: int, log_level: str) -> None:
    """Run tidings under uvicorn until SIGTERM/SIGINT; each worker builds its app from env."""
    uvicorn.run(
        "tidings.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=False,  # tidings reads forwarding headers itself (proxies.py)
        log_config=None,
        log_level=log_level,
        **uvicorn_options(settings),
    )
