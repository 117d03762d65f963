"""``GET /ws``: authenticate, accept, then pump client messages into the hub.

All protocol decisions are in ``protocol.py`` (client messages) and ``hub.py`` /
``connection.py`` (delivery); this endpoint only moves bytes between them and the socket.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from tidings.api.deps import Services
from tidings.auth import COOKIE_NAME, authenticate, origin_allowed
from tidings.codes import PROTOCOL_VERSION, CloseCode
from tidings.connection import Connection
from tidings.frames import Frame, batch_text
from tidings.protocol import ClientMessages, Close, Reply, Subscribe, Unsubscribe
from tidings.server import EXTENSION

logger = logging.getLogger("tidings.ws")

SUBPROTOCOL = "tidings.v1"
BATCH_SUBPROTOCOL = "tidings.batch.v1"  # frames carry a JSON array of messages


class AsgiSocket:
    """Plain ASGI sends, for servers without the ``tidings.socket`` extension."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket

    async def send(self, frames: list[Frame], batch: bool) -> None:
        if batch:
            await self.websocket.send_text(batch_text(frames))
            return
        for frame in frames:
            await self.websocket.send_text(frame.text)

    async def close(self, code: int, reason: str) -> None:
        await self.websocket.close(code, reason)

    def writable(self) -> bool:
        return False  # ASGI sends are awaited: the writer task does them

    def write_nowait(self, frames: list[Frame], batch: bool) -> None:
        raise RuntimeError("ASGI sockets cannot write without awaiting")

    def abort(self) -> None:
        pass  # not possible through ASGI; the server's own timeouts apply


class ExtensionSocket(AsgiSocket):
    def __init__(self, websocket: WebSocket) -> None:
        super().__init__(websocket)
        self.fast = websocket.scope["extensions"][EXTENSION]

    async def send(self, frames: list[Frame], batch: bool) -> None:
        await self.fast.send(frames, batch)

    def writable(self) -> bool:
        return bool(self.fast.writable())

    def write_nowait(self, frames: list[Frame], batch: bool) -> None:
        self.fast.write_nowait(frames, batch)

    def abort(self) -> None:
        self.fast.abort()


async def websocket_endpoint(websocket: WebSocket) -> None:
    """Mounted as a plain Starlette route (``app.router.add_websocket_route``): FastAPI's
    dependency machinery would hold an exit stack per connection for nothing."""
    services: Services = websocket.app.state.services
    settings = services.settings
    if not origin_allowed(
        websocket.headers.get("origin"), websocket.headers.get("host"), settings.allowed_origins
    ):
        await websocket.close(1008)  # before accept: the server answers HTTP 403
        return
    principal = await authenticate(
        services.db, websocket.cookies.get(COOKIE_NAME), websocket.headers.get("authorization")
    )
    offered = websocket.scope.get("subprotocols", [])
    chosen = next((p for p in (BATCH_SUBPROTOCOL, SUBPROTOCOL) if p in offered), None)
    await websocket.accept(subprotocol=chosen)
    if principal is None:
        await websocket.close(CloseCode.UNAUTHORIZED, "not authenticated")
        return
    loop = asyncio.get_running_loop()
    extensions = websocket.scope.get("extensions") or {}
    socket = ExtensionSocket(websocket) if EXTENSION in extensions else AsgiSocket(websocket)
    conn = Connection(
        client_id=secrets.token_hex(8),
        user_id=principal.user_id,
        username=principal.username,
        credential=principal.credential,
        socket=socket,
        messages=ClientMessages(
            max_message_bytes=settings.ws_max_message_bytes,
            max_subscriptions=settings.ws_max_subscriptions,
            rate=settings.ws_rate_limit,
            burst=settings.ws_rate_burst,
            now=loop.time(),
        ),
        max_queue_messages=settings.ws_max_queue_messages,
        max_queue_bytes=settings.ws_max_queue_bytes,
        close_timeout=settings.ws_close_timeout,
        batch=chosen == BATCH_SUBPROTOCOL,
        **services.hub.connection_args(),
    )
    hub = services.hub
    hub.register(conn)
    started = time.monotonic()
    client = f"{websocket.client.host}:{websocket.client.port}" if websocket.client else "-"
    logger.info("ws connect client_id=%s user=%s peer=%s", conn.client_id, conn.username, client)
    conn.send_message(
        {
            "type": "connection.established",
            "client_id": conn.client_id,
            "user": {"id": principal.user_id, "username": principal.username},
            "heartbeat_interval": _number(settings.heartbeat_interval),
            "protocol": PROTOCOL_VERSION,
        }
    )
    code: int | None = None
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                code = message.get("code")
                break
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            action = conn.messages.receive(data, loop.time())
            if isinstance(action, Reply):
                conn.send_message(action.message)
            elif isinstance(action, Subscribe):
                await hub.subscribe(conn, action.project_id, action.since, action.request_id)
            elif isinstance(action, Unsubscribe):
                hub.unsubscribe(conn, action.project_id, action.request_id)
            elif isinstance(action, Close):
                conn.close(action.code, action.reason, flush=True)
    except WebSocketDisconnect as exc:
        code = exc.code
    finally:
        hub.unregister(conn)
        await conn.finish()
        logger.info(
            "ws disconnect client_id=%s user=%s code=%s server_code=%s duration=%.1fs",
            conn.client_id,
            conn.username,
            code,
            conn.close_code,
            time.monotonic() - started,
        )


def _number(value: float) -> float | int:
    return int(value) if value == int(value) else value
