"""What a client's messages ask for: parsing, validation and rate limiting, pure.

:class:`ClientMessages` takes one raw client message and the current monotonic time and
returns an action: reply, close, subscribe (one project, or several in one message) or
unsubscribe. It does no I/O, keeps no clock
and never touches the database; ``connection.py`` feeds it each message as it arrives and
carries the actions out in order (subscription limits and delivery are ``delivery.py``'s).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from tidings.codes import CloseCode, ErrorCode

MAX_ID_LENGTH = 128
# Project ids are tidings' own (hex); anything else cannot name a project. Checking the
# shape here keeps NUL bytes and stray Unicode away from the database.
PROJECT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Messages a client may send while rate limited before the connection is closed.
RATE_LIMIT_STRIKES = 10


@dataclass(frozen=True, slots=True)
class Reply:
    """Send this message (the I/O layer adds ``timestamp``)."""

    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Close:
    code: CloseCode
    reason: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    project_id: str
    since: int | None
    request_id: Any = None
    snapshot: bool = False  # send the project's state with `subscribed` when not resuming


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    project_id: str
    request_id: Any = None


@dataclass(frozen=True, slots=True)
class SubscribeMany:
    """A ``subscribe`` naming several projects (``projects``): one action per entry, in
    the order given, each answered as if it had come in a message of its own (an entry
    that is not valid is an error :class:`Reply` in its place)."""

    actions: tuple[Subscribe | Reply, ...]


Action = Reply | Close | Subscribe | SubscribeMany | Unsubscribe


def error(code: ErrorCode, message: str, request_id: Any = None, **extra: Any) -> Reply:
    body: dict[str, Any] = {"type": "error", "code": str(code), "message": message, **extra}
    if request_id is not None:
        body["id"] = request_id
    return Reply(body)


class ClientMessages:
    """Validates, rate-limits and interprets the messages of one connection."""

    __slots__ = (
        "_last",
        "_strikes",
        "_tokens",
        "burst",
        "max_message_bytes",
        "max_projects",
        "rate",
    )

    def __init__(
        self,
        *,
        max_message_bytes: int,
        rate: float,
        burst: int,
        now: float,
        max_projects: int = 200,
    ) -> None:
        """``max_projects``: entries one ``subscribe`` may list (the connection's
        subscription limit)."""
        self.max_message_bytes = max_message_bytes
        self.max_projects = max_projects
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now
        self._strikes = 0

    def receive(self, data: str | bytes, now: float) -> Action:
        size = len(data.encode()) if isinstance(data, str) else len(data)
        if size > self.max_message_bytes:
            return Close(CloseCode.MESSAGE_TOO_BIG, "message too big")
        limited = self._take_token(now)
        if limited is not None:
            return limited
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            return error(ErrorCode.BAD_REQUEST, "message is not valid JSON")
        if not isinstance(message, dict):
            return error(ErrorCode.BAD_REQUEST, "message must be a JSON object")
        request_id = message.get("id")
        if request_id is not None and not _valid_id(request_id):
            return error(ErrorCode.BAD_REQUEST, "id must be a string or number (128 chars max)")
        kind = message.get("type")
        if kind == "ping":
            return Reply(_with_id({"type": "pong"}, request_id))
        if kind == "subscribe":
            return self._subscribe(message, request_id)
        if kind == "unsubscribe":
            return self._unsubscribe(message, request_id)
        if not isinstance(kind, str):
            return error(ErrorCode.BAD_REQUEST, "missing field: type", request_id)
        return error(ErrorCode.BAD_REQUEST, f"unknown message type {kind[:64]!r}", request_id)

    def _subscribe(self, message: dict[str, Any], request_id: Any) -> Action:
        if "projects" not in message:
            return _subscribe_one(message, request_id)
        if any(key in message for key in ("project_id", "since", "snapshot")):
            return error(ErrorCode.BAD_REQUEST, PROJECTS_ALONE, request_id)
        projects = message["projects"]
        if not isinstance(projects, list) or not projects:
            return error(ErrorCode.BAD_REQUEST, PROJECTS_RULE, request_id)
        if len(projects) > self.max_projects:
            return error(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"at most {self.max_projects} projects per subscribe",
                request_id,
            )
        return SubscribeMany(
            tuple(
                _subscribe_one(entry, request_id)
                if isinstance(entry, dict)
                else error(ErrorCode.BAD_REQUEST, ENTRY_RULE, request_id)
                for entry in projects
            )
        )

    def _unsubscribe(self, message: dict[str, Any], request_id: Any) -> Action:
        project_id = message.get("project_id")
        if not _valid_project_id(project_id):
            return error(ErrorCode.BAD_REQUEST, PROJECT_ID_RULE, request_id)
        assert isinstance(project_id, str)
        return Unsubscribe(project_id, request_id)

    def _take_token(self, now: float) -> Action | None:
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            self._strikes = 0
            return None
        self._strikes += 1
        if self._strikes > RATE_LIMIT_STRIKES:
            return Close(CloseCode.RATE_LIMITED, "rate limit exceeded")
        return error(
            ErrorCode.RATE_LIMITED,
            f"too many messages; at most {self.rate:g} per second",
            # Up to the next millisecond: never 0, which a client would take as "now".
            retry_after=math.ceil((1 - self._tokens) / self.rate * 1000) / 1000,
        )


def _subscribe_one(message: dict[str, Any], request_id: Any) -> Subscribe | Reply:
    """One project's subscribe: the message itself, or one entry of its ``projects``. An
    error names the project when the project id at least is valid."""
    project_id = message.get("project_id")
    if not _valid_project_id(project_id):
        return error(ErrorCode.BAD_REQUEST, PROJECT_ID_RULE, request_id)
    assert isinstance(project_id, str)
    since = message.get("since")
    if since is not None and (type(since) is not int or not 0 <= since < 2**63):
        return error(
            ErrorCode.BAD_REQUEST,
            "since must be an integer >= 0",
            request_id,
            project_id=project_id,
        )
    snapshot = message.get("snapshot")
    if snapshot is None:
        snapshot = False
    elif not isinstance(snapshot, bool):
        return error(
            ErrorCode.BAD_REQUEST,
            "snapshot must be true or false",
            request_id,
            project_id=project_id,
        )
    return Subscribe(project_id, since, request_id, snapshot)


def _with_id(message: dict[str, Any], request_id: Any) -> dict[str, Any]:
    if request_id is not None:
        message["id"] = request_id
    return message


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and len(value) <= MAX_ID_LENGTH


PROJECT_ID_RULE = "project_id must be a project id (1 to 64 letters, digits, - or _)"
PROJECTS_RULE = "projects must be a non-empty list of {project_id, since?, snapshot?} objects"
PROJECTS_ALONE = "give either project_id (with since, snapshot) or projects, not both"
ENTRY_RULE = "each entry of projects must be an object {project_id, since?, snapshot?}"


def _valid_project_id(value: Any) -> bool:
    return isinstance(value, str) and PROJECT_ID.fullmatch(value) is not None
