"""``GET /ws``: check the Origin, authenticate, accept, then hand the connection over.

The opening is ``admission.py``'s, shared with ``/api/stream``; this module says which
close code answers each refusal.

Under uvicorn with tidings' own transport (``transport.py``) the endpoint *detaches* the
connection and returns: the transport then gives each client message straight to the
:class:`~tidings.connection.Connection`, and an idle connection holds no task at all.
Under any other ASGI server the endpoint stays and pumps ``receive()`` into the same
connection (:class:`~tidings.sockets.AsgiSocket` writes).
"""

from __future__ import annotations

import logging

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from tidings.admission import Refusal, identify, open_connection
from tidings.api.deps import Services
from tidings.codes import CloseCode
from tidings.connection import Connection
from tidings.proxies import client_address
from tidings.sockets import EXTENSION, AsgiSocket, DetachableSocket

logger = logging.getLogger("tidings.ws")

SUBPROTOCOL = "tidings.v1"
BATCH_SUBPROTOCOL = "tidings.batch.v1"  # frames carry a JSON array of messages


# The close code of each refusal that comes after the handshake (admission.py); a foreign
# Origin is refused before it, so the client sees an HTTP 403.
REFUSALS: dict[Refusal, int] = {
    Refusal.UNAUTHENTICATED: CloseCode.UNAUTHORIZED,
    Refusal.TOO_MANY: CloseCode.TRY_AGAIN_LATER,
}


async def websocket_endpoint(websocket: WebSocket) -> None:
    """Mounted as a plain Starlette route (``app.router.add_websocket_route``): FastAPI's
    dependency machinery would hold an exit stack per connection for nothing."""
    services: Services = websocket.app.state.services
    principal = await identify(services, websocket.headers, websocket.cookies)
    if principal is Refusal.ORIGIN:
        await websocket.close(1008)  # before accept: the server answers HTTP 403
        return
    offered = websocket.scope.get("subprotocols", [])
    chosen = next((p for p in (BATCH_SUBPROTOCOL, SUBPROTOCOL) if p in offered), None)
    await websocket.accept(subprotocol=chosen)
    if isinstance(principal, Refusal):
        await websocket.close(REFUSALS[principal], principal.value)
        return
    native: DetachableSocket | None = (websocket.scope.get("extensions") or {}).get(EXTENSION)
    socket = native if native is not None else AsgiSocket(websocket)
    conn = open_connection(services, principal, socket, "ws", batch=chosen == BATCH_SUBPROTOCOL)
    if isinstance(conn, Refusal):
        await websocket.close(REFUSALS[conn], conn.value)
        return
    logger.info(
        "ws connect client_id=%s user=%s peer=%s",
        conn.client_id,
        conn.username,
        client_address(websocket),
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
