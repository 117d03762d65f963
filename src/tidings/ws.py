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
from collections.abc import Awaitable, Callable

from fastapi import WebSocket
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect, WebSocketState

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


PATH = "/ws"


class Upgrades:
    """Pure ASGI, outside the app's other middleware: an upgrade to ``/ws`` goes straight
    to :func:`websocket_endpoint`, past the routing and exception middleware, which cost
    as much as the rest of a connect when a node's clients all come back at once. Anything
    else goes on to ``app``.

    What the exception middleware did for an upgrade stays: an exception of one of
    ``errors`` raised before the handshake goes to ``handler`` (the app's, for a database
    it cannot reach: 503 and ``Retry-After``), whose response refuses the upgrade.
    """

    def __init__(
        self,
        app: ASGIApp,
        errors: tuple[type[Exception], ...],
        handler: Callable[[WebSocket, Exception], Awaitable[Response]],
    ) -> None:
        self.app = app
        self.errors = errors
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket" or _route_path(scope) != PATH:
            await self.app(scope, receive, send)
            return
        websocket = WebSocket(scope, receive, send)
        try:
            await websocket_endpoint(websocket)
        except self.errors as exc:
            if websocket.application_state is not WebSocketState.CONNECTING:
                raise
            response = await self.handler(websocket, exc)  # raises it again if not handled
            await response(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path a route matches: without the ``root_path`` a proxy mounts the app at."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def websocket_endpoint(websocket: WebSocket) -> None:
    """Reached through :class:`Upgrades`, not a route: FastAPI's dependency machinery
    would hold an exit stack per connection for nothing."""
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
