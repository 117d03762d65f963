"""Property-based fuzz of the whole REST API, over real sockets: no input makes a 5xx.

Every operation in the server's own ``/openapi.json`` that takes a JSON body, a path or a
query parameter gets ``TIDINGS_FUZZ_EXAMPLES`` requests (hypothesis, derandomised, so a
run is repeatable) as alice, who owns a real project with a member, a file and processes.
Values mix what the schema asks for, the real ids, and hostile input: NUL, unpaired
surrogates, bidi overrides, 1 MiB strings, 2**70, NaN, nesting far past any limit, and
bodies that are not JSON at all. Every answer must be below 500, and a 4xx must be JSON
that does not echo its input.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import (
    TIMEOUT,
    ServerThread,
    api,
    browser_session,
    create_project,
    create_user,
    upload,
)

EXAMPLES = int(os.environ.get("TIDINGS_FUZZ_EXAMPLES", "40"))
MiB = 1024 * 1024


def deep(levels: int, leaf: Any = 0) -> Any:
    for _ in range(levels):
        leaf = [leaf]
    return leaf


HOSTILE_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\ud83d",  # half of an emoji
    "invoice\u202egnp.exe",  # right-to-left override
    "\u2066x\u2069",  # bidi isolate
    "\ufeff",
    "a\u200bb",
    "\r\n",
    "\x1b[31m",
    "x" * MiB,
    "é" * 300,
    "😀" * 70,
    "../../etc/passwd",
    "..",
    ".",
    "/",
    "C:\\boot.ini",
    "a:b",
    "%00",
    "%",
    "'; DROP TABLE users; --",
    "<script>alert(1)</script>",
    "null",
    "0" * 32,
    "cafe\u0301",
]
HOSTILE_NUMBERS = [
    0,
    -1,
    2**31,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    2**70,
    -(2**70),
    10**400,
    0.5,
    -0.0,
    1e308,
    float("inf"),
    float("-inf"),
    float("nan"),
]
HOSTILE_VALUES = [deep(31), deep(33), deep(300), {"a": deep(300, "\x00")}, [None] * 1000]
# Not JSON at all, or JSON that json.loads cannot finish (recursion) or decode (UTF-8).
RAW_BODIES = [
    b"",
    b"{",
    b"not json",
    b'{"a": "\\ud800"',
    b"\xff\xfe\x00",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a": 1, "a": 2}',
    b"\x00",
]

text = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40))
# In a URL: as hostile, but short enough for the client to send (a 1 MiB URL is refused).
url_text = st.one_of(
    st.sampled_from([t for t in HOSTILE_TEXT if len(t) < 1000] + ["x" * 4000]),
    st.text(max_size=40),
)
numbers = st.one_of(st.sampled_from(HOSTILE_NUMBERS), st.integers(), st.floats())
scalars = st.one_of(st.none(), st.booleans(), numbers, text)
json_values = st.one_of(
    st.sampled_from(HOSTILE_VALUES),
    st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=8,
    ),
)


@dataclass
class World:
    """The real things the fuzz may name: values by parameter or property name."""

    known: dict[str, list[str]] = field(default_factory=dict)
    strings: list[str] = field(default_factory=list)  # plausible values for any string


async def build_world(server: ServerThread) -> tuple[str, World]:
    alice = await create_user(server.settings, "alice")
    await create_user(server.settings, "bob")
    await create_user(server.settings, "carol")
    async with api(server, alice) as client:
        pid = (await create_project(client, "fuzzed"))["id"]
        assert (
            await client.post(f"/api/projects/{pid}/members", json={"username": "bob"})
        ).is_success
        file_id = (await upload(client, pid, "a.txt", b"hello")).json()["id"]
        processes = []
        for kind in ("external", "export"):
            started = await client.post(
                f"/api/projects/{pid}/processes", json={"kind": kind, "params": {}}
            )
            processes.append(started.json()["id"])
    async with browser_session(server, alice) as browser:  # only a session mints tokens
        token_id = (await browser.post("/api/auth/tokens", json={"name": "spare"})).json()["id"]
    world = World(
        known={
            "project_id": [pid],
            "file_id": [file_id],
            "process_id": processes,
            "token_id": [token_id],
            "username": ["bob", "carol"],
            "name": ["export.zip", f"{file_id}.png"],
            "kind": ["export", "verify", "thumbnails", "external"],
            "status": ["succeeded", "failed", "running", "queued"],
            "path": ["/", "/a"],
        },
        strings=["alice", "bob", "carol", "x", "/", "png"],
    )
    return alice.token, world


# -- strategies from the OpenAPI schema --------------------------------------------------


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = spec
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def from_schema(
    spec: dict[str, Any], schema: dict[str, Any], world: World, name: str = ""
) -> st.SearchStrategy[Any]:
    """Values for ``schema``: valid ones, the world's real ones, and hostile ones."""
    schema = resolve(spec, schema)
    hostile: st.SearchStrategy[Any] = json_values
    if name in world.known:
        hostile = st.one_of(st.sampled_from(world.known[name]), hostile)
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return st.one_of(*(from_schema(spec, o, world, name) for o in options), hostile)
    if "enum" in schema or "const" in schema:
        return st.one_of(st.sampled_from(schema.get("enum") or [schema["const"]]), hostile)
    kind = schema.get("type")
    valid: st.SearchStrategy[Any]
    if kind == "string":
        limit = schema.get("maxLength", 40)
        valid = st.one_of(st.sampled_from(world.strings), st.text(max_size=min(limit + 1, 300)))
    elif kind == "integer":
        valid = st.integers(schema.get("minimum", -10), schema.get("maximum", 10**6))
    elif kind == "number":
        valid = st.floats(-2, 2)
    elif kind == "boolean":
        valid = st.booleans()
    elif kind == "null":
        valid = st.none()
    elif kind == "array":
        valid = st.lists(from_schema(spec, schema.get("items", {}), world), max_size=3)
    elif kind == "object" or "properties" in schema:
        valid = objects(spec, schema, world)
    else:
        return hostile
    return st.one_of(valid, hostile)


def objects(spec: dict[str, Any], schema: dict[str, Any], world: World) -> st.SearchStrategy[Any]:
    """Objects with some of the schema's properties (each valid, real or hostile), and
    now and then a key it does not know."""
    props = schema.get("properties", {})
    fields = {k: from_schema(spec, v, world, k) for k, v in props.items()}
    return st.builds(
        lambda chosen, extra: {**chosen, **extra},
        st.fixed_dictionaries({}, optional=fields),
        st.dictionaries(text, json_values, max_size=1),
    )


@dataclass
class Operation:
    method: str
    path: str
    path_params: list[str]
    query: dict[str, dict[str, Any]]
    body: dict[str, Any] | None  # the JSON body schema
    multipart: bool


def operations(spec: dict[str, Any]) -> Iterator[Operation]:
    """Every operation with something to fuzz; deletions last, the project's very last,
    so the others still find the real things they name."""
    found = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            params = op.get("parameters", [])
            content = op.get("requestBody", {}).get("content", {})
            found.append(
                Operation(
                    method=method.upper(),
                    path=path,
                    path_params=[p["name"] for p in params if p["in"] == "path"],
                    query={p["name"]: p["schema"] for p in params if p["in"] == "query"},
                    body=content.get("application/json", {}).get("schema"),
                    multipart="multipart/form-data" in content,
                )
            )
    found = [o for o in found if o.path_params or o.query or o.body or o.multipart]
    return iter(
        sorted(found, key=lambda o: (o.method == "DELETE", o.path == "/api/projects/{project_id}"))
    )


def path_values(world: World, name: str) -> st.SearchStrategy[str]:
    # Mostly the real thing, so that what follows in the request is reached too.
    real = st.sampled_from(world.known.get(name, ["x"]))
    return st.one_of(real, real, real, url_text)


def multipart(filename: str, content_type: str, folder: str) -> tuple[bytes, str]:
    """A multipart body built byte by byte: names go out however hostile they are."""
    boundary = "fuzz-boundary"

    def raw(value: str) -> bytes:
        return value.encode("utf-8", "surrogatepass")

    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
        + raw(filename)
        + b'"\r\nContent-Type: '
        + raw(content_type)
        + b"\r\n\r\nhello\r\n"
        + f'--{boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\n'.encode()
        + raw(folder)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def requests_for(
    spec: dict[str, Any], op: Operation, world: World
) -> st.SearchStrategy[dict[str, Any]]:
    """httpx request arguments for ``op``: URL, query, and the body as raw bytes."""
    segments = st.fixed_dictionaries({n: path_values(world, n) for n in op.path_params})
    query = st.fixed_dictionaries(
        {},
        optional={
            k: st.one_of(from_schema(spec, v, world, k), url_text) for k, v in op.query.items()
        },
    )
    body: st.SearchStrategy[tuple[bytes, str] | None] = st.none()
    if op.body is not None:
        as_json = st.one_of(from_schema(spec, op.body, world), json_values).map(
            lambda value: (json.dumps(value).encode(), "application/json")
        )
        body = st.one_of(
            as_json, st.sampled_from(RAW_BODIES).map(lambda b: (b, "application/json"))
        )
    elif op.multipart:
        body = st.builds(multipart, text, st.one_of(text, st.just("image/png")), text)

    def build(segments: dict[str, str], query: dict[str, Any], body: Any) -> dict[str, Any]:
        url = op.path
        for name, value in segments.items():
            url = url.replace(f"{{{name}}}", quote(value, safe="", errors="surrogatepass"))
        params = {
            k: quote(
                v if isinstance(v, str) else json.dumps(v)[:4000], safe="", errors="surrogatepass"
            )
            for k, v in query.items()
        }
        if params:
            url += "?" + "&".join(f"{k}={v}" for k, v in params.items())
        request: dict[str, Any] = {"method": op.method, "url": url}
        if body is not None:
            request["content"], request["headers"] = body[0], {"content-type": body[1]}
        return request

    return st.builds(build, segments, query, body)


# -- the test ----------------------------------------------------------------------------


# A failing example holding a 1 MiB string is still worth printing.
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
def test_no_request_makes_a_5xx(server: ServerThread) -> None:
    token, world = asyncio.run(build_world(server))
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=TIMEOUT) as client:
        spec = client.get("/openapi.json").json()
        fuzzed = list(operations(spec))
        assert len(fuzzed) >= 20, [f"{o.method} {o.path}" for o in fuzzed]
        for op in fuzzed:

            @settings(
                max_examples=EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(requests_for(spec, op, world))
            def answers_below_500(request: dict[str, Any]) -> None:
                response = client.request(**request)
                where = f"{request['method']} {request['url'][:200]}"
                assert response.status_code < 500, (where, response.status_code, response.text)
                if response.status_code >= 400:
                    assert response.headers["content-type"] == "application/json", where
                    assert '"input"' not in response.text, (where, response.text[:500])

            answers_below_500()
        # Still alive and still alice's.
        assert client.get("/api/auth/me").json()["username"] == "alice"


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ("a b", "a%20b"),
        ("\x00", "%00"),
        ("\ud800", "%ED%A0%80"),
        ("é", "%C3%A9"),
    ],
)
def test_path_segments_are_sent_byte_for_byte(value: str, where: str) -> None:
    assert quote(value, safe="", errors="surrogatepass") == where
