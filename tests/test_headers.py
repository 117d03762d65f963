"""``headers.py`` and the docs pages: security headers on every response, over real sockets."""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.conftest import ServerThread, TestUser, api, connected, create_project, upload
from tidings.headers import PAGE_POLICY


async def test_every_response_says_nosniff(server: ServerThread, alice: TestUser) -> None:
    async with api(server, alice) as client:
        pid = (await create_project(client))["id"]
        file_id = (await upload(client, pid, "a.txt", b"x" * 100_000)).json()["id"]
        responses = [
            await client.get("/healthz"),
            await client.get("/api/projects"),
            await client.get("/api/nope"),
            await client.post("/api/projects", json={}),
            await client.post("/api/projects", content=b"{", headers={"content-type": "x"}),
            await client.get("/static/tidings.js"),
            await client.get("/openapi.json"),
            await client.get(f"/api/projects/{pid}/files/{file_id}/content"),
            await client.delete(f"/api/projects/{pid}"),
        ]
        async with api(server) as anonymous:
            responses.append(await anonymous.get("/api/auth/me"))
    for response in responses:
        assert response.headers.get("x-content-type-options") == "nosniff", response.url
        # Only pages get a page's policy (a download has its own: sandbox).
        assert response.headers.get("content-security-policy") in (None, "sandbox")
        assert "referrer-policy" not in response.headers


async def test_a_server_error_says_nosniff_too(server: ServerThread, alice: TestUser) -> None:
    async with api(server, alice) as client:
        pid = (await create_project(client))["id"]
        # The upload area vanishes from under a running server: a genuine 500.
        shutil.rmtree(server.settings.files_dir / "tmp")
        response = await upload(client, pid)
    assert response.status_code == 500
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/", "/static/index.html", "/docs", "/redoc"])
async def test_pages_carry_a_policy(server: ServerThread, path: str) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    directives = dict(d.strip().partition(" ")[::2] for d in policy.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "'unsafe-inline'" not in directives.get("script-src", "")
    assert response.headers["referrer-policy"] == "same-origin"
    assert response.headers["x-content-type-options"] == "nosniff"
    if path in ("/", "/static/index.html"):
        assert policy == PAGE_POLICY


async def test_websockets_pass_through_untouched(server: ServerThread, alice: TestUser) -> None:
    ws = await connected(server, alice)  # the handshake and first message still work
    assert ws.response is not None
    assert "x-content-type-options" not in ws.response.headers
    await ws.close()


async def test_docs_can_be_turned_off(make_server: object) -> None:
    server = make_server(docs=False)  # type: ignore[operator]
    async with httpx.AsyncClient(base_url=server.url) as client:
        for path in ("/docs", "/redoc", "/docs-assets/swagger-ui-bundle.js"):
            assert (await client.get(path)).status_code == 404, path
        assert (await client.get("/openapi.json")).status_code == 200
