"""Serving tidings with uvicorn, plus a faster socket path for the WebSocket writer.

:class:`TidingsWebSocketProtocol` is uvicorn's sans-I/O WebSocket protocol with one
addition: it puts a ``tidings.socket`` extension in the ASGI scope. Through it the writer
task frames pre-encoded text itself and hands a whole batch to the transport in one
``write``, instead of one ASGI message, one event-loop round trip and one syscall per
event, and it can abort a connection that will not complete its closing handshake. Under
any other server the endpoint falls back to plain ASGI messages (see ``ws.py``).
"""

from __future__ import annotations

from typing import Any

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from tidings.frames import Frame, batch_text, frame_text
from tidings.settings import Settings

EXTENSION = "tidings.socket"


class FastSocket:
    """The ``tidings.socket`` extension: batched writes and abort, for one connection.

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

    def abort(self) -> None:
        transport = self._proto.transport
        if transport is not None:
            transport.abort()


class TidingsWebSocketProtocol(WebSocketsSansIOProtocol):
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
        proxy_headers=True,
        log_config=None,
        log_level=log_level,
        **uvicorn_options(settings),
    )
