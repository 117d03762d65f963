"""FastAPI dependencies as ``Annotated`` aliases: ``App`` and ``CurrentUser``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, Request, status

from tidings.auth import COOKIE_NAME, UNSAFE_METHODS, LoginThrottle, Principal, authenticate
from tidings.auth import origin_allowed as _origin_allowed
from tidings.db import Database
from tidings.events import EventLog
from tidings.metrics import Metrics
from tidings.settings import Settings
from tidings.storage import Storage

if TYPE_CHECKING:
    from tidings.hub import Hub
    from tidings.processes import ProcessRunner


@dataclass
class Services:
    """Everything a request handler may use; built by ``create_app``, one per app."""

    settings: Settings
    metrics: Metrics
    db: Database
    eventlog: EventLog
    storage: Storage
    hub: Hub
    throttle: LoginThrottle
    processes: ProcessRunner


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


App = Annotated[Services, Depends(get_services)]


def origin_allowed(request: Request, services: Services) -> bool:
    return _origin_allowed(
        request.headers.get("origin"),
        request.headers.get("host"),
        services.settings.allowed_origins,
    )


async def current_user(request: Request, services: App) -> Principal:
    principal = await authenticate(
        services.db, request.cookies.get(COOKIE_NAME), request.headers.get("authorization")
    )
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "not authenticated",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if (
        principal.via == "cookie"
        and request.method in UNSAFE_METHODS
        and not origin_allowed(request, services)
    ):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-origin request refused")
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]


def not_found(what: str = "project") -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")
