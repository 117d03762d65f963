"""``/healthz``, ``/readyz`` and the other unauthenticated service endpoints."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.conftest import ServerThread, _pg_admin, on_stacks
from tidings.codes import protocol_table
from tidings.schema import json_schema


async def test_healthz_and_readyz(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ok"}


@on_stacks("postgres-redis")
async def test_readyz_is_503_when_the_database_is_gone(
    server: ServerThread, database_url: str
) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/readyz")).status_code == 200
        name = database_url.rsplit("/", 1)[1]
        await _pg_admin(f'DROP DATABASE "{name}" WITH (FORCE)')
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        # Liveness is about the process, not its dependencies.
        assert (await client.get("/healthz")).status_code == 200


@on_stacks("sqlite-memory")  # no storage or broker involved
async def test_protocol_table_and_metrics(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        protocol = await client.get("/api/protocol")
        assert protocol.status_code == 200
        assert protocol.json() == protocol_table()
        schema = await client.get("/api/protocol/schema")
        assert schema.status_code == 200
        assert schema.headers["content-type"] == "application/schema+json"
        assert schema.json() == json_schema()
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
    # What a leak would show in (tests/held.py watches them): the process's open files and
    # memory, and the tasks of the app's event loop.
    samples = {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in metrics.text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples["process_open_fds"] > 0
    assert samples["process_resident_memory_bytes"] > 0
    assert samples["tidings_asyncio_tasks"] >= 4  # the hub's listener, heartbeat, head sync, expiry


async def test_metrics_token(make_server: Callable[..., ServerThread]) -> None:
    server = make_server(metrics_token="scrape-secret")
    async with httpx.AsyncClient(base_url=server.url) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Bearer scrape-secre"},
            {"Authorization": "Basic scrape-secret"},
        ):
            refused = await client.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "tidings_" not in refused.text
        ok = await client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert ok.status_code == 200
        assert "tidings_ws_connections" in ok.text
        # Health and readiness stay open to the orchestrator.
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
