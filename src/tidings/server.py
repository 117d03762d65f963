"""Serving tidings with uvicorn: the options tidings needs, and ``tidings serve``.

``/ws`` runs on tidings' own WebSocket transport (``transport.py``), handed to uvicorn
through its public ``ws=`` option; the rest of uvicorn is used as it comes.
"""

from __future__ import annotations

import resource
from typing import Any

import uvicorn

from tidings.settings import Settings
from tidings.transport import WebSocketTransport


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn options tidings needs, whoever starts the server (CLI, tests, benchmarks).

    ``ws`` is :class:`WebSocketTransport`; the settings uvicorn has no option for (the
    close timeout) reach it through the app's lifespan state (see ``create_app``).
    """
    return {
        "ws": WebSocketTransport,
        "ws_per_message_deflate": False,  # encode once for everyone: no per-socket compression
        "ws_max_size": settings.ws_max_message_bytes,
        "ws_ping_interval": settings.ws_ping_interval,
        "ws_ping_timeout": settings.ws_ping_timeout,
        "timeout_graceful_shutdown": 10,
        "proxy_headers": False,  # tidings reads forwarding headers itself (proxies.py)
        # Beyond this many connections, new HTTP requests and upgrades get 503.
        "limit_concurrency": settings.max_connections or default_max_connections(),
        # Connections not yet accepted wait in the kernel; uvicorn's default (2,048) is
        # less than a node's clients reconnecting at once after a restart.
        "backlog": settings.listen_backlog,
    }


def default_max_connections() -> int:
    """The open-file limit less a margin for the database, Redis, logs and files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1_000_000
    return max(64, soft - 64)


def serve(settings: Settings, host: str, port: int, workers: int, log_level: str) -> None:
    """Run tidings under uvicorn until SIGTERM/SIGINT; each worker builds its app from env."""
    uvicorn.run(
        "tidings.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        log_level=log_level,
        **uvicorn_options(settings),
    )
