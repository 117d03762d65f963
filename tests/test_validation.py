"""Bad input over real sockets: a clear 4xx JSON error that echoes nothing, never a 500.

Each case was a 500 before the validation layer (``api/validation.py``) on at least one
database; the pure checks are tested table-style at the end.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import ServerThread, TestUser, api, create_project, create_user
from tidings.api.validation import JsonProblem, check_json, check_text, safe_loc

DEEP = 300
BIG = 2**70
LONE = "\ud800"  # an unpaired surrogate: json.loads accepts the escape, UTF-8 cannot encode it


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def body(value: Any) -> bytes:
    """JSON text as a hostile client writes it: surrogates as \\u escapes, big ints as is."""
    return json.dumps(value).encode()


async def send_json(client: httpx.AsyncClient, method: str, url: str, value: Any) -> httpx.Response:
    return await client.request(
        method, url, content=body(value), headers={"content-type": "application/json"}
    )


def assert_clear_4xx(response: httpx.Response, *hostile: str, case: str = "") -> None:
    """400 or 422 with a JSON ``detail``, and none of the hostile text in the answer."""
    assert response.status_code in (400, 422), (case, response.status_code, response.text)
    assert response.headers["content-type"] == "application/json", case
    detail = response.json()["detail"]
    assert detail, case
    shown = strings(detail)
    for raw in hostile:
        assert not any(raw in text for text in shown), (case, response.text)
    assert '"input"' not in response.text, case


def strings(value: Any) -> list[str]:
    """Every string in a decoded JSON value, keys included."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings(v)]]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return [value] if isinstance(value, str) else []


@pytest.fixture
async def setup(server: ServerThread) -> tuple[TestUser, str, str]:
    """alice, her project, and an external process in it."""
    alice = await create_user(server.settings, "alice")
    await create_user(server.settings, "bob")
    async with api(server, alice) as client:
        pid = (await create_project(client))["id"]
        started = await client.post(
            f"/api/projects/{pid}/processes", json={"kind": "external", "params": {}}
        )
        assert started.status_code == 202, started.text
    return alice, pid, started.json()["id"]


BODIES: list[tuple[str, str, str, Any]] = [
    # (case, method, url template, JSON body)
    ("login-surrogate", "POST", "/api/auth/login", {"username": LONE, "password": "x"}),
    ("login-password-surrogate", "POST", "/api/auth/login", {"username": "a", "password": LONE}),
    ("login-nul", "POST", "/api/auth/login", {"username": "a\x00b", "password": "x"}),
    ("project-name-surrogate", "POST", "/api/projects", {"name": LONE}),
    ("project-name-nul", "POST", "/api/projects", {"name": "a\x00b"}),
    ("project-description-nul", "POST", "/api/projects", {"name": "a", "description": "\x00"}),
    ("project-patch-nul", "PATCH", "/api/projects/{pid}", {"description": "x\x00"}),
    ("project-extra-key", "POST", "/api/projects", {"name": "a", LONE: 1}),
    ("member-nul", "POST", "/api/projects/{pid}/members", {"username": "bob\x00"}),
    ("member-surrogate", "POST", "/api/projects/{pid}/members", {"username": LONE}),
    ("token-name-surrogate", "POST", "/api/auth/tokens", {"name": LONE}),
    ("params-bigint", "POST", "/api/projects/{pid}/processes",
     {"kind": "external", "params": {"n": BIG}}),
    ("params-deep", "POST", "/api/projects/{pid}/processes",
     {"kind": "external", "params": {"n": deep(DEEP)}}),
    ("params-surrogate", "POST", "/api/projects/{pid}/processes",
     {"kind": "external", "params": {"label": LONE}}),
    ("params-key-nul", "POST", "/api/projects/{pid}/processes",
     {"kind": "external", "params": {"a\x00": 1}}),
    ("params-nan", "POST", "/api/projects/{pid}/processes",
     {"kind": "external", "params": {"n": float("nan")}}),
    ("kind-surrogate", "POST", "/api/projects/{pid}/processes", {"kind": LONE}),
    ("progress-message-nul", "POST", "/api/projects/{pid}/processes/{proc}/progress",
     {"progress": 0.5, "message": "\x00"}),
    ("result-bigint", "POST", "/api/projects/{pid}/processes/{proc}/complete",
     {"status": "succeeded", "result": {"n": -BIG}}),
    ("result-deep", "POST", "/api/projects/{pid}/processes/{proc}/complete",
     {"status": "succeeded", "result": deep(DEEP)}),
    ("result-surrogate", "POST", "/api/projects/{pid}/processes/{proc}/complete",
     {"status": "succeeded", "result": [LONE]}),
    ("error-nul", "POST", "/api/projects/{pid}/processes/{proc}/complete",
     {"status": "failed", "error": "\x00"}),
    # Over-long fields: the schema's limit, never the column's.
    ("project-name-long", "POST", "/api/projects", {"name": "n" * 201}),
    ("member-long", "POST", "/api/projects/{pid}/members", {"username": "u" * 65}),
    ("login-long", "POST", "/api/auth/login", {"username": "u" * 65, "password": "x"}),
    ("token-name-long", "POST", "/api/auth/tokens", {"name": "t" * 101}),
    ("kind-long", "POST", "/api/projects/{pid}/processes", {"kind": "k" * 33}),
    ("params-path-long", "POST", "/api/projects/{pid}/processes",
     {"kind": "export", "params": {"path": "/" + "p" * 1100}}),
]  # fmt: skip


async def test_hostile_json_bodies_get_a_clear_4xx(
    server: ServerThread, setup: tuple[TestUser, str, str]
) -> None:
    alice, pid, proc = setup
    for case, method, url, value in BODIES:
        async with api(server, None if url == "/api/auth/login" else alice) as client:
            response = await send_json(client, method, url.format(pid=pid, proc=proc), value)
        hostile = (LONE, "\x00", str(BIG), "n" * 201, "u" * 65, "t" * 101)
        assert_clear_4xx(response, *hostile, case=case)
    # Nothing was stored or changed: the process still runs, the project is as created.
    async with api(server, alice) as client:
        process = await client.get(f"/api/projects/{pid}/processes/{proc}")
        assert process.json()["status"] == "running"
        project = (await client.get(f"/api/projects/{pid}")).json()
        assert (project["name"], project["description"]) == ("demo", "")
        assert [p["name"] for p in (await client.get("/api/projects")).json()] == ["demo"]


PATHS = [
    ("GET", "/api/projects/{nul}"),
    ("PATCH", "/api/projects/{nul}"),
    ("DELETE", "/api/projects/{nul}"),
    ("GET", "/api/projects/{nul}/members"),
    ("DELETE", "/api/projects/{pid}/members/{nul}"),
    ("GET", "/api/projects/{nul}/files"),
    ("GET", "/api/projects/{pid}/files/{nul}"),
    ("GET", "/api/projects/{pid}/files/{nul}/content"),
    ("DELETE", "/api/projects/{pid}/files/{nul}"),
    ("GET", "/api/projects/{nul}/processes"),
    ("GET", "/api/projects/{pid}/processes/{nul}"),
    ("DELETE", "/api/projects/{pid}/processes/{nul}"),
    ("GET", "/api/projects/{pid}/processes/{nul}/result"),
    ("GET", "/api/projects/{pid}/processes/{proc}/result/{nul}"),
    ("POST", "/api/projects/{pid}/processes/{nul}/progress"),
    ("DELETE", "/api/auth/tokens/{nul}"),
]


async def test_nul_in_a_url_id_gets_a_clear_4xx(
    server: ServerThread, setup: tuple[TestUser, str, str]
) -> None:
    alice, pid, proc = setup
    async with api(server, alice) as client:
        for method, url in PATHS:
            target = url.format(pid=pid, proc=proc, nul="a%00b")
            bodies = {"PATCH": {"name": "x"}, "POST": {"progress": 0.5}}
            response = await client.request(method, target, json=bodies.get(method))
            assert_clear_4xx(response, "a\x00b", case=f"{method} {url}")


async def test_unknown_well_formed_ids_are_still_404(
    server: ServerThread, setup: tuple[TestUser, str, str]
) -> None:
    alice, pid, _ = setup
    async with api(server, alice) as client:
        for url in (
            "/api/projects/0123456789abcdef0123456789abcdef",
            f"/api/projects/{pid}/files/nope",
            f"/api/projects/{pid}/processes/nope",
        ):
            assert (await client.get(url)).status_code == 404


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"{nope", 400),
        (b'{"name": "\\ud800"', 400),  # a surrogate, and cut short
        (b"\xff\xfe{}", 400),  # not UTF-8
        (b'{"name": "\\ud800"}', 422),
        (b'{"name": 1e400}', 422),
        (b'{"name": NaN}', 422),
    ],
)
async def test_undecodable_json_is_400_and_not_echoed(
    server: ServerThread, alice: TestUser, raw: bytes, status: int
) -> None:
    async with api(server, alice) as client:
        response = await client.post(
            "/api/projects", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == status, response.text
        assert "nope" not in response.text and "ud800" not in response.text
        if status == 400:
            assert response.json() == {"detail": "request body is not valid JSON"}


async def test_validation_errors_name_the_field_but_not_the_value(
    server: ServerThread, alice: TestUser
) -> None:
    async with api(server, alice) as client:
        response = await client.post("/api/projects", json={"name": "secret" * 100})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "name"] and "200" in error["msg"]
    assert set(error) == {"type", "loc", "msg"}
    assert "secret" not in response.text


async def test_over_long_content_type_is_a_clear_400(
    server: ServerThread, setup: tuple[TestUser, str, str]
) -> None:
    alice, pid, _ = setup
    async with api(server, alice) as client:
        for ctype in ("image/" + "x" * 300, "text/plain\x01"):
            response = await client.post(
                f"/api/projects/{pid}/files", files={"file": ("a.bin", b"hi", ctype)}
            )
            assert response.status_code == 400, response.text
            assert "content type" in response.json()["detail"].lower()
            assert "xxxxx" not in response.text
        ok = await client.post(
            f"/api/projects/{pid}/files", files={"file": ("a.bin", b"hi", "image/png")}
        )
        assert ok.status_code == 201, ok.text


# -- the pure checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("plain", None),
        ("ünï©ødé ✓ 😀", None),
        ("", None),
        ("a\x00", "NUL"),
        (LONE, "surrogate"),
        ("a\udfffb", "surrogate"),
    ],
)
def test_check_text(value: str, problem: str | None) -> None:
    if problem is None:
        check_text(value)
    else:
        with pytest.raises(ValueError, match=problem):
            check_text(value)


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": [1, 2.5, True, None, "x", {"b": -(2**63)}]}, None),
        (deep(31), None),
        (2**63 - 1, None),
        (deep(33), "[0]"),
        ({"a": {"b": 2**63}}, "a.b"),
        ({"a": [0, -(2**63) - 1]}, "a[1]"),
        ({"a": float("inf")}, "a"),
        ({"a": float("nan")}, "a"),
        ({"a": ["x", "\x00"]}, "a[1]"),
        ({"k\x00": 1}, "k\\x00"),
        ({LONE: 1}, "\\ud800"),
    ],
)
def test_check_json(value: Any, where: str | None) -> None:
    if where is None:
        check_json(value)
        return
    with pytest.raises(JsonProblem) as info:
        check_json(value)
    assert info.value.where.startswith(where), info.value.where
    assert "\x00" not in str(info.value) and LONE not in str(info.value)


@pytest.mark.parametrize(
    ("part", "shown"),
    [
        (0, 0),
        ("name", "name"),
        ("a\x00b", "a\\x00b"),
        (LONE, "\\ud800"),
        ("x" * 100, "x" * 40 + "…"),
    ],
)
def test_safe_loc(part: str | int, shown: str | int) -> None:
    assert safe_loc(part) == shown
