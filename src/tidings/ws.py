"""``GET /ws``: check the Origin, authenticate, accept, then hand the connection over.

Under uvicorn with tidings' own transport (``transport.py``) the endpoint *detaches* the
connection and returns: the transport then gives each client message straight to the
:class:`~tidings.connection.Connection`, and an idle connection holds no task at all.
Under any other ASGI server the endpoint stays and pumps ``receive()`` into the same
connection (:class:`~tidings.sockets.AsgiSocket` writes).
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from tidings.api.deps import Services
from tidings.auth import COOKIE_NAME, origin_allowed
from tidings.codes import PROTOCOL_VERSION, CloseCode
from tidings.connection import Connection
from tidings.events import timestamp
from tidings.messages import ClientMessages
from tidings.proxies import client_address
from tidings.sockets import EXTENSION, AsgiSocket, DetachableSocket

logger = logging.getLogger("tidings.ws")

SUBPROTOCOL = "tidings.v1"
BATCH_SUBPROTOCOL = "tidings.batch.v1"  # frames carry a JSON array of messages


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
    principal = await services.auth.authenticate(
        websocket.cookies.get(COOKIE_NAME), websocket.headers.get("authorization")
    )
    offered = websocket.scope.get("subprotocols", [])
    chosen = next((p for p in (BATCH_SUBPROTOCOL, SUBPROTOCOL) if p in offered), None)
    await websocket.accept(subprotocol=chosen)
    if principal is None:
        await websocket.close(CloseCode.UNAUTHORIZED, "not authenticated")
        return
    hub = services.hub
    # No await between this check and `hub.register` below: the limit is exact.
    if hub.connections_of(principal.user_id) >= settings.ws_max_connections_per_user:
        logger.warning("ws refused user=%s: too many connections", principal.username)
        await websocket.close(CloseCode.TRY_AGAIN_LATER, "too many connections for this user")
        return
    native: DetachableSocket | None = (websocket.scope.get("extensions") or {}).get(EXTENSION)
    conn = Connection(
        client_id=secrets.token_hex(8),
        user_id=principal.user_id,
        username=principal.username,
        credential=principal.credential,
        socket=native if native is not None else AsgiSocket(websocket),
        owner=hub,
        messages=ClientMessages(
            max_message_bytes=settings.ws_max_message_bytes,
            rate=settings.ws_rate_limit,
            burst=settings.ws_rate_burst,
            now=asyncio.get_running_loop().time(),
            max_projects=settings.ws_max_subscriptions,
        ),
        max_subscriptions=settings.ws_max_subscriptions,
        max_queue_messages=settings.ws_max_queue_messages,
        max_queue_bytes=settings.ws_max_queue_bytes,
        close_timeout=settings.ws_close_timeout,
        batch=chosen == BATCH_SUBPROTOCOL,
    )
    hub.register(conn, principal.expires_at)
    logger.info(
        "ws connect client_id=%s user=%s peer=%s",
        conn.client_id,
        conn.username,
        client_address(websocket),
    )
    conn.send_message(
        {
            "type": "connection.established",
            "client_id": conn.client_id,
            "user": {"id": principal.user_id, "username": principal.username},
            "heartbeat_interval": _number(settings.heartbeat_interval),
            "protocol": PROTOCOL_VERSION,
            "expires_at": timestamp(principal.expires_at) if principal.expires_at else None,
        }
    )
    if native is not None:
        conn.resume_reading = native.resume_reading
        native.detach(conn)
        return
    await _pump(websocket, conn)


async def _pump(websocket: WebSocket, conn: Connection) -> None:
    """The ASGI fallback: this coroutine lives as long as the connection."""
    code: int | None = None
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                code = message.get("code")
                break
            data = message.get("text")
            if conn.receive(data if data is not None else message.get("bytes") or b""):
                await conn.idle()
    except WebSocketDisconnect as exc:
        code = exc.code
    finally:
        await conn.owner.disconnected(conn, code)


def _number(value: float) -> float | int:
    return int(value) if value == int(value) else value
