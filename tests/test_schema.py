"""tidings.schema: one description of every message, and everything that must agree with it.

The JSON Schema is the reference the other descriptions are compared with: the generated
``tidings.d.ts``, the Python client's typed messages, the server's own client-message
parser, and what a real server actually sends (every message of a scenario that produces
each type with each field). docs/protocol.md is checked in ``test_docs.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, get_args

import httpx
import jsonschema
import orjson
import pytest
import websockets

from tests.conftest import (
    MS,
    TIMEOUT,
    ServerThread,
    create_project,
    create_user,
    eventually,
    send,
    upload,
    ws_connect,
)
from tidings.api.schemas import FileOut, ProjectOut
from tidings.messages import ClientMessages, Reply, SubscribeMany
from tidings.processes import ProcessOut, Status
from tidings.schema import (
    CLIENT_MESSAGES,
    SERVER_MESSAGES,
    ConnectionEstablished,
    CustomMessage,
    FileUploaded,
    Message,
    Process,
    ProcessStatus,
    Project,
    StoredFile,
    Subscribed,
    UnknownMessage,
    json_schema,
    parse_server_message,
    strict_schema,
)
from tidings.typescript import DTS_PATH, render

# -- what the schema says: {message type: {field: required?}} ----------------------------


def shapes(union: str) -> dict[str, dict[str, bool]]:
    """Each message type of ``union`` with its fields, read from the JSON Schema."""
    defs = json_schema()["$defs"]
    result = {}
    for kind, ref in defs[union]["discriminator"]["mapping"].items():
        definition = defs[ref.removeprefix("#/$defs/")]
        required = set(definition["required"])
        result[kind] = {name: name in required for name in definition["properties"]}
    return result


SERVER = shapes("ServerMessage")
CLIENT = shapes("ClientMessage")


def validator(schema: dict[str, Any], union: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**schema, "$ref": f"#/$defs/{union}"})


def test_the_schema_is_valid_json_schema() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(SERVER) == set(SERVER_MESSAGES) and set(CLIENT) == set(CLIENT_MESSAGES)
    assert not set(SERVER) & set(CLIENT)


def test_optional_fields_are_absent_never_null() -> None:
    check = validator(strict_schema(), "ServerMessage")
    ok = {"type": "subscribed", "project_id": "p", "seq": 3, "timestamp": "2026-11-25T16:28:35Z"}
    assert check.is_valid(ok)
    assert check.is_valid({**ok, "recovered": True, "id": "r1"})
    assert not check.is_valid({**ok, "recovered": None})  # optional: absent, not null
    assert not check.is_valid({**ok, "surprise": 1})  # the server sends only declared fields
    assert not check.is_valid({k: v for k, v in ok.items() if k != "seq"})
    assert not check.is_valid({**ok, "type": "subscribd"})
    # Receivers are lenient: the published schema allows fields it does not know.
    assert validator(json_schema(), "ServerMessage").is_valid({**ok, "surprise": 1})


def test_python_classes_have_the_schema_fields() -> None:
    for registry, expected in ((SERVER_MESSAGES, SERVER), (CLIENT_MESSAGES, CLIENT)):
        assert set(registry) == set(expected)
        for kind, cls in registry.items():
            fields = {name: f.is_required() for name, f in cls.model_fields.items()}
            assert fields == expected[kind], kind


def test_the_rest_resources_are_the_schema_records() -> None:
    """A project, a file and a process have one declaration: REST adds no field of its own
    (it would be missing from events, snapshots and the .d.ts), and the enum REST types a
    process's status with has the schema's values."""
    for rest, record in ((ProjectOut, Project), (FileOut, StoredFile), (ProcessOut, Process)):
        assert issubclass(rest, record)
        assert list(rest.model_fields) == list(record.model_fields), rest
    assert list(get_args(ProcessStatus)) == [status.value for status in Status]


def test_the_typescript_declarations_are_generated_from_the_schema() -> None:
    current = DTS_PATH.read_text()
    assert render(current, json_schema()) == current, "tidings.d.ts is stale: run make types"


def test_the_typescript_declarations_have_every_message_and_field() -> None:
    """Read back from the .d.ts itself, independently of the generator."""
    declared: dict[str, dict[str, bool]] = {}
    text = DTS_PATH.read_text()
    interfaces = re.findall(r"^export interface \w+ \{\n(.*?)^\}", text, re.M | re.S)
    for body in interfaces:
        fields = dict(re.findall(r"^  (\w+)(\??): ", body, re.M))
        kind = re.search(r'^  type: "([^"]+)";', body, re.M)
        if kind:
            declared[kind.group(1)] = {name: mark == "" for name, mark in fields.items()}
    assert declared == SERVER | CLIENT


# -- the Python client's typed messages --------------------------------------------------

HELLO = {
    "type": "connection.established",
    "client_id": "3f9c2a7be01d44c1",
    "user": {"id": "9b2e", "username": "alice"},
    "heartbeat_interval": 30,
    "protocol": 1,
    "expires_at": None,
    "timestamp": "2026-11-25T16:28:35.123Z",
}
UPLOADED = {
    "type": "file.uploaded",
    "project_id": "c122",
    "seq": 3,
    "timestamp": "2026-11-25T16:30:00.000Z",
    "file": {"id": "7787", "name": "scene.glb", "path": "/assets", "size": 1048576,
             "asset_type": "model"},
    "added_later": {"by": "a newer server"},
}  # fmt: skip


PUBLISHED = {
    "type": "custom.build.finished",
    "project_id": "c122",
    "seq": 4,
    "timestamp": "2026-11-25T16:34:00.000Z",
    "data": {"build": 42},
}


@pytest.mark.parametrize(
    ("raw", "cls"),
    [
        (HELLO, ConnectionEstablished),
        (UPLOADED, FileUploaded),
        ({**HELLO, "heartbeat_interval": "soon"}, UnknownMessage),  # breaks its declaration
        ({k: v for k, v in UPLOADED.items() if k != "file"}, UnknownMessage),
        ({"type": "presence.joined", "project_id": "c122"}, UnknownMessage),  # newer type
        (PUBLISHED, CustomMessage),
        ({k: v for k, v in PUBLISHED.items() if k != "seq"}, CustomMessage),  # ephemeral
        ({**PUBLISHED, "data": [1]}, UnknownMessage),
        ({"no": "type"}, UnknownMessage),
    ],
)
def test_parse_server_message(raw: dict[str, Any], cls: type[Message]) -> None:
    message = parse_server_message(raw)
    assert type(message) is cls
    assert message.raw is raw
    assert message.type == raw.get("type", "")


def test_typed_attributes_and_item_access() -> None:
    hello = parse_server_message(HELLO)
    assert isinstance(hello, ConnectionEstablished)
    assert hello.user.username == "alice" and hello.heartbeat_interval == 30.0
    assert hello.timestamp == datetime.fromisoformat("2026-11-25T16:28:35.123+00:00")
    event = parse_server_message(UPLOADED)
    assert isinstance(event, FileUploaded)
    assert (event.seq, event.file.name, event.file.size) == (3, "scene.glb", 1048576)
    # Item access: the JSON as received, fields this version does not declare included.
    assert event["file"] == UPLOADED["file"] and event["added_later"] == {"by": "a newer server"}
    assert event.get("missing", 0) == 0 and "seq" in event and "missing" not in event
    assert dict(event) == UPLOADED
    with pytest.raises(KeyError):
        event["missing"]
    with pytest.raises(Exception, match="frozen"):
        event.seq = 4  # type: ignore[misc]
    # A message built in Python reads back as it would be sent.
    built = Subscribed(type="subscribed", project_id="p", seq=2, timestamp=hello.timestamp)
    assert built.raw == {
        "type": "subscribed",
        "project_id": "p",
        "seq": 2,
        "timestamp": "2026-11-25T16:28:35.123000Z",
    }
    assert built.get("recovered") is None and built.recovered is None


# -- the server's parser accepts exactly what the schema describes -----------------------


LONG = "x" * 129


@pytest.mark.parametrize(
    "message",
    [
        {"type": "subscribe", "project_id": "c122e0eece434383b4ef0a3f9edbe266"},
        {"type": "subscribe", "project_id": "a-b_C9", "since": 0, "id": 7},
        {"type": "subscribe", "project_id": "p", "since": 2**63 - 1, "id": "x" * 128},
        {"type": "subscribe", "project_id": "p", "since": -1},
        {"type": "subscribe", "project_id": "p", "since": 2**63},
        {"type": "subscribe", "project_id": "p", "since": "41"},
        {"type": "subscribe", "project_id": "p", "id": LONG},
        {"type": "subscribe", "project_id": "p", "id": True},
        {"type": "subscribe", "project_id": "p", "id": [1]},
        {"type": "subscribe", "project_id": "x" * 65},
        {"type": "subscribe", "project_id": "a/b"},
        {"type": "subscribe", "project_id": ""},
        {"type": "subscribe"},
        {"type": "subscribe", "projects": [{"project_id": "p", "since": 3, "snapshot": True}]},
        {"type": "subscribe", "projects": [{"project_id": "p"}, {"project_id": "q"}], "id": 1},
        {"type": "subscribe", "projects": []},
        {"type": "subscribe", "projects": [{"project_id": "p"}], "project_id": "p"},
        {"type": "subscribe", "projects": [{"project_id": "p"}], "since": 1},
        {"type": "subscribe", "projects": [{"project_id": "p"}], "snapshot": False},
        {"type": "subscribe", "projects": [{"project_id": "p"}, "q"]},
        {"type": "subscribe", "projects": [{"project_id": "p", "since": -1}]},
        {"type": "subscribe", "projects": [{"since": 1}]},
        {"type": "subscribe", "projects": {"project_id": "p"}},
        {"type": "unsubscribe", "project_id": "p", "id": 1.5},
        {"type": "unsubscribe", "project_id": 5},
        {"type": "ping"},
        {"type": "ping", "id": "p1", "extra": "ignored"},
        {"type": "ping", "id": {}},
        {"type": "pong"},
        {"project_id": "p"},
    ],
)
def test_the_parser_accepts_what_the_schema_allows(message: dict[str, Any]) -> None:
    # Not compared: a null `id` or `since`, which the parser takes for absent (the schema
    # says to omit them), and `since: 4.0`, an integer to JSON Schema but not to the parser.
    valid = validator(json_schema(), "ClientMessage").is_valid(message)
    parser = ClientMessages(max_message_bytes=65536, rate=100, burst=100, now=0)
    action = parser.receive(orjson.dumps(message), now=0)
    # A list is refused whole, or entry by entry (each bad entry answered in its place).
    answers = action.actions if isinstance(action, SubscribeMany) else (action,)
    refused = any(isinstance(a, Reply) and a.message["type"] == "error" for a in answers)
    assert valid is not refused, action


# -- what a real server sends ------------------------------------------------------------


class Recorder:
    """Every message a socket receives, read in the background."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                self.messages.append(orjson.loads(raw))

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        await eventually(lambda: any(predicate(m) for m in self.messages), TIMEOUT)
        return next(m for m in self.messages if predicate(m))


def of(kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == kind and all(m.get(k) == v for k, v in fields.items())


async def test_the_server_sends_every_declared_message_and_nothing_else(
    make_server: Callable[..., ServerThread],
) -> None:
    """A scenario that makes the server send each message type with each of its fields;
    every message must fit the strict schema, and every declared field must appear."""
    srv = make_server(heartbeat_interval=200 * MS)
    alice = await create_user(srv.settings, "alice")
    bob = await create_user(srv.settings, "bob")
    a = Recorder(await ws_connect(srv, alice))
    b = Recorder(await ws_connect(srv, bob))
    await a.wait_for(of("connection.established"))
    await b.wait_for(of("connection.established"))
    headers = {"Authorization": f"Bearer {alice.token}"}
    async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=TIMEOUT) as http:
        pid = (await create_project(http))["id"]
        added = await http.post(f"/api/projects/{pid}/members", json={"username": "bob"})
        assert added.is_success
        await b.wait_for(of("project.updated", project_id=pid))

        await send(a.ws, {"type": "subscribe", "project_id": pid, "since": 0, "id": 1})
        await send(b.ws, {"type": "subscribe", "project_id": pid})
        await send(a.ws, {"type": "ping", "id": "p1"})
        await send(a.ws, {"type": "subscribe", "project_id": "nope", "id": 2})
        await a.wait_for(of("subscribed", id=1, recovered=True))
        await b.wait_for(of("subscribed", project_id=pid))
        await a.wait_for(lambda m: of("presence.joined")(m) and m["user"]["id"] == bob.id)
        await a.wait_for(of("error", code="not_found", id=2))

        file = (await upload(http, pid, "a.txt")).json()
        assert (await http.delete(f"/api/projects/{pid}/files/{file['id']}")).is_success
        created = await http.post(
            f"/api/projects/{pid}/processes", json={"kind": "external", "params": {}}
        )
        process = f"/api/projects/{pid}/processes/{created.json()['id']}"
        report = {"progress": 0.5, "message": "half"}
        assert (await http.post(f"{process}/progress", json=report)).is_success
        await a.wait_for(of("process.progress", progress=0.5))
        done = {"status": "succeeded", "result": {"n": 1}}
        assert (await http.post(f"{process}/complete", json=done)).is_success
        assert (await http.patch(f"/api/projects/{pid}", json={"name": "renamed"})).is_success
        await a.wait_for(of("process.completed"))
        await a.wait_for(lambda m: m.get("data", {}).get("name") == "renamed")

        # A snapshot of a project with a file and a process; published events, both kinds.
        await upload(http, pid, "b.txt")
        d = Recorder(await ws_connect(srv, alice))
        await send(d.ws, {"type": "subscribe", "project_id": pid, "snapshot": True})
        snapshot = (await d.wait_for(of("subscribed", project_id=pid)))["snapshot"]
        assert snapshot["files"] and snapshot["processes"]
        for durable in (True, False):
            published = {"type": "custom.build.finished", "data": {"n": 1}, "durable": durable}
            assert (await http.post(f"/api/projects/{pid}/events", json=published)).is_success
        await a.wait_for(lambda m: m["type"].startswith("custom.") and "seq" not in m)

        assert (await http.delete(f"/api/projects/{pid}/members/bob")).is_success
        await b.wait_for(of("unsubscribed", reason="access_revoked"))
        await a.wait_for(lambda m: of("presence.left")(m) and m["user"]["id"] == bob.id)
        await send(a.ws, {"type": "unsubscribe", "project_id": pid, "id": 3})
        await a.wait_for(of("unsubscribed", id=3))
        assert (await http.delete(f"/api/projects/{pid}")).is_success
        await a.wait_for(of("project.deleted"))
        await a.wait_for(of("system.heartbeat"))

    # Faster than the rate limit allows: an error that says when to retry.
    c = Recorder(await ws_connect(srv, alice))
    await c.wait_for(of("connection.established"))
    for _ in range(srv.settings.ws_rate_burst + 2):
        await send(c.ws, {"type": "ping"})
    await c.wait_for(of("error", code="rate_limited"))

    strict = strict_schema()
    mapping = strict["$defs"]["ServerMessage"]["discriminator"]["mapping"]
    seen: dict[str, set[str]] = {}
    custom = jsonschema.Draft202012Validator({**strict, "$ref": "#/$defs/CustomMessage"})
    published = [m for m in a.messages if m["type"].startswith("custom.")]
    assert [m.get("seq") is not None for m in published] == [True, False]
    for message in published:
        assert not [e.message for e in custom.iter_errors(message)], message
        assert type(parse_server_message(message)) is CustomMessage
    for message in a.messages + b.messages + c.messages + d.messages:
        if message in published:
            continue
        assert message["type"] in mapping, message
        check = jsonschema.Draft202012Validator({**strict, "$ref": mapping[message["type"]]})
        errors = [e.message for e in check.iter_errors(message)]
        assert not errors, (message, errors)
        seen.setdefault(message["type"], set()).update(message)
        assert type(parse_server_message(message)) is SERVER_MESSAGES[message["type"]]
    assert set(seen) == set(SERVER), "message types never sent"
    for kind, fields in SERVER.items():
        assert seen[kind] == set(fields), f"{kind}: fields never sent"
