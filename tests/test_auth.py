"""``/api/auth``: login cookie, logout, who am I, API tokens, the Origin check."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import delete, event, insert, select, update

from tests.conftest import (
    TIMEOUT,
    ServerThread,
    TestUser,
    accepted,
    api,
    browser_session,
    closed_with,
    create_project,
    create_user,
    db_scalars,
    on_stacks,
    refused,
    ws_connect,
)
from tidings import auth as auth_module
from tidings.auth import Authenticator, authenticate
from tidings.db import Database, create_engine
from tidings.models import ApiToken, AuthSession
from tidings.security import TOKEN_PREFIX, hash_secret, new_secret


def cookie_client(server: ServerThread, **headers: str) -> httpx.AsyncClient:
    """A browser-like client: sends the server's own Origin unless told otherwise."""
    return httpx.AsyncClient(
        base_url=server.url, headers={"Origin": server.url} | headers, timeout=TIMEOUT
    )


async def login(client: httpx.AsyncClient, user: TestUser) -> httpx.Response:
    response = await client.post(
        "/api/auth/login", json={"username": user.username, "password": user.password}
    )
    assert response.status_code == 200, response.text
    return response


async def test_login_sets_httponly_lax_session_cookie(
    server: ServerThread, alice: TestUser
) -> None:
    async with cookie_client(server) as client:
        response = await login(client, alice)
        assert response.json() == {"id": alice.id, "username": "alice"}
        (set_cookie,) = response.headers.get_list("set-cookie")
        attributes = [a.strip().lower() for a in set_cookie.split(";")]
        assert attributes[0].startswith("tidings_session=")
        assert len(attributes[0].split("=", 1)[1]) >= 32  # opaque and random
        assert "httponly" in attributes
        assert "samesite=lax" in attributes
        assert "path=/" in attributes
        assert "secure" not in attributes
        me = await client.get("/api/auth/me")
        assert me.status_code == 200
        assert me.json() == {"id": alice.id, "username": "alice"}


async def test_secure_cookie_is_configurable(make_server: Callable[..., ServerThread]) -> None:
    srv = make_server(session_cookie_secure=True, session_max_age=60)
    user = await create_user(srv.settings, "carol")
    async with cookie_client(srv) as client:
        response = await login(client, user)
    attributes = [a.strip().lower() for a in response.headers["set-cookie"].split(";")]
    assert "secure" in attributes
    assert "max-age=60" in attributes


async def test_session_secret_is_stored_hashed(server: ServerThread, alice: TestUser) -> None:
    async with cookie_client(server) as client:
        await login(client, alice)
        secret = client.cookies["tidings_session"]
    hashes = await db_scalars(server.settings, select(AuthSession.secret_hash))
    assert hashes == [hash_secret(secret)]
    assert secret not in hashes


async def test_bad_credentials_share_one_message(server: ServerThread, alice: TestUser) -> None:
    async with cookie_client(server) as client:
        wrong = await client.post(
            "/api/auth/login", json={"username": "alice", "password": "not-it"}
        )
        unknown = await client.post(
            "/api/auth/login", json={"username": "nobody", "password": alice.password}
        )
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json() == unknown.json() == {"detail": "invalid username or password"}
        assert "set-cookie" not in wrong.headers
        assert (await client.get("/api/auth/me")).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"username": "alice"},
        {"username": "", "password": "x"},
        {"username": "alice", "password": "x", "remember": True},
        ["alice", "x"],
    ],
)
@on_stacks("sqlite-memory")  # refused by validation, before any storage
async def test_login_bad_body_is_422(server: ServerThread, body: object) -> None:
    async with cookie_client(server) as client:
        assert (await client.post("/api/auth/login", json=body)).status_code == 422
        malformed = await client.post(
            "/api/auth/login",
            content=b'{"username": ',
            headers={"content-type": "application/json"},
        )
        assert malformed.status_code == 400  # not JSON at all


async def test_repeated_failures_are_throttled(server: ServerThread, alice: TestUser) -> None:
    limit = server.settings.login_max_failures
    async with cookie_client(server) as client:
        for _ in range(limit):
            response = await client.post(
                "/api/auth/login", json={"username": "alice", "password": "wrong"}
            )
            assert response.status_code == 401
        # Even the right password is refused until the window passes.
        throttled = await client.post(
            "/api/auth/login", json={"username": "alice", "password": alice.password}
        )
        assert throttled.status_code == 429
        assert int(throttled.headers["retry-after"]) > 0


async def test_logout_revokes_the_session_server_side(
    server: ServerThread, alice: TestUser
) -> None:
    async with cookie_client(server) as client:
        await login(client, alice)
        secret = client.cookies["tidings_session"]
        response = await client.post("/api/auth/logout")
        assert response.status_code == 204
        assert 'tidings_session=""' in response.headers["set-cookie"]
    # Replaying the old cookie (as a stolen copy would) no longer works.
    async with cookie_client(server) as replay:
        replay.cookies.set("tidings_session", secret)
        assert (await replay.get("/api/auth/me")).status_code == 401
        assert (await replay.post("/api/auth/logout")).status_code == 401


async def test_unknown_cookie_or_token_is_401(server: ServerThread) -> None:
    async with cookie_client(server) as client:
        client.cookies.set("tidings_session", "made-up")
        response = await client.get("/api/auth/me")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    for header in ("Bearer tdg_made-up", "Basic YWxpY2U6eA==", "Bearer", "tdg_x"):
        async with cookie_client(server, Authorization=header) as client:
            assert (await client.get("/api/auth/me")).status_code == 401, header


async def test_tokens_create_list_delete(
    server: ServerThread, alice: TestUser, bob: TestUser
) -> None:
    async with browser_session(server, alice) as client:
        created = await client.post("/api/auth/tokens", json={"name": "ci"})
        assert created.status_code == 201
        token = created.json()
        assert token["name"] == "ci" and token["token"].startswith("tdg_")
        listed = (await client.get("/api/auth/tokens")).json()
        assert [t["name"] for t in listed] == ["test", "ci"]
        assert all("token" not in t for t in listed)  # the secret is shown once only
        assert listed[1]["last_used_at"] is None

    async with api(server) as anonymous:
        anonymous.headers["Authorization"] = f"Bearer {token['token']}"
        assert (await anonymous.get("/api/auth/me")).json()["username"] == "alice"
        async with api(server, alice) as client:
            # Recorded on use, off the request path: within a second or so.
            async with asyncio.timeout(TIMEOUT):
                while (await client.get("/api/auth/tokens")).json()[1]["last_used_at"] is None:
                    await asyncio.sleep(0.05)

        # Someone else cannot see or revoke it.
        async with api(server, bob) as other:
            assert (await other.delete(f"/api/auth/tokens/{token['id']}")).status_code == 404

        async with api(server, alice) as client:
            assert (await client.delete(f"/api/auth/tokens/{token['id']}")).status_code == 204
            assert (await client.delete(f"/api/auth/tokens/{token['id']}")).status_code == 404
            listed = (await client.get("/api/auth/tokens")).json()
            assert [t["name"] for t in listed] == ["test"]

        revoked = await anonymous.get("/api/auth/me")
        assert revoked.status_code == 401


async def test_token_body_is_validated(server: ServerThread, alice: TestUser) -> None:
    async with browser_session(server, alice) as client:
        for body in (
            {"name": "x" * 101},
            {"scope": "all"},
            {"expires_in": 0},
            {"expires_in": -5},
            {"expires_in": 366 * 24 * 3600 + 1},
            {"expires_in": "soon"},
            {"expires_in": 1.5},
        ):
            response = await client.post("/api/auth/tokens", json=body)
            assert response.status_code == 422, (body, response.text)
        assert (await client.post("/api/auth/tokens", json={})).status_code == 201


async def test_logout_with_a_bearer_token_revokes_that_token(
    server: ServerThread, alice: TestUser
) -> None:
    async with api(server, alice) as client:
        assert (await client.post("/api/auth/logout")).status_code == 204
        assert (await client.get("/api/auth/me")).status_code == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/auth/me"),
        ("POST", "/api/auth/logout"),
        ("GET", "/api/auth/tokens"),
        ("POST", "/api/auth/tokens"),
        ("DELETE", "/api/auth/tokens/x"),
        ("GET", "/api/projects"),
        ("POST", "/api/projects"),
        ("GET", "/api/projects/x"),
        ("PATCH", "/api/projects/x"),
        ("DELETE", "/api/projects/x"),
        ("GET", "/api/projects/x/members"),
        ("POST", "/api/projects/x/members"),
        ("DELETE", "/api/projects/x/members/bob"),
        ("GET", "/api/projects/x/files"),
        ("POST", "/api/projects/x/files"),
        ("GET", "/api/projects/x/files/y"),
        ("GET", "/api/projects/x/files/y/content"),
        ("DELETE", "/api/projects/x/files/y"),
    ],
)
@on_stacks("sqlite-memory")  # refused before any storage is read
async def test_every_endpoint_needs_authentication(
    server: ServerThread, method: str, path: str
) -> None:
    async with cookie_client(server) as client:
        response = await client.request(method, path, json={})
        assert response.status_code == 401, response.text
        assert response.json() == {"detail": "not authenticated"}


# -- the Origin check (CSRF) -------------------------------------------------------------


async def test_cookie_request_from_a_foreign_origin_is_refused(
    server: ServerThread, alice: TestUser
) -> None:
    async with cookie_client(server) as client:
        await login(client, alice)
        evil = {"Origin": "https://evil.example"}
        refused = await client.post("/api/projects", json={"name": "x"}, headers=evil)
        assert refused.status_code == 403
        assert (await client.get("/api/projects")).json() == []  # nothing was created
        # Reads are not state-changing: they pass.
        assert (await client.get("/api/projects", headers=evil)).status_code == 200
        for method in ("PATCH", "DELETE"):
            response = await client.request(method, "/api/projects/x", headers=evil, json={})
            assert response.status_code == 403, method
        assert (await client.post("/api/auth/logout", headers=evil)).status_code == 403
        # Same origin, and no Origin at all (not a browser), pass.
        same = {"Origin": server.url}
        assert (await client.post("/api/projects", json={"name": "a"}, headers=same)).is_success
        assert (await client.post("/api/projects", json={"name": "b"})).is_success


async def test_login_from_a_foreign_origin_is_refused(
    server: ServerThread, alice: TestUser
) -> None:
    async with cookie_client(server, Origin="https://evil.example") as client:
        response = await client.post(
            "/api/auth/login", json={"username": "alice", "password": alice.password}
        )
        assert response.status_code == 403
        assert "set-cookie" not in response.headers


async def test_allowed_origins_pass(make_server: Callable[..., ServerThread]) -> None:
    srv = make_server(allowed_origins=["https://app.example"])
    user = await create_user(srv.settings, "carol")
    async with cookie_client(srv, Origin="https://app.example") as client:
        await login(client, user)
        assert (await client.post("/api/projects", json={"name": "x"})).status_code == 201
        response = await client.post(
            "/api/projects", json={"name": "y"}, headers={"Origin": "https://other.example"}
        )
        assert response.status_code == 403


async def test_bearer_requests_are_exempt_from_the_origin_check(
    server: ServerThread, alice: TestUser
) -> None:
    async with api(server, alice) as client:
        client.headers["Origin"] = "https://evil.example"
        project = await create_project(client)
        assert (await client.delete(f"/api/projects/{project['id']}")).status_code == 204


async def test_logout_stands_when_the_broker_is_down(server: ServerThread, alice: TestUser) -> None:
    class UnreachableBroker:
        async def publish(self, channel: str, message: bytes) -> None:
            raise ConnectionError("broker unreachable")

    eventlog = server.services.eventlog
    broker, eventlog.broker = eventlog.broker, UnreachableBroker()
    try:
        async with cookie_client(server) as client:
            await login(client, alice)
            assert (await client.post("/api/auth/logout")).status_code == 204
    finally:
        eventlog.broker = broker


async def test_an_expired_session_is_refused_to_the_second(
    make_server: Callable[..., ServerThread],
) -> None:
    """Accepted (and so cached) until it expires; the first request and connect after
    its expiry are refused, cache or not."""
    server = make_server(session_max_age=4)
    alice = await create_user(server.settings, "alice")
    async with cookie_client(server) as client:
        await login(client, alice)
        cookie = client.cookies["tidings_session"]
    (expires,) = await db_scalars(
        server.settings,
        select(AuthSession.expires_at).where(AuthSession.secret_hash == hash_secret(cookie)),
    )
    await accepted(server, cookie=cookie)
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.01)
    await refused(server, cookie=cookie)


async def test_a_cached_credential_is_refused_once_revoked(
    server: ServerThread, alice: TestUser
) -> None:
    """A revoked token, a logged-out session and the sessions a password change revokes
    are refused on the very next request and connect, though each was just cached."""
    async with browser_session(server, alice) as browser:
        token = (await browser.post("/api/auth/tokens", json={})).json()
        await accepted(server, token=token["token"])
        assert (await browser.delete(f"/api/auth/tokens/{token['id']}")).status_code == 204
        await refused(server, token=token["token"])

        async with browser_session(server, alice) as other:
            elsewhere = other.cookies["tidings_session"]
        await accepted(server, cookie=elsewhere)
        changed = await browser.post(
            "/api/auth/password",
            json={"current_password": alice.password, "new_password": "a-new-password-1"},
        )
        assert changed.status_code == 200, changed.text
        await refused(server, cookie=elsewhere)

        cookie = browser.cookies["tidings_session"]
        await accepted(server, cookie=cookie)
        assert (await browser.post("/api/auth/logout")).status_code == 204
        await refused(server, cookie=cookie)


# -- minting and expiring tokens ---------------------------------------------------------


async def test_a_token_cannot_mint_tokens(server: ServerThread, alice: TestUser) -> None:
    """A leaked token must not be able to outlive its own revocation or expiry."""
    async with api(server, alice) as bearer:
        refused = await bearer.post("/api/auth/tokens", json={"name": "escape"})
        assert refused.status_code == 403
        assert "session" in refused.json()["detail"]
        assert [t["name"] for t in (await bearer.get("/api/auth/tokens")).json()] == ["test"]


async def test_an_expiring_token_stops_working(server: ServerThread, alice: TestUser) -> None:
    async with browser_session(server, alice) as browser:
        created = await browser.post("/api/auth/tokens", json={"name": "brief", "expires_in": 1})
        assert created.status_code == 201, created.text
        token = created.json()
        lifetime = datetime.fromisoformat(token["expires_at"]) - datetime.fromisoformat(
            token["created_at"]
        )
        assert lifetime == timedelta(seconds=1)
        listed = (await browser.get("/api/auth/tokens")).json()
        assert [t["expires_at"] for t in listed] == [None, token["expires_at"]]
        forever = (await browser.post("/api/auth/tokens", json={})).json()
        assert forever["expires_at"] is None

    holder = TestUser(alice.id, "alice", alice.password, token["token"])
    # The credential carries its expiry, for the layers that act on it.
    db = Database(create_engine(server.settings.effective_database_url))
    try:
        principal = await authenticate(db, None, f"Bearer {token['token']}")
        assert principal is not None
        assert principal.expires_at == datetime.fromisoformat(token["expires_at"])
        async with api(server, holder) as client:
            async with asyncio.timeout(TIMEOUT):
                while (await client.get("/api/auth/me")).status_code != 401:
                    await asyncio.sleep(0.05)
            assert (await client.get("/api/projects")).status_code == 401
        assert await authenticate(db, None, f"Bearer {token['token']}") is None
        async with browser_session(server, alice) as browser:  # a session's expiry, too
            cookie = browser.cookies["tidings_session"]
            principal = await authenticate(db, cookie, None)
            assert principal is not None and principal.expires_at is not None
            assert principal.expires_at > datetime.now(UTC)
    finally:
        await db.dispose()
    ws = await ws_connect(server, holder)
    assert await closed_with(ws) == 4401


async def test_last_use_is_written_in_a_batch_off_the_request_path(
    server: ServerThread, alice: TestUser, bob: TestUser
) -> None:
    """Not written while authenticating; written by the next flush, in one statement, even
    when one of the tokens is gone by then (its user deleted)."""
    db = Database(create_engine(server.settings.effective_database_url))
    authenticator = Authenticator(db)
    last_used = select(ApiToken.last_used_at).where(ApiToken.user_id == alice.id)
    try:
        assert await authenticator.authenticate(None, f"Bearer {alice.token}") is not None
        assert await authenticator.authenticate(None, f"Bearer {bob.token}") is not None
        assert await db_scalars(server.settings, last_used) == [None]
        async with db.write() as session:
            await session.execute(delete(ApiToken).where(ApiToken.user_id == bob.id))
        await authenticator.flush()
        (when,) = await db_scalars(server.settings, last_used)
        assert when is not None
    finally:
        await db.dispose()


def token_queries(db: Database) -> list[str]:
    """The statements ``db`` runs on the tokens' table from now on."""
    queries: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "FROM api_tokens" in statement:
            queries.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    return queries


async def test_many_credentials_coming_back_at_once_are_read_together_and_each_rightly(
    server: ServerThread, alice: TestUser
) -> None:
    """Every user back at once, each with a credential of their own: a few queries for all
    of them, and each answered for itself, revoked, expired and unknown ones refused."""
    db = Database(create_engine(server.settings.effective_database_url))
    authenticator = Authenticator(db)
    now = datetime.now(UTC)
    kinds = ["live"] * 60 + ["revoked", "expired", "unknown"]
    secrets = [new_secret(TOKEN_PREFIX) for _ in kinds]
    rows = [
        {
            "secret_hash": hash_secret(secret),
            "user_id": alice.id,
            "name": kind,
            "revoked_at": now if kind == "revoked" else None,
            "expires_at": now - timedelta(seconds=1) if kind == "expired" else None,
        }
        for secret, kind in zip(secrets, kinds, strict=True)
        if kind != "unknown"
    ]
    queries = token_queries(db)
    try:
        async with db.write() as session:
            await session.execute(insert(ApiToken), rows)
        answers = await asyncio.gather(
            *(authenticator.authenticate(None, f"Bearer {secret}") for secret in secrets)
        )
        names = {p.credential: n for p, n in zip(answers, kinds, strict=True) if p is not None}
        assert sorted(names.values()) == ["live"] * 60
        assert len(set(names)) == 60  # each its own token
        assert {p.user_id for p in answers if p is not None} == {alice.id}
        assert len(queries) <= 2  # the first alone, the rest together (at most 500 a query)
    finally:
        await authenticator.stop()
        await db.dispose()


async def test_concurrent_misses_share_one_read(
    server: ServerThread, alice: TestUser, bob: TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients coming back at once (after a restart, the cache empty) make one token query
    together, whether they share a token or each bring their own. A revocation heard while
    a read is under way sends later callers to the database with a read of their own."""
    db = Database(create_engine(server.settings.effective_database_url))
    authenticator = Authenticator(db)
    queries = token_queries(db)
    try:
        answers = await asyncio.gather(
            *(authenticator.authenticate(None, f"Bearer {alice.token}") for _ in range(20)),
            authenticator.authenticate(None, f"Bearer {bob.token}"),
        )
        assert [a.user_id if a else None for a in answers] == [alice.id] * 20 + [bob.id]
        assert len(queries) == 1

        credential = answers[0].credential if answers[0] is not None else ""
        authenticator.forget(credential)
        queries.clear()
        reading = asyncio.Event()
        find_tokens = auth_module._find_tokens

        async def held(db: Database, hashes: list[str]) -> object:
            await reading.wait()  # the read stays under way until the revocation is heard
            return await find_tokens(db, hashes)

        monkeypatch.setattr(auth_module, "_find_tokens", held)
        first = asyncio.ensure_future(authenticator.authenticate(None, f"Bearer {alice.token}"))
        await asyncio.sleep(0)
        async with db.write() as session:
            await session.execute(
                update(ApiToken)
                .where(ApiToken.user_id == alice.id)
                .values(revoked_at=datetime.now(UTC))
            )
        authenticator.forget(credential)  # the revocation notice
        later = asyncio.ensure_future(authenticator.authenticate(None, f"Bearer {alice.token}"))
        await asyncio.sleep(0)
        reading.set()
        assert await later is None
        await first
        assert len(queries) == 2  # the later caller did not join the read begun before
    finally:
        await authenticator.stop()
        await db.dispose()
