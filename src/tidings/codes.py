"""Every WebSocket close code and error code tidings uses, with what a client should do.

This table is the protocol: ``docs/protocol.md``, the Python client and the browser client
(through ``GET /api/protocol``) all read it from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_PAYLOAD = 1007
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    SLOW_CONSUMER = 4008
    UNAUTHORIZED = 4401
    RATE_LIMITED = 4429


@dataclass(frozen=True, slots=True)
class CloseInfo:
    name: str
    meaning: str
    reconnect: bool


CLOSE_CODES: dict[CloseCode, CloseInfo] = {
    CloseCode.NORMAL: CloseInfo("normal", "The connection ended normally.", reconnect=False),
    CloseCode.GOING_AWAY: CloseInfo(
        "going_away", "The peer went away (page closed, node leaving).", reconnect=True
    ),
    CloseCode.PROTOCOL_ERROR: CloseInfo(
        "protocol_error",
        "The client broke the WebSocket protocol (RFC 6455). Fix the client before retrying.",
        reconnect=True,
    ),
    CloseCode.INVALID_PAYLOAD: CloseInfo(
        "invalid_payload",
        "A text message was not valid UTF-8. Reconnect, but do not resend it.",
        reconnect=True,
    ),
    CloseCode.MESSAGE_TOO_BIG: CloseInfo(
        "message_too_big",
        "A client message exceeded TIDINGS_WS_MAX_MESSAGE_BYTES. Reconnect, but do not resend it.",
        reconnect=True,
    ),
    CloseCode.INTERNAL_ERROR: CloseInfo(
        "internal_error",
        "The server failed (a subscribe the database could not serve included), or the "
        "client did not answer pings within TIDINGS_WS_PING_TIMEOUT. Reconnect and resume "
        "with `since`.",
        reconnect=True,
    ),
    CloseCode.SERVICE_RESTART: CloseInfo(
        "service_restart",
        "The node is shutting down. Reconnect (to any node) and resume with `since`, after a "
        "random delay up to the reason's `reconnect_within_ms`.",
        reconnect=True,
    ),
    CloseCode.TRY_AGAIN_LATER: CloseInfo(
        "try_again_later",
        "The user has too many open connections (TIDINGS_WS_MAX_CONNECTIONS_PER_USER). "
        "Reconnect after a back-off, or close another connection first.",
        reconnect=True,
    ),
    CloseCode.SLOW_CONSUMER: CloseInfo(
        "slow_consumer",
        "The client read too slowly and its outbound queue overflowed. "
        "Reconnect and resume with `since`: nothing durable is lost.",
        reconnect=True,
    ),
    CloseCode.UNAUTHORIZED: CloseInfo(
        "unauthorized",
        "No valid session or token, or it was revoked or has expired. "
        "Log in again before reconnecting.",
        reconnect=False,
    ),
    CloseCode.RATE_LIMITED: CloseInfo(
        "rate_limited",
        "The client kept sending faster than allowed after a rate_limited error. "
        "Reconnect after a back-off.",
        reconnect=True,
    ),
}


class ErrorCode(StrEnum):
    """``code`` of an ``error`` message; the connection stays open after each."""

    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    INTERNAL = "internal"


ERROR_CODES: dict[ErrorCode, str] = {
    ErrorCode.BAD_REQUEST: "The message was not valid JSON, had an unknown type or a bad field.",
    ErrorCode.NOT_FOUND: "No such project, or the user cannot see it (the two look the same).",
    ErrorCode.RATE_LIMITED: "Too many messages; slow down or the connection is closed with 4429.",
    ErrorCode.TOO_MANY_SUBSCRIPTIONS: "The per-connection subscription limit is reached.",
    ErrorCode.INTERNAL: "The server failed to handle the request; it is safe to retry.",
}


def restart_reason(spread: float) -> str:
    """The 1012 close reason of a node shutting down: clients wait a random time up to
    ``spread`` seconds before reconnecting, so a whole fleet does not return at once."""
    return f"service restart; reconnect_within_ms={round(spread * 1000)}"


def reconnect_within(reason: str) -> float | None:
    """Seconds a close reason suggests spreading the reconnect over (None: none)."""
    match = _RECONNECT_WITHIN.search(reason or "")
    return int(match.group(1)) / 1000 if match else None


_RECONNECT_WITHIN = re.compile(r"\breconnect_within_ms=(\d{1,7})\b")


def protocol_table() -> dict[str, object]:
    """The tables as JSON, served at ``GET /api/protocol`` for clients."""
    return {
        "protocol": PROTOCOL_VERSION,
        "close_codes": {
            str(int(code)): {"name": i.name, "meaning": i.meaning, "reconnect": i.reconnect}
            for code, i in CLOSE_CODES.items()
        },
        "error_codes": {str(code): meaning for code, meaning in ERROR_CODES.items()},
    }


PROTOCOL_VERSION = 1
