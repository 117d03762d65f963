"""What a ``/ws`` connection needs from the socket under it, whichever server carries it.

Two implementations stand beside this interface: ``transport.py`` (tidings' own WebSocket
protocol under uvicorn: batched writes of pre-encoded frames, detached idle connections)
and :class:`AsgiSocket` below (plain ASGI messages, under any other ASGI server).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected

from tidings.frames import Frame, batch_text

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

# The ASGI scope extension under which tidings' own transport offers itself.
EXTENSION = "tidings.socket"


class SocketClosed(ConnectionError):
    """The connection is closing or gone: nothing more can be written to it.

    This is the only failure a writer may treat as routine; any other exception from a
    write is a fault, to be logged as an error and answered by closing the connection.
    """


class Receiver(Protocol):
    """Takes a detached connection's client messages, in order, and then its end."""

    def receive(self, data: str | bytes) -> bool:
        """Handle one message; return True to stop reading until the socket's
        :meth:`DetachableSocket.resume_reading` (an answer needs I/O first, and later
        messages must wait for it)."""
        ...

    def disconnected(self, code: int) -> None:
        """The connection is gone (closed by either side, or dropped); called once."""
        ...


class Socket(Protocol):
    """Sending side of one WebSocket. ``batch`` asks for ``tidings.batch.v1`` framing:
    all the frames as one JSON array in one message."""

    async def send(self, frames: list[Frame], batch: bool) -> None:
        """Send the frames in order, waiting while the peer is behind (flow control).

        Raises :class:`SocketClosed` if the connection closes first."""
        ...

    def writable(self) -> bool:
        """True if :meth:`write_nowait` may be called now (open, and the peer keeps up)."""
        ...

    def write_nowait(self, frames: list[Frame], batch: bool) -> None:
        """Hand the frames to the transport without waiting; only when :meth:`writable`.

        Raises :class:`SocketClosed` if the connection is closing or gone."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake after what was written so far.

        The connection is dropped if the peer does not complete the handshake within the
        close timeout, whether or not the caller still waits."""
        ...

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake."""
        ...


class DetachableSocket(Socket, Protocol):
    """A socket that can feed client messages to a :class:`Receiver` by itself, so the
    ASGI app may return and an idle connection holds no task."""

    def detach(self, receiver: Receiver) -> None:
        """From now on give client messages (and those already received) to
        ``receiver``, and its end to :meth:`Receiver.disconnected`."""
        ...

    def resume_reading(self) -> None:
        """Read client messages again after :meth:`Receiver.receive` returned True."""
        ...


class AsgiSocket:
    """Plain ASGI sends, for servers that do not offer tidings' transport."""

    __slots__ = ("websocket",)

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket

    async def send(self, frames: list[Frame], batch: bool) -> None:
        try:
            if batch:
                await self.websocket.send_text(batch_text(frames))
                return
            for frame in frames:
                await self.websocket.send_text(frame.text)
        except (WebSocketDisconnect, WebSocketDisconnected) as exc:  # gone, or closing
            raise SocketClosed(str(exc)) from exc

    async def close(self, code: int, reason: str) -> None:
        try:
            await self.websocket.close(code, reason)
        except (WebSocketDisconnect, WebSocketDisconnected) as exc:
            raise SocketClosed(str(exc)) from exc

    def writable(self) -> bool:
        return False  # ASGI sends are awaited: the writer task does them

    def write_nowait(self, frames: list[Frame], batch: bool) -> None:
        raise RuntimeError("ASGI sockets cannot write without awaiting")

    def abort(self) -> None:
        pass  # not possible through ASGI; the server's own timeouts apply
