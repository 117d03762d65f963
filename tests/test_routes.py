"""What every request pays for before its own work."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import httpx
import pytest

from tests.conftest import create_project, upload


async def test_the_frequent_requests_make_no_worker_thread_trip(
    alice_api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI runs a plain-function endpoint or dependency in a worker thread (through
    ``anyio.to_thread``): a trip there and back on every request that uses it, which cost
    the frequent writes a quarter of their throughput when the ``App`` dependency was
    one."""
    project = await create_project(alice_api)
    base = f"/api/projects/{project['id']}"
    trips: list[object] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(func)
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    assert (await alice_api.patch(base, json={"description": "x"})).status_code == 200
    event = {"type": "custom.note", "data": {}}
    assert (await alice_api.post(f"{base}/events", json=event)).status_code == 201
    await upload(alice_api, project["id"], "a.txt", b"a")
    for path in (base, f"{base}/files", f"{base}/events", "/api/projects", "/api/auth/me"):
        assert (await alice_api.get(path)).status_code == 200
    assert trips == []
