"""How a connection opens, the same for ``/ws`` and ``/api/stream``.

Both transports let a client in by the same steps, in the same order: the Origin, then the
credential (cookie or bearer, through the node's credential cache), then — whatever the
transport checks of its own in between — the user's connection cap, and last the
:class:`~tidings.connection.Connection`, registered with the hub (which closes it when its
credential expires) and greeted with ``connection.established``.

The steps answer a :class:`Refusal`, not a transport's answer: ``ws.py`` turns it into a
close code, ``api/stream.py`` into an HTTP status, each from its own table.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
from collections.abc import Mapping

from tidings.api.deps import Services
from tidings.auth import COOKIE_NAME, Principal, origin_allowed
from tidings.codes import PROTOCOL_VERSION
from tidings.connection import Connection
from tidings.events import timestamp
from tidings.messages import ClientMessages
from tidings.sockets import Socket

logger = logging.getLogger("tidings.ws")


class Refusal(enum.Enum):
    """Why a connection was not let in; the value is the reason a client is told."""

    ORIGIN = "origin not allowed"
    UNAUTHENTICATED = "not authenticated"
    TOO_MANY = "too many connections for this user"


async def identify(
    services: Services, headers: Mapping[str, str], cookies: Mapping[str, str]
) -> Principal | Refusal:
    """Who asks for a connection: the Origin is checked first (a foreign page's request
    costs no credential lookup), then the bearer token or session cookie."""
    if not origin_allowed(
        headers.get("origin"), headers.get("host"), services.settings.allowed_origins
    ):
        return Refusal.ORIGIN
    principal = await services.auth.authenticate(
        cookies.get(COOKIE_NAME), headers.get("authorization")
    )
    return Refusal.UNAUTHENTICATED if principal is None else principal


def open_connection(
    services: Services, principal: Principal, socket: Socket, transport: str, *, batch: bool
) -> Connection | Refusal:
    """The user's connection over ``socket``, registered and greeted, unless the user
    already holds as many as allowed (``transport`` names the refusal in the log).

    Synchronous, so that nothing runs between counting the user's connections and
    registering this one: the cap is exact.
    """
    settings, hub = services.settings, services.hub
    if hub.connections_of(principal.user_id) >= settings.ws_max_connections_per_user:
        logger.warning("%s refused user=%s: too many connections", transport, principal.username)
        return Refusal.TOO_MANY
    conn = Connection(
        client_id=secrets.token_hex(8),
        user_id=principal.user_id,
        username=principal.username,
        credential=principal.credential,
        socket=socket,
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
        batch=batch,
    )
    hub.register(conn, principal.expires_at)
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
    return conn
