"""Serving tidings with uvicorn, plus a faster socket path for the WebSocket writer.

:class:`TidingsWebSocketProtocol` is uvicorn's sans-I/O WebSocket protocol with one
addition: it puts a ``tidings.socket`` extension in the ASGI scope. Through it the writer
task frames pre-encoded text itself and hands a whole batch to the transport in one
``write``, instead of one ASGI message, one event-loop round trip and one syscall per
event, and it can abort a connection that will not complete its closing handshake. Under
any other server the endpoint falls back to plain ASGI messages (see ``ws.py``).
"""

from __future__ import annotations

import struct
from typing import Any

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from tidings.settings import Settings

EXTENSION = "tidings.socket"


def frame_text(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame (a server never masks, RFC 6455 §5.1)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class FastSocket:
    """The ``tidings.socket`` extension: batched writes and abort, for one connection."""

    __slots__ = ("_proto",)

    def __init__(self, proto: TidingsWebSocketProtocol) -> None:
        self._proto = proto

    async def send_frames(self, frames: list[str]) -> None:
        await self._proto.writable.wait()  # transport flow control: the peer is reading
        self.write_nowait(frames)

    def writable(self) -> bool:
        return self._proto.writable.is_set()

    def write_nowait(self, frames: list[str]) -> None:
        proto = self._proto
        if proto.disconnected or proto.close_sent or proto.conn.state is not State.OPEN:
            raise ConnectionError("websocket is closed")
        proto.transport.write(b"".join([frame_text(f.encode()) for f in frames]))

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
