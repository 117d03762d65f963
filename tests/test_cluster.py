"""Two tidings nodes on one PostgreSQL and one Redis behave as one service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from tests.conftest import (
    ServerThread,
    TestUser,
    accepted,
    api,
    browser_session,
    closed_with,
    connected,
    create_project,
    create_user,
    db_scalars,
    on_stacks,
    recv,
    recv_until,
    refused,
    subscribe,
    upload,
    ws_connect,
)
from tests.test_ws import refused_after_removal
from tidings import Settings
from tidings.models import AuthSession
from tidings.security import hash_secret

pytestmark = on_stacks("postgres-redis")


@pytest.fixture
async def nodes(settings: Settings) -> AsyncIterator[tuple[ServerThread, ServerThread]]:
    """Two nodes on the test's database and Redis channel."""
    a = ServerThread(settings)
    b = ServerThread(settings)
    a.start()
    b.start()
    try:
        yield a, b
    finally:
        await a.stop_async()
        await b.stop_async()


async def test_change_on_one_node_reaches_subscribers_on_the_other(nodes) -> None:
    a, b = nodes
    user = await create_user(a.settings)
    async with api(a, user) as client_a:
        ws_b = await connected(b, user)
        project = await create_project(client_a)
        created = await recv_until(ws_b, lambda m: m["type"] == "project.created")
        assert created["project_id"] == project["id"]
        await subscribe(ws_b, project["id"])
        await upload(client_a, project["id"], "from-a.txt")
        event = await recv_until(ws_b, lambda m: m["type"] == "file.uploaded")
        assert event["seq"] == 2 and event["file"]["name"] == "from-a.txt"


async def test_concurrent_changes_on_both_nodes_get_consecutive_seqs(nodes) -> None:
    a, b = nodes
    user = await create_user(a.settings)
    async with api(a, user) as client_a, api(b, user) as client_b:
        project = await create_project(client_a)
        pid = project["id"]
        watcher = await connected(a, user)
        await subscribe(watcher, pid)

        async def patch(client, i: int) -> None:  # type: ignore[no-untyped-def]
            response = await client.patch(f"/api/projects/{pid}", json={"description": str(i)})
            assert response.status_code == 200

        await asyncio.gather(*(patch(client_a if i % 2 else client_b, i) for i in range(30)))
        got = [(await recv_until(watcher, lambda m: "seq" in m))["seq"] for _ in range(30)]
        assert got == list(range(2, 32))


async def test_revocation_on_one_node_closes_sockets_on_the_other(nodes) -> None:
    a, b = nodes
    user = await create_user(a.settings)
    async with browser_session(a, user) as client_a:
        token = (await client_a.post("/api/auth/tokens", json={})).json()
        holder = TestUser(user.id, user.username, user.password, token["token"])
        ws_b = await connected(b, holder)
        await client_a.delete(f"/api/auth/tokens/{token['id']}")
    assert await closed_with(ws_b) == 4401


async def test_resume_on_another_node(nodes) -> None:
    a, b = nodes
    user = await create_user(a.settings)
    async with api(a, user) as client_a:
        project = await create_project(client_a)
        for i in range(5):
            await client_a.patch(f"/api/projects/{project['id']}", json={"description": str(i)})
    ws_b = await connected(b, user)
    reply = await subscribe(ws_b, project["id"], since=2)
    assert reply["recovered"] is True
    assert [(await recv(ws_b))["seq"] for _ in range(4)] == [3, 4, 5, 6]


async def test_a_member_removed_on_one_node_is_refused_on_the_other(nodes) -> None:
    a, b = nodes
    owner = await create_user(a.settings)
    member = await create_user(a.settings)
    await refused_after_removal(a, b, owner, member)


async def test_credentials_revoked_on_one_node_are_refused_on_the_other(nodes) -> None:
    """Node b has the token and the session cached; revoked on a, they are refused on b's
    next request and connect as soon as b has the broker's notice (which its open socket
    of the same credential shows: closed with 4401)."""
    a, b = nodes
    user = await create_user(a.settings)
    async with browser_session(a, user) as browser:
        token = (await browser.post("/api/auth/tokens", json={})).json()
        holder = TestUser(user.id, user.username, user.password, token["token"])
        await accepted(b, token=token["token"])
        watcher = await connected(b, holder)
        assert (await browser.delete(f"/api/auth/tokens/{token['id']}")).status_code == 204
        assert await closed_with(watcher) == 4401
        await refused(b, token=token["token"])

        cookie = browser.cookies["tidings_session"]
        await accepted(b, cookie=cookie)
        watcher = await ws_connect(b, additional_headers={"Cookie": f"tidings_session={cookie}"})
        assert (await recv(watcher))["type"] == "connection.established"
        assert (await browser.post("/api/auth/logout")).status_code == 204
        assert await closed_with(watcher) == 4401
        await refused(b, cookie=cookie)


async def test_an_expired_session_is_refused_on_every_node(settings: Settings) -> None:
    short = settings.model_copy(update={"session_max_age": 4})
    a, b = ServerThread(short), ServerThread(short)
    a.start()
    b.start()
    try:
        user = await create_user(a.settings)
        async with browser_session(a, user) as browser:
            cookie = browser.cookies["tidings_session"]
        (expires,) = await db_scalars(
            a.settings,
            select(AuthSession.expires_at).where(AuthSession.secret_hash == hash_secret(cookie)),
        )
        await accepted(a, cookie=cookie)
        await accepted(b, cookie=cookie)
        await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.01)
        await refused(a, cookie=cookie)
        await refused(b, cookie=cookie)
    finally:
        await a.stop_async()
        await b.stop_async()
