"""``/healthz``, ``/readyz`` and the other unauthenticated service endpoints."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

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


# Run in an interpreter of its own: OpenTelemetry's tracer provider is set once a process.
# It records the spans FastAPI starts for one request, with TIDINGS_OPENTELEMETRY as given.
_SPANS_OF_A_REQUEST = """
import asyncio, sys
import httpx
from opentelemetry import trace
from tidings.app import create_app
from tidings.settings import Settings

started = []

class Tracer(trace.NoOpTracer):
    def start_span(self, name, *args, **kwargs):
        started.append(name)
        return super().start_span(name, *args, **kwargs)

    def start_as_current_span(self, name, *args, **kwargs):
        started.append(name)
        return super().start_as_current_span(name, *args, **kwargs)

class Provider(trace.TracerProvider):
    def get_tracer(self, *args, **kwargs):
        return Tracer()

async def main():
    trace.set_tracer_provider(Provider())
    settings = Settings(data_dir=sys.argv[1], create_admin=False, opentelemetry=sys.argv[2])
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/healthz")).status_code == 200
    print(" ".join(started))

asyncio.run(main())
"""


@pytest.mark.parametrize("enabled", [False, True])
def test_opentelemetry_spans_only_when_asked_for(tmp_path: Path, enabled: bool) -> None:
    probe = [sys.executable, "-c", _SPANS_OF_A_REQUEST, str(tmp_path), str(enabled)]
    spans = subprocess.run(probe, capture_output=True, text=True, timeout=120, check=True)
    if enabled:  # FastAPI's own spans, for the providers the process set up
        assert "GET" in spans.stdout.split(), spans.stdout
    else:
        assert spans.stdout.split() == []
