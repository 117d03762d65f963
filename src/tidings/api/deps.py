"""FastAPI dependencies as ``Annotated`` aliases: ``App`` and ``CurrentUser``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, TypeVar

from fastapi import Depends, HTTPException, Request, Response, status

from tidings.access import sees
from tidings.auth import (
    COOKIE_NAME,
    UNSAFE_METHODS,
    Authenticator,
    Principal,
    request_source,
    request_source_allowed,
)
from tidings.db import Database
from tidings.events import EventLog
from tidings.metrics import Metrics
from tidings.models import File, Process
from tidings.proxies import own_origin
from tidings.security import Passwords
from tidings.settings import Settings
from tidings.storage import Storage
from tidings.throttle import LoginThrottle

if TYPE_CHECKING:
    from tidings.hub import Hub
    from tidings.processes import ProcessRunner


@dataclass
class Services:
    """Everything a request handler may use; built by ``create_app``, one per app."""

    settings: Settings
    metrics: Metrics
    db: Database
    auth: Authenticator
    eventlog: EventLog
    storage: Storage
    hub: Hub
    throttle: LoginThrottle
    passwords: Passwords
    processes: ProcessRunner


async def get_services(request: Request) -> Services:
    # async, though it awaits nothing: FastAPI runs a plain function dependency in a
    # worker thread, a trip there and back on every request.
    services: Services = request.app.state.services
    return services


App = Annotated[Services, Depends(get_services)]


def same_site(request: Request, services: Services, *, required: bool) -> bool:
    """Whether a state-changing request comes from our own origin or an allowed one, by
    its ``Origin`` (or ``Referer``). Without either it passes only if not ``required``."""
    return request_source_allowed(
        request_source(request.headers.get("origin"), request.headers.get("referer")),
        own_origin(request),
        services.settings.allowed_origins,
        required=required,
    )


async def current_user(request: Request, services: App) -> Principal:
    principal = await services.auth.authenticate(
        request.cookies.get(COOKIE_NAME), request.headers.get("authorization")
    )
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "not authenticated",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # A browser sends the cookie with any request, whoever made the page: a cookie
    # request that changes state must say where it comes from, and that must be us.
    if (
        principal.via == "cookie"
        and request.method in UNSAFE_METHODS
        and not same_site(request, services, required=True)
    ):
        raise HTTPException(status.HTTP_403_FORBIDDEN, CROSS_ORIGIN)
    return principal


CROSS_ORIGIN = (
    "cross-origin request refused: a browser request that changes state must carry an "
    "Origin (or Referer) of this site or of TIDINGS_ALLOWED_ORIGINS"
)


CurrentUser = Annotated[Principal, Depends(current_user)]


def not_found(what: str = "project") -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")


Owned = TypeVar("Owned", File, Process)


async def project_row(
    app: Services, user_id: str, project_id: str, model: type[Owned], row_id: str
) -> Owned:
    """The file or process ``row_id`` of a project ``user_id`` can see: 404 "project not
    found" if they cannot see it, else "file not found" (or process) if it is not the
    project's."""
    async with app.db.read() as session:
        if not await sees(session, user_id, project_id):
            raise not_found()
        row = await session.get(model, row_id)
    if row is None or row.project_id != project_id:
        raise not_found(model.__name__.lower())
    return row


# Read-your-writes: the seq of the durable event a change recorded, on every answer to it.
SEQ_HEADER = "Tidings-Seq"


def tell_seq(response: Response, seq: int | None) -> None:
    """Put the seq of the event this request recorded in the ``Tidings-Seq`` header (a
    client waits for it on its socket: ``wait_for`` / ``seen``); None: it recorded none."""
    if seq is not None:
        response.headers[SEQ_HEADER] = str(seq)
