"""``GET /ws``: authenticate, accept, then hand the connection over.

All protocol decisions are in ``protocol.py`` (client messages) and ``hub.py`` /
``connection.py`` (delivery). Under uvicorn with tidings' transport (``transport.py``)
the endpoint detaches the connection and returns: a :class:`Session` then takes the
client's messages straight from the transport, and an idle connection holds no task at
all. Under any other ASGI server the endpoint stays and pumps ``receive()`` into the
same session.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from tidings.api.deps import Services
from tidings.auth import COOKIE_NAME, authenticate, origin_allowed
from tidings.codes import PROTOCOL_VERSION, CloseCode
from tidings.connection import Connection, ConnState
from tidings.hub import Hub
from tidings.protocol import ClientMessages, Close, Reply, Subscribe, Unsubscribe
from tidings.sockets import EXTENSION, AsgiSocket, DetachableSocket

logger = logging.getLogger("tidings.ws")

SUBPROTOCOL = "tidings.v1"
BATCH_SUBPROTOCOL = "tidings.batch.v1"  # frames carry a JSON array of messages

_finishing: set[asyncio.Task[None]] = set()  # a task must be referenced until it ends


class Session:
    """One connection's client messages, handled in order, and its end.

    :meth:`receive` acts at once on what needs no I/O (replies, unsubscribe, close). A
    subscribe needs the database: it runs in a task, later messages wait in an inbox
    behind it, and ``resume`` is called when the inbox is empty again (the detached path
    stops reading the socket meanwhile, which bounds the inbox).
    """

    __slots__ = ("_inbox", "_resume", "_started", "_task", "conn", "hub")

    def __init__(self, conn: Connection, hub: Hub, resume: Callable[[], None]) -> None:
        self.conn = conn
        self.hub = hub
        self._resume = resume
        self._inbox: list[str | bytes] | None = None  # a list while a subscribe runs
        self._task: asyncio.Task[None] | None = None
        self._started = time.monotonic()

    def receive(self, data: str | bytes) -> bool:
        """Handle one client message; True if it is (or waits behind) a subscribe."""
        if self._inbox is not None:
            self._inbox.append(data)
            return True
        subscribe = self._handle(data)
        if subscribe is None:
            return False
        self._inbox = []
        self._task = asyncio.create_task(self._subscribe(subscribe))
        return True

    def _handle(self, data: str | bytes) -> Subscribe | None:
        """Act on one message at once, unless it is a subscribe: return that instead."""
        action = self.conn.messages.receive(data, asyncio.get_running_loop().time())
        if isinstance(action, Subscribe):
            return action
        conn = self.conn
        if isinstance(action, Reply):
            conn.send_message(action.message)
        elif isinstance(action, Unsubscribe):
            self.hub.unsubscribe(conn, action.project_id, action.request_id)
        elif isinstance(action, Close):
            conn.close(action.code, action.reason, flush=True)
        return None

    async def idle(self) -> None:
        """Wait until every message received so far has been handled."""
        if self._task is not None:
            await asyncio.shield(self._task)

    def disconnected(self, code: int) -> None:
        task = asyncio.get_running_loop().create_task(self.finish(code))
        _finishing.add(task)
        task.add_done_callback(_finishing.discard)

    async def finish(self, code: int | None) -> None:
        """Release the connection: leave the hub, let a running subscribe see it, log."""
        conn = self.conn
        self.hub.unregister(conn)
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await conn.finish()
        logger.info(
            "ws disconnect client_id=%s user=%s code=%s server_code=%s duration=%.1fs",
            conn.client_id,
            conn.username,
            code,
            conn.close_code,
            time.monotonic() - self._started,
        )

    async def _subscribe(self, action: Subscribe) -> None:
        """Answer subscribes, and the messages queued behind them, until none is left."""
        conn = self.conn
        try:
            pending: Subscribe | None = action
            while pending is not None:
                await self.hub.subscribe(
                    conn, pending.project_id, pending.since, pending.request_id
                )
                pending = None
                while pending is None and self._inbox and conn.state is ConnState.OPEN:
                    pending = self._handle(self._inbox.pop(0))
        finally:
            self._inbox = None
            self._task = None
            self._resume()


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
    fast: DetachableSocket | None = (websocket.scope.get("extensions") or {}).get(EXTENSION)
    hub = services.hub
    conn = Connection(
        client_id=secrets.token_hex(8),
        user_id=principal.user_id,
        username=principal.username,
        credential=principal.credential,
        socket=fast if fast is not None else AsgiSocket(websocket),
        messages=ClientMessages(
            max_message_bytes=settings.ws_max_message_bytes,
            max_subscriptions=settings.ws_max_subscriptions,
            rate=settings.ws_rate_limit,
            burst=settings.ws_rate_burst,
            now=asyncio.get_running_loop().time(),
        ),
        max_queue_messages=settings.ws_max_queue_messages,
        max_queue_bytes=settings.ws_max_queue_bytes,
        close_timeout=settings.ws_close_timeout,
        batch=chosen == BATCH_SUBPROTOCOL,
        **hub.connection_args(),
    )
    hub.register(conn)
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
    if fast is not None:
        fast.detach(Session(conn, hub, fast.resume_reading))
        return
    await _pump(websocket, Session(conn, hub, lambda: None))


async def _pump(websocket: WebSocket, session: Session) -> None:
    """The ASGI fallback: this coroutine lives as long as the connection."""
    code: int | None = None
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                code = message.get("code")
                break
            data = message.get("text")
            if session.receive(data if data is not None else message.get("bytes") or b""):
                await session.idle()
    except WebSocketDisconnect as exc:
        code = exc.code
    finally:
        await session.finish(code)


def _number(value: float) -> float | int:
    return int(value) if value == int(value) else value
