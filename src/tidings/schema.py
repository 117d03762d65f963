"""Every message of the WebSocket protocol, declared once.

The classes below are the one description of each message's shape:

- ``GET /api/protocol/schema`` serves their JSON Schema (:func:`json_schema`);
- ``static/tidings.d.ts`` declares the same types for TypeScript, generated from that
  schema (``make types``, :mod:`tidings.typescript`);
- the Python client (:mod:`tidings.client`) hands out instances of them
  (:func:`parse_server_message`);
- the tests check that the server sends nothing these classes do not declare, that every
  declared field is sent, that the ``.d.ts`` matches the schema and that docs/protocol.md
  shows every message with every field.

Adding a field or a message type is a change here (a new type also joins
:data:`ServerMessage` or :data:`ClientMessage`), then ``make types`` and an example in
docs/protocol.md; the tests say what is missing.

Two conventions, the same in the schema, the ``.d.ts`` and the classes:

- a field whose default is ``None`` is *optional*: absent when it does not apply, never
  ``null`` on the wire (``recovered?: boolean`` in TypeScript);
- a field typed ``X | None`` without a default is always present and may be ``null``.

Receivers must ignore fields they do not know (a newer server may send more), so the
classes ignore extra fields and the schema allows them. This module imports no server
code: the client uses it without pulling in the database or the web framework.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import KeysView
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal, TypeAlias, cast, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from tidings.codes import CLOSE_CODES, PROTOCOL_VERSION, ErrorCode
from tidings.messages import MAX_ID_LENGTH, PROJECT_ID

# What follows ``custom.`` in a published event's type (the same rule as the publish API's).
CUSTOM_PREFIX = "custom."
CUSTOM_TYPE = r"custom\.[a-z0-9][a-z0-9_.-]{0,63}"

logger = logging.getLogger("tidings.schema")

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

RequestId: TypeAlias = Annotated[str, Field(max_length=MAX_ID_LENGTH)] | int | float
ProjectId: TypeAlias = Annotated[str, Field(pattern=f"^{PROJECT_ID.pattern}$")]
ProcessStatus: TypeAlias = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Message(BaseModel):
    """Base of every message: typed attributes, and read-only item access to the JSON.

    ``message.seq`` is the typed field; ``message["seq"]``, ``message.get("seq")`` and
    ``"seq" in message`` read the JSON object exactly as it came off the wire
    (:attr:`raw`, nested objects as plain dicts), fields this version does not declare
    included. Equality is the typed value's: compare ``raw`` with a dict.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", use_attribute_docstrings=True)

    _raw: dict[str, Any] | None = PrivateAttr(default=None)

    @property
    def raw(self) -> dict[str, Any]:
        """The JSON object as received (or, for a message built here, as it would be sent)."""
        if self._raw is None:
            return self.model_dump(mode="json", exclude_unset=True)
        return self._raw

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    def keys(self) -> KeysView[str]:
        return self.raw.keys()

    def __contains__(self, key: object) -> bool:
        return key in self.raw


class Record(BaseModel):
    """An object inside a message (a user, a project, a file, a process)."""

    model_config = ConfigDict(frozen=True, extra="ignore", use_attribute_docstrings=True)


# -- objects inside messages --------------------------------------------------------------


class User(Record):
    """A user, as ``connection.established`` names the connected one (and presence names
    viewers)."""

    id: str
    username: str


class Project(Record):
    """A project as ``GET /api/projects/{id}`` returns it."""

    id: str
    name: str
    description: str
    owner: str
    """The owner's username."""
    created_at: datetime
    updated_at: datetime
    seq: int
    """The project's newest event seq when this was read: resume from here."""


class FileInfo(Record):
    """The file of a ``file.*`` event."""

    id: str
    name: str
    path: str
    """The folder, ``/`` or ``/a/b``."""
    size: int
    """Bytes."""
    asset_type: str
    """``image``, ``model``, ``video``, ``document`` … (from the name)."""


class StoredFile(FileInfo):
    """A file as ``GET /api/projects/{id}/files`` lists it."""

    content_type: str
    sha256: str
    """Hex SHA-256 of the content."""
    created_at: datetime


class Process(Record):
    """A process as ``GET /api/projects/{id}/processes/{pid}`` returns it."""

    id: str
    project_id: str
    kind: str
    params: dict[str, Any]
    status: ProcessStatus
    progress: float
    """0 to 1."""
    message: str
    result: Any | None
    """The kind's result once succeeded (null until then, and after retention)."""
    error: str | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class Snapshot(Record):
    """A project's state at the ``seq`` of the ``subscribed`` that carries it, in the REST
    API's shapes."""

    project: Project
    files: list[StoredFile]
    """In path and name order, at most ``TIDINGS_SNAPSHOT_MAX_FILES``."""
    files_truncated: bool
    """True if ``files`` is not all of them: page the rest over REST."""
    processes: list[Process]
    """The queued and running ones and the most recent others, newest first."""
    processes_truncated: bool
    """True if some queued or recent processes did not fit: list them over REST."""


# -- server to client ---------------------------------------------------------------------


class ServerBase(Message):
    timestamp: datetime
    """When the server sent it: RFC 3339, UTC, milliseconds, ``Z``."""


class ConnectionEstablished(ServerBase):
    """The first message of every connection (again after each reconnect)."""

    type: Literal["connection.established"]
    client_id: str
    user: User
    heartbeat_interval: float = Field(gt=0)
    """Seconds between ``system.heartbeat`` messages. A client that hears nothing for
    twice as long treats the connection as dead: it closes it, reconnects and resumes."""
    protocol: int
    """The protocol version (this is version 1)."""
    expires_at: datetime | None
    """When the credential that opened the connection expires (null: never); the server
    closes the socket with 4401 within 5 s of it."""


class Subscribed(ServerBase):
    """The answer to ``subscribe``; the project's events follow it."""

    type: Literal["subscribed"]
    project_id: str
    seq: int = Field(ge=0)
    """The project's latest seq when the subscription started."""
    recovered: bool | None = None
    """Only when ``since`` was given: true if every event after it follows; false if some
    were lost to retention (refetch the project over REST and carry on from ``seq``)."""
    snapshot: Snapshot | None = None
    """Only when asked for with ``snapshot`` and needed: the project's state at ``seq``."""
    presence: list[User] | None = None
    """Who is viewing the project (subscribed to it on any node), the caller included,
    each user once, by username; ``presence.joined`` and ``presence.left`` update it
    (apply them as set operations: one may repeat what the list shows). This server always
    sends it; optional so that replies of servers that predate presence still parse."""
    id: RequestId | None = None
    """The request's ``id``, if it had one."""


class Unsubscribed(ServerBase):
    """The answer to ``unsubscribe``, or the end of a subscription the server decided."""

    type: Literal["unsubscribed"]
    project_id: str
    reason: Literal["access_revoked"] | None = None
    """Only when the server ended it: the user was removed from the project's members."""
    id: RequestId | None = None
    """The request's ``id``, if it had one."""


class Pong(ServerBase):
    """The answer to ``ping``."""

    type: Literal["pong"]
    id: RequestId | None = None
    """The request's ``id``, if it had one."""


class ErrorMessage(ServerBase):
    """A request failed; the connection stays open."""

    type: Literal["error"]
    code: ErrorCode
    message: str
    """For people; do not parse it."""
    project_id: str | None = None
    """The project the failed request named, when it named one."""
    retry_after: float | None = None
    """With ``rate_limited``: seconds until a message is accepted again."""
    id: RequestId | None = None
    """The request's ``id``, if it had one."""


class ProjectEvent(ServerBase):
    project_id: str
    seq: int = Field(ge=1)
    """Numbered per project, from 1, without gaps; resume after it with ``since``."""


class ProjectCreated(ProjectEvent):
    """A project was created (sent to its owner's connections)."""

    type: Literal["project.created"]
    data: Project


class ProjectUpdated(ProjectEvent):
    """A project was renamed or described, or its members changed."""

    type: Literal["project.updated"]
    data: Project


class ProjectDeleted(ProjectEvent):
    """A project was deleted: its subscriptions end after this."""

    type: Literal["project.deleted"]
    data: Project


class FileUploaded(ProjectEvent):
    """A file was uploaded to the project."""

    type: Literal["file.uploaded"]
    file: FileInfo


class FileDeleted(ProjectEvent):
    """A file was deleted from the project."""

    type: Literal["file.deleted"]
    file: FileInfo


class ProcessStarted(ProjectEvent):
    """A process started running."""

    type: Literal["process.started"]
    process_id: str
    process: Process


class ProcessCompleted(ProjectEvent):
    """A process ended: succeeded, failed or cancelled (``process.status``)."""

    type: Literal["process.completed"]
    process_id: str
    process: Process


class ProcessProgress(ServerBase):
    """A running process's progress. Ephemeral: no ``seq``, never replayed, and under
    backpressure only the newest one per process waits in a connection's queue."""

    type: Literal["process.progress"]
    project_id: str
    process_id: str
    progress: float
    """0 to 1."""
    message: str


class PresenceJoined(ServerBase):
    """A user's first subscription to the project opened (on any node): they are viewing
    it. Ephemeral (no ``seq``, never replayed); sent to the project's subscribers (not to
    that user's own connections: their ``subscribed`` lists them)."""

    type: Literal["presence.joined"]
    project_id: str
    user: User


class PresenceLeft(ServerBase):
    """A user's last subscription to the project closed: unsubscribed, disconnected, lost
    access, or the node that held it stopped (then within 1.25 times
    ``TIDINGS_PRESENCE_EXPIRY``). Ephemeral, like ``presence.joined``."""

    type: Literal["presence.left"]
    project_id: str
    user: User


class SystemHeartbeat(ServerBase):
    """Sent to every connection every ``heartbeat_interval`` seconds."""

    type: Literal["system.heartbeat"]


ServerMessage: TypeAlias = (
    ConnectionEstablished
    | Subscribed
    | Unsubscribed
    | Pong
    | ErrorMessage
    | ProjectCreated
    | ProjectUpdated
    | ProjectDeleted
    | FileUploaded
    | FileDeleted
    | ProcessStarted
    | ProcessProgress
    | ProcessCompleted
    | PresenceJoined
    | PresenceLeft
    | SystemHeartbeat
)
"""Any message the server sends of a built-in type."""


class CustomMessage(ServerBase):
    """An event another service published (``POST /api/projects/{id}/events``): ``custom.``
    and a name. Durable ones have a ``seq`` and are replayed like the built-in events;
    ephemeral ones have none."""

    type: Annotated[str, Field(pattern=f"^{CUSTOM_TYPE}$")]
    project_id: str
    seq: int | None = Field(default=None, ge=1)
    """Only when durable: numbered with the project's other events."""
    data: dict[str, Any]
    """The object the publisher gave."""


# -- client to server ---------------------------------------------------------------------


class SubscribeEntry(Record):
    """One project of a ``subscribe`` that names several (``projects``)."""

    project_id: ProjectId
    since: int | None = Field(default=None, ge=0, lt=2**63)
    """The last seq the client has processed for this project."""
    snapshot: bool | None = None
    """Ask for the project's state in its reply (with ``since``: only if it cannot
    recover)."""


# A subscribe names one project (`project_id`, with `since` and `snapshot` beside it) or
# several (`projects`), never both.
_ONE_OR_MANY: dict[str, Any] = {
    "oneOf": [
        {"required": ["project_id"], "not": {"required": ["projects"]}},
        {
            "required": ["projects"],
            "not": {
                "anyOf": [
                    {"required": ["project_id"]},
                    {"required": ["since"]},
                    {"required": ["snapshot"]},
                ]
            },
        },
    ]
}


class SubscribeRequest(Message):
    """Follow a project's events; with ``since``, first every event after that seq.

    Either ``project_id`` (with ``since`` and ``snapshot``) or ``projects``, a list of
    such entries: each is answered (``subscribed`` or ``error``) in the order given, as if
    sent alone. The list holds at most the server's per-connection subscription limit."""

    model_config = ConfigDict(json_schema_extra=_ONE_OR_MANY)

    type: Literal["subscribe"]
    project_id: ProjectId | None = None
    """The project (unless ``projects`` is given)."""
    projects: list[SubscribeEntry] | None = Field(default=None, min_length=1)
    """Several projects at once, instead of ``project_id``."""
    since: int | None = Field(default=None, ge=0, lt=2**63)
    """The last seq the client has processed for this project."""
    snapshot: bool | None = None
    """Ask for the project's state in the reply (with ``since``: only if it cannot
    recover)."""
    id: RequestId | None = None
    """Echoed in the reply (in each reply, with ``projects``)."""

    @model_validator(mode="after")
    def _one_or_many(self) -> SubscribeRequest:
        if self.projects is None:
            if self.project_id is None:
                raise ValueError("project_id or projects is required")
        elif self.project_id is not None or self.since is not None or self.snapshot is not None:
            raise ValueError("projects goes alone, without project_id, since or snapshot")
        return self


class UnsubscribeRequest(Message):
    """Stop following a project."""

    type: Literal["unsubscribe"]
    project_id: ProjectId
    id: RequestId | None = None
    """Echoed in the reply."""


class PingRequest(Message):
    """Ask for a ``pong``."""

    type: Literal["ping"]
    id: RequestId | None = None
    """Echoed in the reply."""


ClientMessage: TypeAlias = SubscribeRequest | UnsubscribeRequest | PingRequest
"""Any message a client sends."""


class UnknownMessage(Message):
    """A server message this version does not declare (a newer server's), or one that
    does not fit its declaration. Only its ``type`` is typed; read the rest from ``raw``."""

    type: str


Received: TypeAlias = ServerMessage | CustomMessage | UnknownMessage
"""What the Python client hands out."""


def _by_type(union: Any) -> dict[str, type[Message]]:
    classes: tuple[type[Message], ...] = get_args(union)
    return {get_args(cls.model_fields["type"].annotation)[0]: cls for cls in classes}


SERVER_MESSAGES: dict[str, type[Message]] = _by_type(ServerMessage)
"""Every server message class by its ``type``."""
CLIENT_MESSAGES: dict[str, type[Message]] = _by_type(ClientMessage)
"""Every client message class by its ``type``."""


def parse_server_message(message: dict[str, Any]) -> Received:
    """The typed form of one server message, keeping ``message`` as its :attr:`raw`.

    Never raises: a type this version does not know, or a message that breaks its
    declaration (logged), comes back as :class:`UnknownMessage` (``type`` "" if it had
    none).
    """
    kind = message.get("type")
    kind = kind if isinstance(kind, str) else ""
    cls = CustomMessage if kind.startswith(CUSTOM_PREFIX) else SERVER_MESSAGES.get(kind)
    parsed: Message = UnknownMessage(type=kind)
    try:
        if cls is not None:
            parsed = cls.model_validate(message)
    except ValidationError as exc:
        logger.warning("%s message does not match the protocol: %s", kind, exc)
    parsed._raw = message
    return parsed  # type: ignore[return-value]  # one of Received's classes


# -- the JSON Schema ----------------------------------------------------------------------


@cache
def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of every message, served at
    ``GET /api/protocol/schema``. Its ``$defs`` hold each message by class name,
    ``ServerMessage`` and ``ClientMessage`` (unions discriminated on ``type``) and
    ``CloseCode``; the document itself accepts any server or client message.

    The caller must not modify the result (it is computed once): copy it first.
    """
    adapters: list[tuple[str, Literal["validation"], TypeAdapter[Any]]] = [
        (name, "validation", TypeAdapter(cast(Any, Annotated[union, Field(discriminator="type")])))
        for name, union in (("ServerMessage", ServerMessage), ("ClientMessage", ClientMessage))
    ]
    adapters.append(("CustomMessage", "validation", TypeAdapter(CustomMessage)))
    roots, definitions = TypeAdapter.json_schemas(adapters, ref_template="#/$defs/{model}")
    defs: dict[str, Any] = definitions["$defs"]
    for (name, _), root in roots.items():
        if name in _UNION_DESCRIPTIONS:
            defs[name] = {"description": _UNION_DESCRIPTIONS[name], **root}
    defs["CloseCode"] = {
        "description": "Close codes of /ws, and whether a client should reconnect after each.",
        "oneOf": [
            {
                "const": int(code),
                "title": info.name,
                "description": info.meaning,
                "x-reconnect": info.reconnect,
            }
            for code, info in CLOSE_CODES.items()
        ],
    }
    for definition in defs.values():
        _tidy(definition)
    return {
        "$schema": SCHEMA_DIALECT,
        "title": f"tidings WebSocket protocol, version {PROTOCOL_VERSION}",
        "description": (
            "Every message of /ws. Each frame carries one message, or with the "
            "tidings.batch.v1 subprotocol a JSON array of server messages. Receivers "
            "ignore fields they do not know. A server message is a built-in one "
            "(ServerMessage) or a published `custom.*` event (CustomMessage)."
        ),
        "anyOf": [
            {"$ref": "#/$defs/ServerMessage"},
            {"$ref": "#/$defs/CustomMessage"},
            {"$ref": "#/$defs/ClientMessage"},
        ],
        "$defs": dict(sorted(defs.items())),
    }


_UNION_DESCRIPTIONS = {
    "ServerMessage": "Any message the server sends, by its type.",
    "ClientMessage": "Any message a client sends, by its type.",
}


def _tidy(definition: dict[str, Any]) -> None:
    """Say what the wire carries: an optional field (default None) is absent rather than
    null; property titles only repeat the names; ``type`` comes first."""
    if "description" in definition:
        definition["description"] = _markdown(definition["description"])
    properties: dict[str, Any] = definition.get("properties", {})
    if "type" in properties:  # the discriminator first, as a reader looks for it
        definition["properties"] = properties = {"type": properties.pop("type"), **properties}
    required = set(definition.get("required", ()))
    for name, prop in properties.items():
        if "description" in prop:
            prop["description"] = _markdown(prop["description"])
        prop.pop("title", None)
        if name in required or prop.get("default", 0) is not None:
            continue
        branches = [b for b in prop.get("anyOf", ()) if b != {"type": "null"}]
        if len(branches) == len(prop.get("anyOf", ())):
            continue
        del prop["anyOf"], prop["default"]
        if len(branches) == 1:
            prop.update(branches[0])
        else:
            prop["anyOf"] = branches


def _markdown(text: str) -> str:
    """Docstrings use reStructuredText's double backticks; schema readers expect one."""
    return text.replace("``", "`")


def strict_schema() -> dict[str, Any]:
    """:func:`json_schema` with no field beyond the declared ones allowed: what the
    server itself must keep to (its tests validate every message it sends with this)."""
    schema = copy.deepcopy(json_schema())
    for definition in schema["$defs"].values():
        if definition.get("type") == "object" and "properties" in definition:
            definition["additionalProperties"] = False
    return schema
