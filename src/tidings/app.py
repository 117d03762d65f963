"""The application factory: ``create_app(settings)`` builds one tidings node."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.telemetry import TelemetryConfig
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from starlette.requests import HTTPConnection, Request

from tidings import __version__
from tidings.api import (
    auth,
    dashboard,
    docs,
    events,
    files,
    health,
    presence,
    processes,
    projects,
    stream,
    validation,
)
from tidings.api.deps import Services
from tidings.auth import Authenticator
from tidings.broker import create_broker, create_presence_store
from tidings.codes import restart_reason
from tidings.db import Database, create_engine, disk_full, migrate, unavailable
from tidings.events import EventLog
from tidings.headers import SecurityHeaders
from tidings.hub import Hub
from tidings.metrics import Metrics
from tidings.models import User
from tidings.outages import first_line
from tidings.presence import Presence as NodePresence
from tidings.processes import ProcessRunner
from tidings.security import Passwords, hash_password, new_password
from tidings.settings import Settings
from tidings.storage import Storage
from tidings.throttle import LoginThrottle
from tidings.transport import OPTIONS_KEY, TransportOptions
from tidings.ws import Upgrades

# FastAPI's own OpenTelemetry instrumentation, off (TIDINGS_OPENTELEMETRY): it would check
# for configured providers at every request and connection, some 3 % of a connect's time.
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}

logger = logging.getLogger("tidings")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the ASGI app. Nothing connects until the lifespan starts."""
    settings = settings or Settings()
    db = Database(create_engine(settings.effective_database_url, settings.database_timeout or None))
    broker = create_broker(settings.broker_url, settings.broker_timeout)
    eventlog = EventLog(db, broker, settings.event_history, settings.broker_channel)
    storage = Storage(settings.files_dir)
    authenticator = Authenticator(db)

    metrics = Metrics()
    hub = Hub(
        eventlog,
        metrics,
        heartbeat_interval=settings.heartbeat_interval,
        head_sync_interval=settings.head_sync_interval,
        replay_concurrency=settings.replay_concurrency,
        restart_reason=restart_reason(settings.ws_reconnect_spread),
        snapshot_max_files=settings.snapshot_max_files,
        access_cache_entries=settings.access_cache_entries,
        resume_tail_bytes=settings.resume_tail_bytes,
        presence=NodePresence(
            create_presence_store(
                settings.broker_url,
                settings.broker_channel,
                settings.presence_expiry,
                settings.broker_timeout,
            ),
            eventlog,
            settings.presence_expiry,
        ),
        forget_credential=authenticator.forget,
        revoked_among=authenticator.revoked_among,
    )
    services = Services(
        settings=settings,
        metrics=metrics,
        db=db,
        auth=authenticator,
        eventlog=eventlog,
        storage=storage,
        hub=hub,
        throttle=LoginThrottle(settings.login_failure_window),
        passwords=Passwords(settings.password_hash_concurrency),
        processes=ProcessRunner(settings, db, eventlog, storage),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        storage.prepare()
        # On an engine of its own, without the statements' timeout: a migration of a
        # large log may take long.
        migrations = create_engine(settings.effective_database_url)
        try:
            await migrate(migrations)
        finally:
            await migrations.dispose()
        if settings.create_admin:
            await ensure_admin(db)
        await broker.connect()
        await hub.start()
        await authenticator.start()
        await services.processes.start()
        metrics.watch_queues(
            lambda: sum(c.queue.count for c in hub.connections.values()),
            lambda: sum(c.queue.nbytes for c in hub.connections.values()),
        )
        # This loop's, whichever thread reads the registry (tests read it directly).
        loop = asyncio.get_running_loop()
        metrics.watch_tasks(lambda: len(asyncio.all_tasks(loop)))
        # Each connection holds a few dozen long-lived objects, which every run of the
        # collector's older generations walks: at Python's default (a young-generation
        # run every 700 allocations), 10,000 clients reconnecting at once took nearly
        # twice as long to catch up (docs/performance.md).
        gc_thresholds = gc.get_threshold()
        if settings.gc_threshold:
            gc.set_threshold(settings.gc_threshold)
        try:
            yield lifespan_state(settings)  # uvicorn hands it to every /ws transport
        finally:
            gc.set_threshold(*gc_thresholds)
            # Each part stops even if one before it fails (the database may be down):
            # a node must always be able to stop.
            for stop in (
                services.processes.stop,
                authenticator.stop,
                hub.stop,
                broker.disconnect,
                db.dispose,
            ):
                try:
                    await stop()
                except Exception:
                    logger.exception("stopping failed: %s", stop.__qualname__)

    app = docs.create_fastapi(
        settings.docs,
        title="tidings",
        version=__version__,
        description="Projects, files and processes over REST; every change live over /ws.",
        lifespan=lifespan,
        telemetry=None if settings.opentelemetry else NO_TELEMETRY,
    )
    app.state.services = services
    validation.install(app)
    app.add_middleware(SecurityHeaders)
    # Starlette answers an unhandled error outside every middleware: give it the header too.
    app.add_exception_handler(Exception, _internal_error)
    # Handled inside the middleware stack (unlike `Exception` above, which Starlette also
    # re-raises, closing the client's keep-alive connection): a client retrying on the
    # same connection must not find it closed.
    outages = (DBAPIError, OSError)  # OSError: ConnectionError, TimeoutError, a full disk
    for error in outages:
        app.add_exception_handler(error, _outage)
    app.add_middleware(Upgrades, errors=outages, handler=_outage)  # outermost of ours
    for module in (health, auth, projects, presence, files, processes, events):
        app.include_router(module.router)
    app.router.routes.append(stream.route())
    dashboard.mount(app)
    return app


# Seconds a client should wait before retrying a request the database could not serve.
UNAVAILABLE_RETRY_AFTER = 1


async def _internal_error(request: Request, exc: Exception) -> PlainTextResponse:
    return PlainTextResponse(
        "Internal Server Error", 500, headers={"X-Content-Type-Options": "nosniff"}
    )


async def _outage(request: HTTPConnection, exc: Exception) -> Response:
    """The database is down or restarting: the change was not made (its transaction
    rolled back), so 503 and retry; a 500 would say the request itself broke something.
    A disk is full (the files', or the database's): nothing was changed either, and
    retrying will not help until an operator makes room, so 507, said in the log too."""
    if disk_full(exc):
        logger.error(
            "%s %s: out of disk space (%s: %s)",
            request.scope.get("method", "WS"),
            request.url.path,
            type(exc).__name__,
            first_line(exc),
        )
        return JSONResponse(
            {"detail": "the server has no storage space left; nothing was changed"},
            507,
            headers={"X-Content-Type-Options": "nosniff"},
        )
    if not unavailable(exc):
        raise exc  # a statement that failed: the 500 above
    return PlainTextResponse(
        "database unavailable; retry",
        503,
        headers={
            "X-Content-Type-Options": "nosniff",
            "Retry-After": str(UNAVAILABLE_RETRY_AFTER),
        },
    )


def lifespan_state(settings: Settings) -> dict[str, Any]:
    """What the lifespan shares with the server: the transport's options."""
    return {
        OPTIONS_KEY: TransportOptions(
            close_timeout=settings.ws_close_timeout,
            shutdown_reason=restart_reason(settings.ws_reconnect_spread),
        )
    }


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (and ``tidings serve``): settings from the env."""
    return create_app(Settings())


async def ensure_admin(db: Database) -> None:
    """First start: create ``admin`` with a random password and print it once."""
    async with db.write() as session:
        if await session.scalar(select(func.count()).select_from(User)):
            return
        password = new_password()
        session.add(User(username="admin", password_hash=hash_password(password)))
    banner = "=" * 64
    print(
        f"\n{banner}\n tidings: first start, created user 'admin'\n"
        f" password: {password}\n"
        f" (shown once; change it with `tidings users passwd admin`)\n{banner}\n",
        flush=True,
    )
