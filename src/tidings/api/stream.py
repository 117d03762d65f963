"""``GET /api/stream``: the ``/ws`` events as Server-Sent Events, for networks that break
WebSocket.

The same opening as ``/ws`` (``admission.py``: Origin, cookie or bearer, the user's
connection cap), answered as HTTP statuses, then one
:class:`~tidings.connection.Connection` over an
:class:`~tidings.stream.EventStreamSocket`, registered with the hub like a socket: the same
messages, the same delivery rules and the same bounded queue. The projects come from the
query (``project=ID``, repeated); where each resumes from, from ``Last-Event-ID`` (the
cursor of the stream's last event) or else ``since=ID:SEQ``.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tidings.admission import Refusal, identify, open_connection
from tidings.api.deps import Services
from tidings.connection import Connection
from tidings.messages import PROJECT_ID, PROJECT_ID_RULE, Subscribe
from tidings.proxies import client_address
from tidings.stream import MAX_SEQ, BadCursor, EventStreamSocket, decode_cursor

logger = logging.getLogger("tidings.ws")

PATH = "/api/stream"


# The HTTP status answering each refusal of the opening (admission.py).
STATUSES: dict[Refusal, int] = {
    Refusal.ORIGIN: 403,
    Refusal.UNAUTHENTICATED: 401,
    Refusal.TOO_MANY: 429,
}


class Refused(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.response: Response = JSONResponse({"detail": detail}, status, headers)

    @classmethod
    def answering(cls, refusal: Refusal) -> Refused:
        """The HTTP answer to a refusal of the opening; a 401 says how to authenticate."""
        challenge = {"WWW-Authenticate": "Bearer"} if refusal is Refusal.UNAUTHENTICATED else None
        return cls(STATUSES[refusal], refusal.value, challenge)


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
        request = Request(scope, receive)
        services: Services = request.app.state.services
        try:
            socket, conn, plan = await _admit(services, request)
        except Refused as refused:
            await refused.response(scope, receive, send)
            return
        logger.info(
            "stream connect client_id=%s user=%s peer=%s projects=%d",
            conn.client_id,
            conn.username,
            client_address(request),
            len(plan.projects),
        )
        for project_id in plan.projects:
            snapshot = project_id in plan.snapshot
            conn.take(Subscribe(project_id, plan.since.get(project_id), None, snapshot))
        try:
            await socket.run(receive, send)
        finally:
            await services.hub.disconnected(conn, None)


def route() -> Route:
    return Route(PATH, StreamEndpoint(), methods=["GET"], include_in_schema=False)


async def _admit(
    services: Services, request: Request
) -> tuple[EventStreamSocket, Connection, Plan]:
    """The opening of ``/ws``, with the stream's query checked between the credential and
    the user's connection cap (a bad query is a 400 before a full cap's 429), registered
    and greeted; each refusal raised as its HTTP answer."""
    principal = await identify(services, request.headers, request.cookies)
    if isinstance(principal, Refusal):
        raise Refused.answering(principal)
    plan = Plan(request, services.settings.ws_max_subscriptions)
    socket = EventStreamSocket(plan.projects, plan.since)
    conn = open_connection(services, principal, socket, "stream", batch=False)
    if isinstance(conn, Refusal):
        raise Refused.answering(conn)
    return socket, conn, plan
