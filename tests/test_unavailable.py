"""A database that cannot be reached answers 503 with ``Retry-After``, never 500.

Found by the chaos suite (tests/chaos.py): while PostgreSQL restarted, every request and
WebSocket upgrade answered 500, which says the request broke something and tells a client
nothing about retrying. The change was not made (its transaction rolled back), so the
right answer is 503: retry. Here the database sits behind a TCP proxy that is closed and
opened again, deterministically.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
import websockets
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import (
    TIMEOUT,
    PrivateRedis,
    ServerThread,
    Stack,
    api,
    closed_with,
    connected,
    create_project,
    create_user,
    on_stacks,
    recv_until,
    subscribe,
)
from tests.proxy import SilencingProxy, silencing_proxy
from tidings import Settings
from tidings.db import Database, create_engine, unavailable


def test_unreachable_databases_are_told_apart_from_failed_statements() -> None:
    assert unavailable(ConnectionRefusedError(111, "refused"))
    assert unavailable(OperationalError("SELECT 1", {}, Exception("gone")))
    lost = DBAPIError("SELECT 1", {}, Exception("closed"), connection_invalidated=True)
    assert unavailable(lost)
    wrapped = RuntimeError("handler")
    wrapped.__cause__ = ConnectionResetError()
    assert unavailable(wrapped)
    assert unavailable(PoolTimeout("QueuePool limit of size 10 overflow 20 reached"))
    assert not unavailable(DBAPIError("SELECT 1", {}, ValueError("bad value")))
    assert not unavailable(ValueError("nope"))


async def test_a_pool_with_no_connection_to_spare_in_time_counts_as_unavailable(
    database_url: str,
) -> None:
    """Every pooled connection busy for longer than the pool waits (a database too slow
    for the load): the read that could not get one fails as :func:`unavailable` (503,
    retry), not as an internal error (500)."""
    db = Database(create_async_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=0.2))
    try:
        async with db.engine.connect() as busy:
            await busy.execute(text("SELECT 1"))
            with pytest.raises(PoolTimeout) as waited:
                async with db.read() as session:
                    await session.execute(text("SELECT 1"))
        assert unavailable(waited.value)
    finally:
        await db.dispose()


async def test_a_database_that_never_answers_a_new_connection_fails_it_in_time() -> None:
    """A PostgreSQL address that takes the connection and then says nothing (the other
    half of a database gone silent): connecting gives up after the engine's timeout,
    as unreachable, instead of waiting for as long as the connection lasts."""

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # answers nothing, until the client leaves
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    db = Database(create_engine(f"postgresql+asyncpg://tidings@127.0.0.1:{port}/x", timeout=0.5))
    try:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(Exception) as refused:
                async with db.read() as session:
                    await session.execute(text("SELECT 1"))
        assert unavailable(refused.value)
    finally:
        await db.dispose()
        server.close()
        await server.wait_closed()


@on_stacks("postgres-redis")
async def test_requests_get_503_while_the_database_is_unreachable(
    settings: Settings, stack: Stack
) -> None:
    url = make_url(settings.effective_database_url)
    proxy = SilencingProxy(url.port or 5432)
    await proxy.start()
    proxied = settings.model_copy(
        update={"database_url": url.set(port=proxy.port).render_as_string(hide_password=False)}
    )
    server = ServerThread(proxied)
    # In a thread: the proxy runs on this loop, which start() would otherwise block.
    await asyncio.to_thread(server.start)
    try:
        user = await create_user(proxied)
        async with api(server, user) as client:
            project = await create_project(client)
            path = f"/api/projects/{project['id']}"

            ws = await websockets.connect(
                server.ws_url, additional_headers={"Authorization": f"Bearer {user.token}"}
            )
            assert orjson.loads(await ws.recv())["type"] == "connection.established"
            # A credential the node has not seen yet (used ones are cached: they connect).
            newcomer = await create_user(proxied)

            await proxy.close()  # the database is gone: refused, open connections cut
            # A subscribe that cannot be read closes the socket (clients resume every
            # subscription), not an `error` that leaves one silently dead.
            await ws.send(orjson.dumps({"type": "subscribe", "project_id": project["id"]}))
            assert await closed_with(ws) == 1011
            for request in (client.patch(path, json={"name": "x"}), client.get(path)):
                response = await request
                assert response.status_code == 503, response.text
                assert response.headers["Retry-After"] == "1"
            with pytest.raises(websockets.InvalidStatus) as refused:
                await websockets.connect(
                    server.ws_url,
                    additional_headers={"Authorization": f"Bearer {newcomer.token}"},
                )
            assert refused.value.response.status_code == 503
            # The event stream opens as /ws does: the cached credential gets its stream,
            # the newcomer a 503.
            async with client.stream("GET", "/api/stream") as stream:
                assert stream.status_code == 200
                async with asyncio.timeout(TIMEOUT):
                    async for line in stream.aiter_lines():
                        if line == "event: connection.established":
                            break
                    else:
                        pytest.fail("the stream ended before connection.established")
            newcomer_stream = await client.get(
                "/api/stream", headers={"Authorization": f"Bearer {newcomer.token}"}
            )
            assert newcomer_stream.status_code == 503, newcomer_stream.text

            proxy = SilencingProxy(url.port or 5432, port=proxy.port)
            await proxy.start()  # back: the same requests succeed, nothing half-written
            response = await client.patch(path, json={"name": "y"})
            assert response.status_code == 200, response.text
            assert response.headers["Tidings-Seq"] == "2"
            events = (await client.get(path + "/events")).json()["events"]
            assert [(e["seq"], e["type"]) for e in events] == [
                (1, "project.created"),
                (2, "project.updated"),
            ]
        await proxy.close()  # gone again: the node still stops
        await server.stop_async()
    finally:
        await server.stop_async()
        await proxy.close()


@on_stacks("postgres-redis")
async def test_a_silent_database_fails_requests_with_503_instead_of_hanging_them(
    settings: Settings,
) -> None:
    """A database that stops answering on connections that stay open (a cut network, a
    failover whose old address drops packets): a request fails with 503 once
    ``TIDINGS_DATABASE_TIMEOUT`` has passed, instead of waiting for as long as the
    connection lasts, and so does nothing else waiting behind it; new connections are
    answered again, and the next change gets the next seq (the silent one was not made)."""
    url = make_url(settings.effective_database_url)
    async with silencing_proxy(url.port or 5432) as proxy:
        proxied = settings.model_copy(
            update={
                "database_url": url.set(port=proxy.port).render_as_string(hide_password=False),
                "database_timeout": 1.0,
            }
        )
        server = ServerThread(proxied)
        await asyncio.to_thread(server.start)  # the proxy runs on this loop
        try:
            user = await create_user(proxied)
            async with api(server, user) as client:
                path = f"/api/projects/{(await create_project(client))['id']}"
                proxy.silence()  # what the database sends on the connections open now is lost
                async with asyncio.timeout(TIMEOUT):
                    silent = await client.patch(path, json={"name": "lost"})
                assert silent.status_code == 503, silent.text
                async with asyncio.timeout(TIMEOUT):
                    answer = await client.patch(path, json={"name": "x"})
                    while answer.status_code == 503:  # a pooled connection silenced too
                        answer = await client.patch(path, json={"name": "x"})
                assert answer.status_code == 200, answer.text
                assert answer.headers["Tidings-Seq"] == "2"
                assert (await client.get(path)).json()["name"] == "x"
        finally:
            await server.stop_async()


@on_stacks("postgres-redis")
async def test_a_frozen_redis_holds_neither_changes_nor_subscribes(
    settings: Settings, private_redis: PrivateRedis
) -> None:
    """A Redis that hangs (frozen, or the network to it silent) answers nothing: each
    command tidings sends it gives up after `TIDINGS_BROKER_TIMEOUT`, so a change is still
    answered after its commit (its publish failed), its event reaches the subscribers
    from the log (head sync), and a subscribe is answered (the presence read failed: this
    node's viewers)."""
    frozen_settings = settings.model_copy(
        update={"broker_url": private_redis.url, "broker_timeout": 0.5, "head_sync_interval": 1}
    )
    server = ServerThread(frozen_settings)
    server.start()
    try:
        user = await create_user(frozen_settings)
        async with api(server, user) as client:
            project = await create_project(client)
            path = f"/api/projects/{project['id']}"
            watcher = await connected(server, user)
            await subscribe(watcher, project["id"])

            private_redis.freeze()
            response = await asyncio.wait_for(client.patch(path, json={"name": "x"}), TIMEOUT)
            assert response.status_code == 200, response.text
            event = await recv_until(watcher, lambda m: m["type"] == "project.updated")
            assert event["seq"] == 2
            newcomer = await connected(server, user)
            reply = await asyncio.wait_for(subscribe(newcomer, project["id"]), TIMEOUT)
            assert reply["type"] == "subscribed" and reply["seq"] == 2
    finally:
        private_redis.thaw()
        await server.stop_async()
