"""What keeps processes in bounds: worker tokens good for one process only, a cap on
active processes per project, results that expire, external workers that time out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from tests.conftest import (
    MS,
    TIMEOUT,
    ServerThread,
    TestUser,
    api,
    closed_with,
    connected,
    create_project,
    create_user,
    db_scalars,
    recv_until,
    subscribe,
    upload,
    ws_connect,
)
from tidings.models import Event, Process
from tidings.security import hash_secret


async def start(client: httpx.AsyncClient, pid: str, kind: str, **params: Any) -> dict[str, Any]:
    response = await client.post(
        f"/api/projects/{pid}/processes", json={"kind": kind, "params": params}
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


def worker(server: ServerThread, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.url, timeout=TIMEOUT, headers={"Authorization": f"Bearer {token}"}
    )


async def until(check: Callable[[], Any], timeout: float = TIMEOUT) -> None:
    """Poll a REST condition (no event announces it) until it holds."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


# -- worker tokens -----------------------------------------------------------------------


async def test_a_worker_token_drives_its_own_process_and_nothing_else(
    server: ServerThread, alice: TestUser, bob: TestUser
) -> None:
    carol = await create_user(server.settings, "carol")
    async with api(server, alice) as client:
        pid = (await create_project(client))["id"]
        await client.post(f"/api/projects/{pid}/members", json={"username": "bob"})
        ws = await connected(server, alice)
        await subscribe(ws, pid)
        process = await start(client, pid, "external", label="transcode")
        token = process["worker_token"]
        assert token.startswith("tdw_")
        other = await start(client, pid, "external")
        assert other["worker_token"] != token
        assert (await start(client, pid, "verify"))["worker_token"] is None
        listed = (await client.get(f"/api/projects/{pid}/processes/{process['id']}")).json()
        assert "worker_token" not in listed  # shown once, at creation
        base = f"/api/projects/{pid}/processes/{process['id']}"

        async with worker(server, token) as w:
            reported = await w.post(f"{base}/progress", json={"progress": 0.3, "message": "1/3"})
            assert reported.status_code == 204, reported.text
            event = await recv_until(
                ws, lambda m: m["type"] == "process.progress" and m["process_id"] == process["id"]
            )
            assert event["progress"] == 0.3
            # Good for nothing else: not even reading its own process.
            for method, path in [
                ("GET", base),
                ("DELETE", base),
                ("GET", f"/api/projects/{pid}/processes"),
                ("GET", f"/api/projects/{pid}"),
                ("GET", "/api/projects"),
                ("POST", "/api/projects"),
                ("GET", "/api/auth/me"),
                ("POST", "/api/auth/tokens"),
                ("GET", f"/api/projects/{pid}/files"),
                ("POST", f"/api/projects/{pid}/processes/{other['id']}/progress"),
                ("POST", f"/api/projects/{pid}/processes/{other['id']}/complete"),
            ]:
                body = {"progress": 0.5} if path.endswith("progress") else {}
                if path.endswith("complete"):
                    body = {"status": "succeeded"}
                response = await w.request(method, path, json=body)
                assert response.status_code == 401, (method, path, response.text)
        socket = await ws_connect(server, additional_headers={"Authorization": f"Bearer {token}"})
        assert await closed_with(socket) == 4401

        # Another member is not the worker: 403. Someone who cannot see it: 404.
        async with api(server, bob) as b:
            assert (await b.post(f"{base}/progress", json={"progress": 0.4})).status_code == 403
            done = await b.post(f"{base}/complete", json={"status": "succeeded"})
            assert done.status_code == 403
        async with api(server, carol) as c:
            assert (await c.post(f"{base}/progress", json={"progress": 0.4})).status_code == 404
        # The user who started it may report too.
        assert (await client.post(f"{base}/progress", json={"progress": 0.5})).status_code == 204

        async with worker(server, token) as w:
            completed = await w.post(
                f"{base}/complete", json={"status": "succeeded", "result": {"frames": 3}}
            )
            assert completed.status_code == 200, completed.text
            assert completed.json()["status"] == "succeeded"
            # The token died with its process.
            late = await w.post(f"{base}/progress", json={"progress": 0.9})
            assert late.status_code == 401

        # Cancelled: its token dies too.
        await client.delete(f"/api/projects/{pid}/processes/{other['id']}")
        async with worker(server, other["worker_token"]) as w:
            response = await w.post(
                f"/api/projects/{pid}/processes/{other['id']}/progress", json={"progress": 0.1}
            )
            assert response.status_code == 401

    # Only the SHA-256 is stored.
    rows = await db_scalars(server.settings, select(Process).where(Process.id == process["id"]))
    assert rows[0].worker_token_hash == hash_secret(token)
    stored = orjson.dumps({c.key: str(getattr(rows[0], c.key)) for c in Process.__mapper__.attrs})
    assert token.encode() not in stored


# -- at most so many active processes per project ----------------------------------------


async def test_active_processes_per_project_are_capped(
    server: ServerThread, alice: TestUser
) -> None:
    limit = server.settings.max_active_processes
    assert limit == 10  # the default
    async with api(server, alice) as client:
        pid = (await create_project(client))["id"]
        url = f"/api/projects/{pid}/processes"
        # All at once: the count is taken under the project's lock, so no race lets an
        # eleventh through.
        responses = await asyncio.gather(
            *(client.post(url, json={"kind": "external"}) for _ in range(limit + 5))
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [202] * limit + [429] * 5, statuses
        busy = next(r for r in responses if r.status_code == 429)
        assert int(busy.headers["retry-after"]) > 0
        assert "at most 10" in busy.json()["detail"]
        listed = (await client.get(url, params={"status": "running"})).json()
        assert listed["total"] == limit

        # Other projects have their own budget; a finished process frees a place.
        other = (await create_project(client, "other"))["id"]
        await start(client, other, "external")
        first = next(r.json() for r in responses if r.status_code == 202)
        await client.post(f"{url}/{first['id']}/complete", json={"status": "failed"})
        await start(client, pid, "external")
        assert (await client.post(url, json={"kind": "verify"})).status_code == 429


# -- results expire ----------------------------------------------------------------------


async def exported(
    server: ServerThread, user: Any, client: httpx.AsyncClient
) -> tuple[str, dict[str, Any]]:
    """A project with one file and an export of it that succeeded: its id and the
    export's process."""
    pid = (await create_project(client))["id"]
    assert (await upload(client, pid, "a.txt", b"hello")).status_code == 201
    ws = await connected(server, user)
    await subscribe(ws, pid)
    export = await start(client, pid, "export")
    done = await recv_until(
        ws, lambda m: m["type"] == "process.completed" and m["process_id"] == export["id"]
    )
    assert done["process"]["status"] == "succeeded"
    await ws.close()
    return pid, export


async def test_results_expire_on_every_node_once(
    make_server: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    """Two nodes sweep the same database: results go (files and the ``result`` field),
    the rows stay, and the result answers 410."""
    retention = 4000 * MS  # long enough to see the result first on a loaded machine
    a = make_server(result_retention=retention, sweep_interval=0.05)
    make_server(result_retention=retention, sweep_interval=0.05)  # a second node, sweeping
    alice = await create_user(a.settings, "alice")
    async with api(a, alice) as client:
        pid, export = await exported(a, alice, client)
        result = f"/api/projects/{pid}/processes/{export['id']}/result"
        assert (await client.get(result)).status_code == 200  # kept until the retention ends
        externals = []
        for i in range(5):
            process = await start(client, pid, "external")
            base = f"/api/projects/{pid}/processes/{process['id']}"
            await client.post(f"{base}/complete", json={"status": "succeeded", "result": {"n": i}})
            externals.append(base)
        out_dir = a.settings.results_dir / pid / export["id"]
        assert out_dir.is_dir()

        async def gone() -> bool:
            return (await client.get(result)).status_code == 410

        await until(gone)
        expired = await client.get(result)
        assert "retention" in expired.json()["detail"].lower()
        assert not out_dir.exists()
        for base in [f"/api/projects/{pid}/processes/{export['id']}", *externals]:

            async def cleared(base: str = base) -> bool:
                return (await client.get(base)).json()["result"] is None

            await until(cleared)
            state = (await client.get(base)).json()
            assert state["status"] == "succeeded"  # the row stays
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- external processes time out ---------------------------------------------------------


async def test_a_silent_external_process_times_out(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server(external_timeout=1500 * MS, sweep_interval=0.05)
    alice = await create_user(server.settings, "alice")
    async with api(server, alice) as client:
        pid = (await create_project(client))["id"]
        ws = await connected(server, alice)
        await subscribe(ws, pid)
        silent = await start(client, pid, "external")
        chatty = await start(client, pid, "external")
        chatty_url = f"/api/projects/{pid}/processes/{chatty['id']}"

        async def keep_reporting() -> None:
            async with worker(server, chatty["worker_token"]) as w:
                for step in range(1000):
                    await w.post(f"{chatty_url}/progress", json={"progress": step / 1000})
                    await asyncio.sleep(50 * MS)

        reporter = asyncio.create_task(keep_reporting())
        try:
            ended = await recv_until(
                ws, lambda m: m["type"] == "process.completed" and m["process_id"] == silent["id"]
            )
            # A worker that keeps reporting keeps its process alive.
            assert (await client.get(chatty_url)).json()["status"] == "running"
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        assert ended["process"]["status"] == "failed"
        assert ended["process"]["error"] == "timeout"
        async with worker(server, silent["worker_token"]) as w:
            response = await w.post(
                f"/api/projects/{pid}/processes/{silent['id']}/progress", json={"progress": 0.1}
            )
            assert response.status_code == 401


async def test_two_nodes_time_out_each_process_exactly_once(
    make_server: Callable[..., ServerThread],
) -> None:
    a = make_server(external_timeout=0.2, sweep_interval=0.02)
    make_server(external_timeout=0.2, sweep_interval=0.02)  # a second node, sweeping
    alice = await create_user(a.settings, "alice")
    async with api(a, alice) as client:
        pid = (await create_project(client))["id"]
        ids = [(await start(client, pid, "external"))["id"] for _ in range(8)]

        async def all_failed() -> bool:
            listed = (await client.get(f"/api/projects/{pid}/processes")).json()["items"]
            return all(p["status"] == "failed" for p in listed)

        await until(all_failed)
        # Both nodes go on sweeping; give them a few more passes to double anything.
        await asyncio.sleep(0.2)
    frames = await db_scalars(
        a.settings, select(Event.frame).where(Event.type == "process.completed")
    )
    completed = [orjson.loads(f)["process_id"] for f in frames]
    assert sorted(completed) == sorted(ids)  # each once
    assert all(orjson.loads(f)["process"]["error"] == "timeout" for f in frames)


async def test_a_result_removed_while_it_is_being_sent_is_sent_whole(
    make_server: Callable[..., ServerThread],
) -> None:
    """Found by CI (a flaky run of the test above): a sweep on another node removed the
    export while a download of it had sent its headers, and the body broke off (the file
    was opened only then). Now the file is open before the answer starts."""
    from shutil import rmtree

    from tidings.api.processes import _serve

    a = make_server()
    alice = await create_user(a.settings, "alice")
    async with api(a, alice) as client:
        pid, export = await exported(a, alice, client)
        whole = (await client.get(f"/api/projects/{pid}/processes/{export['id']}/result")).content
        process = Process(id=export["id"], project_id=pid, status="succeeded")  # as read
        response = _serve(a.services, process, "export.zip")  # the answer, not yet sent
        rmtree(a.settings.results_dir / pid / export["id"])  # the sweep, meanwhile
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            await asyncio.sleep(3600)
            return {}

        await response({"type": "http", "method": "GET", "headers": []}, receive, send)
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        assert body == whole and int(dict(sent[0]["headers"])[b"content-length"]) == len(whole)
