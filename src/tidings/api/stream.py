"""``GET /api/stream``: the ``/ws`` events as Server-Sent Events, for networks that break
WebSocket.

The same checks as ``/ws`` (Origin, then cookie or bearer), then one
:class:`~tidings.connection.Connection` over an
:class:`~tidings.stream.EventStreamSocket`, registered with the hub like a socket: the same
messages, the same delivery rules and the same bounded queue. The projects come from the
query (``project=ID``, repeated); where each resumes from, from ``Last-Event-ID`` (the
cursor of the stream's last event) or else ``since=ID:SEQ``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tidings.api.deps import Services
from tidings.auth import COOKIE_NAME, Principal, origin_allowed
from tidings.codes import PROTOCOL_VERSION
from tidings.connection import Connection
from tidings.events import timestamp
from tidings.messages import PROJECT_ID, PROJECT_ID_RULE, ClientMessages, Subscribe
from tidings.proxies import client_address
from tidings.stream import MAX_SEQ, BadCursor, EventStreamSocket, decode_cursor

logger = logging.getLogger("tidings.ws")

PATH = "/api/stream"


class Refused(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.response: Response = JSONResponse({"detail": detail}, status, headers)


class Plan:
    """What a stream request asks for, validated: its projects, in order, and where each
    starts (``since``: None for the newest seq), and which want a snapshot."""

    def __init__(self, request: Request, max_projects: int) -> None:
        query = request.query_params
        self.projects = list(dict.fromkeys(query.getlist("project")))
        if len(self.projects) > max_projects:
            raise Refused(400, f"at most {max_projects} projects per stream")
        for project_id in self.projects:
            if PROJECT_ID.fullmatch(project_id) is None:
                raise Refused(400, f"project: {PROJECT_ID_RULE}")
        self.since: dict[str, int] = {}
        for value in query.getlist("since"):
            project_id, _, seq = value.partition(":")
            if (
                project_id not in self.projects
                or not (seq.isascii() and seq.isdigit())  # isdigit() alone takes "²"
                or len(seq) > len(str(MAX_SEQ))  # before int(), which refuses 4,300 digits
                or int(seq) > MAX_SEQ
            ):
                raise Refused(400, "since must be PROJECT:SEQ for a project of the stream")
            self.since[project_id] = int(seq)
        self.snapshot = set(query.getlist("snapshot"))
        if not self.snapshot <= set(self.projects):
            raise Refused(400, "snapshot must name a project of the stream")
        last_event_id = request.headers.get("last-event-id")
        if last_event_id is not None:
            try:
                cursor = decode_cursor(last_event_id, max_projects)
            except BadCursor:
                raise Refused(
                    400, "Last-Event-ID is not a cursor of this stream; reconnect without it"
                ) from None
            # Newer than any `since` of the URL: it is where the last stream got to.
            self.since.update((p, s) for p, s in cursor.items() if p in self.projects)


class StreamEndpoint:
    """An ASGI app, mounted as a plain Starlette route (``app.router.routes``) as ``/ws``
    is: FastAPI would hold a dependency exit stack for the stream's whole life."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            admitted = await _admit(Request(scope, receive))
        except Refused as refused:
            await refused.response(scope, receive, send)
            return
        await Stream(*admitted)(scope, receive, send)


def route() -> Route:
    return Route(PATH, StreamEndpoint(), methods=["GET"], include_in_schema=False)


class Stream:
    """The response of an admitted stream: written by the stream itself, for as long as
    the connection lives."""

    def __init__(self, services: Services, principal: Principal, plan: Plan) -> None:
        self.services = services
        self.principal = principal
        self.plan = plan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings, hub = self.services.settings, self.services.hub
        principal, plan = self.principal, self.plan
        socket = EventStreamSocket(plan.projects, plan.since)
        conn = Connection(
            client_id=secrets.token_hex(8),
            user_id=principal.user_id,
            username=principal.username,
            credential=principal.credential,
            socket=socket,
            owner=hub,
            messages=ClientMessages(  # a stream has no client messages; the type wants one
                max_message_bytes=settings.ws_max_message_bytes,
                rate=settings.ws_rate_limit,
                burst=settings.ws_rate_burst,
                now=asyncio.get_running_loop().time(),
            ),
            max_subscriptions=settings.ws_max_subscriptions,
            max_queue_messages=settings.ws_max_queue_messages,
            max_queue_bytes=settings.ws_max_queue_bytes,
            close_timeout=settings.ws_close_timeout,
        )
        # No await since _admit counted this user's connections: the limit is exact.
        hub.register(conn, principal.expires_at)
        logger.info(
            "stream connect client_id=%s user=%s peer=%s projects=%d",
            conn.client_id,
            conn.username,
            client_address(Request(scope)),
            len(plan.projects),
        )
        heartbeat = settings.heartbeat_interval
        conn.send_message(
            {
                "type": "connection.established",
                "client_id": conn.client_id,
                "user": {"id": principal.user_id, "username": principal.username},
                "heartbeat_interval": int(heartbeat) if heartbeat == int(heartbeat) else heartbeat,
                "protocol": PROTOCOL_VERSION,
                "expires_at": timestamp(principal.expires_at) if principal.expires_at else None,
            }
        )
        for project_id in plan.projects:
            snapshot = project_id in plan.snapshot
            conn.take(Subscribe(project_id, plan.since.get(project_id), None, snapshot))
        try:
            await socket.run(receive, send)
        finally:
            await hub.disconnected(conn, None)


async def _admit(request: Request) -> tuple[Services, Principal, Plan]:
    """The checks of ``/ws``, in the same order, answered as HTTP statuses."""
    services: Services = request.app.state.services
    settings = services.settings
    if not origin_allowed(
        request.headers.get("origin"), request.headers.get("host"), settings.allowed_origins
    ):
        raise Refused(403, "origin not allowed")
    principal = await services.auth.authenticate(
        request.cookies.get(COOKIE_NAME), request.headers.get("authorization")
    )
    if principal is None:
        raise Refused(401, "not authenticated", {"WWW-Authenticate": "Bearer"})
    plan = Plan(request, settings.ws_max_subscriptions)
    if services.hub.connections_of(principal.user_id) >= settings.ws_max_connections_per_user:
        logger.warning("stream refused user=%s: too many connections", principal.username)
        raise Refused(429, "too many connections for this user")
    return services, principal, plan
