"""``POST /api/auth/password``: changing one's password revokes every other credential
that an attacker with the old one could have made, and closes their sockets."""

from __future__ import annotations

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.conftest import (
    TIMEOUT,
    ServerThread,
    TestUser,
    api,
    browser_session,
    closed_with,
    connected,
    recv_until,
    send,
    ws_connect,
)

NEW = "a new and longer password"


async def cookie_socket(server: ServerThread, client: httpx.AsyncClient) -> ClientConnection:
    cookie = client.cookies["tidings_session"]
    ws = await ws_connect(server, additional_headers={"Cookie": f"tidings_session={cookie}"})
    assert (await recv_until(ws, lambda m: True))["type"] == "connection.established"
    return ws


async def still_open(ws: ClientConnection) -> bool:
    await send(ws, {"type": "ping"})
    return (await recv_until(ws, lambda m: m["type"] == "pong"))["type"] == "pong"


async def change(client: httpx.AsyncClient, current: str, **extra: object) -> httpx.Response:
    return await client.post(
        "/api/auth/password", json={"current_password": current, "new_password": NEW, **extra}
    )


async def test_password_change_revokes_the_other_sessions(
    server: ServerThread, alice: TestUser
) -> None:
    async with (
        browser_session(server, alice) as here,
        browser_session(server, alice) as stolen,
    ):
        other_ws = await cookie_socket(server, stolen)
        own_ws = await cookie_socket(server, here)
        token_ws = await connected(server, alice)

        changed = await change(here, alice.password)
        assert changed.status_code == 200, changed.text
        assert changed.json() == {"revoked_sessions": 1, "revoked_tokens": 0}

        # The other session is dead, and so is every socket it opened.
        assert await closed_with(other_ws) == 4401
        assert (await stolen.get("/api/auth/me")).status_code == 401
        # The session that changed it, and API tokens, stay.
        assert await still_open(own_ws)
        assert await still_open(token_ws)
        assert (await here.get("/api/auth/me")).status_code == 200

    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as fresh:
        old = await fresh.post(
            "/api/auth/login", json={"username": "alice", "password": alice.password}
        )
        assert old.status_code == 401
    async with api(server, alice) as client:
        assert (await client.get("/api/auth/me")).status_code == 200


async def test_password_change_can_revoke_the_tokens_too(
    server: ServerThread, alice: TestUser
) -> None:
    async with browser_session(server, alice) as here:
        token_ws = await connected(server, alice)
        changed = await change(here, alice.password, revoke_tokens=True)
        assert changed.json() == {"revoked_sessions": 0, "revoked_tokens": 1}
        assert await closed_with(token_ws) == 4401
        async with api(server, alice) as client:
            assert (await client.get("/api/auth/me")).status_code == 401
        assert (await here.get("/api/auth/me")).status_code == 200


async def test_password_change_refusals(server: ServerThread, alice: TestUser) -> None:
    async with api(server, alice) as bearer:
        refused = await change(bearer, alice.password)
        assert refused.status_code == 403
        assert "session" in refused.json()["detail"]
    async with browser_session(server, alice) as here:
        wrong = await change(here, "not my password")
        assert wrong.status_code == 400
        assert wrong.json() == {"detail": "the current password is not correct"}
        for body in (
            {"current_password": alice.password, "new_password": "short"},
            {"current_password": alice.password},
            {"current_password": alice.password, "new_password": NEW, "admin": True},
        ):
            assert (await here.post("/api/auth/password", json=body)).status_code == 422, body
        no_origin = here.build_request(
            "POST",
            "/api/auth/password",
            json={"current_password": alice.password, "new_password": NEW},
        )
        no_origin.headers.pop("origin")
        assert (await here.send(no_origin)).status_code == 403
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as anonymous:
        assert (await change(anonymous, alice.password)).status_code == 401


@pytest.mark.parametrize("then", ["right", "wrong"])
async def test_wrong_current_passwords_are_throttled_like_logins(
    server: ServerThread, alice: TestUser, then: str
) -> None:
    """A stolen session must not become a password-guessing oracle."""
    limit = server.settings.login_max_failures
    async with browser_session(server, alice) as here:
        for _ in range(limit):
            assert (await change(here, "guess")).status_code == 400
        response = await change(here, alice.password if then == "right" else "guess")
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) > 0
