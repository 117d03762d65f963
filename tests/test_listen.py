"""tidings.listen: the lines it prints, and the listener against a real server.

``tidings listen`` as a subprocess across a server restart is in ``test_cli.py``.
"""

from __future__ import annotations

import asyncio
import io
import socket
from typing import Any

import httpx
import pytest

from tests.conftest import ServerThread, TestUser, create_project, eventually, upload
from tidings.client import Backoff
from tidings.listen import describe, listen, notice
from tidings.schema import parse_server_message

T = "2026-11-25T16:30:00.000Z"
FILE = {"id": "f1", "name": "scene.glb", "path": "/assets", "size": 2048, "asset_type": "model"}
PROCESS = {
    "id": "p9", "project_id": "c1", "kind": "export", "params": {}, "status": "failed",
    "progress": 0.4, "message": "", "result": None, "error": "disk full", "created_by": "u",
    "created_at": T, "started_at": T, "finished_at": T,
}  # fmt: skip
PROJECT = {
    "id": "c1", "name": "Launch", "description": "", "owner": "alice", "created_at": T,
    "updated_at": T, "seq": 1,
}  # fmt: skip


@pytest.mark.parametrize(
    ("message", "line"),
    [
        (
            {"type": "file.uploaded", "project_id": "c1", "seq": 3, "timestamp": T, "file": FILE},
            f"{T}  #3  file.uploaded  /assets/scene.glb (2048 bytes, model)",
        ),
        (
            {"type": "file.deleted", "project_id": "c1", "seq": 4, "timestamp": T,
             "file": {**FILE, "path": "/"}},
            f"{T}  #4  file.deleted  /scene.glb (2048 bytes, model)",
        ),
        (
            {"type": "project.updated", "project_id": "c1", "seq": 2, "timestamp": T,
             "data": PROJECT},
            f"{T}  #2  project.updated  'Launch'",
        ),
        (
            {"type": "process.completed", "project_id": "c1", "seq": 6, "timestamp": T,
             "process_id": "p9", "process": PROCESS},
            f"{T}  #6  process.completed  export p9 failed: disk full",
        ),
        (
            {"type": "process.progress", "project_id": "c1", "timestamp": T,
             "process_id": "p9", "progress": 0.421, "message": "zipping"},
            f"{T}  -  process.progress  p9 42% zipping",
        ),
        (
            {"type": "custom.note", "project_id": "c1", "seq": 7, "timestamp": T, "text": "hi"},
            f'{T}  #7  custom.note  {{"project_id":"c1","seq":7,"text":"hi"}}',
        ),
    ],
)  # fmt: skip
def test_describe(message: dict[str, Any], line: str) -> None:
    assert describe(parse_server_message(message)) == line


@pytest.mark.parametrize(
    ("message", "line"),
    [
        (
            {"type": "connection.established", "client_id": "x", "heartbeat_interval": 30,
             "protocol": 1, "expires_at": None, "timestamp": T,
             "user": {"id": "u", "username": "alice"}},
            "connected as alice",
        ),
        (
            {"type": "subscribed", "project_id": "c1", "seq": 5, "timestamp": T},
            "following c1 (latest seq 5)",
        ),
        (
            {"type": "subscribed", "project_id": "c1", "seq": 5, "recovered": True,
             "timestamp": T},
            "resumed c1 (latest seq 5)",
        ),
        (
            {"type": "subscribed", "project_id": "c1", "seq": 5, "recovered": False,
             "timestamp": T},
            "events of c1 were lost to retention; carrying on from seq 5 (refetch the project)",
        ),
        (
            {"type": "unsubscribed", "project_id": "c1", "reason": "access_revoked",
             "timestamp": T},
            "no longer following c1: access_revoked",
        ),
        (
            {"type": "error", "code": "internal", "message": "retry", "timestamp": T},
            "error internal: retry",
        ),
        ({"type": "file.uploaded", "project_id": "c1", "seq": 3, "timestamp": T,
          "file": FILE}, None),
    ],
)  # fmt: skip
def test_notice(message: dict[str, Any], line: str | None) -> None:
    assert notice(parse_server_message(message), "c1") == line


async def test_listen_prints_after_since_and_ends_with_the_project(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api, "Launch"))["id"]
    other = (await create_project(alice_api, "Other"))["id"]
    for name in ("a.txt", "b.txt"):
        assert (await upload(alice_api, pid, name)).status_code == 201
    out, err = io.StringIO(), io.StringIO()
    task = asyncio.create_task(listen(server.url, alice.token, pid, 2, out=out, err=err))
    await eventually(lambda: "b.txt" in out.getvalue())
    assert (await alice_api.patch(f"/api/projects/{other}", json={"name": "x"})).is_success
    assert (await alice_api.delete(f"/api/projects/{pid}")).status_code == 204
    assert await asyncio.wait_for(task, 10) == 0
    lines = [line.split("  ")[1:3] for line in out.getvalue().splitlines()]
    # Only this project's events, from seq 3 on; another project's news are not printed.
    assert lines == [["#3", "file.uploaded"], ["#4", "project.deleted"]]
    assert err.getvalue().splitlines() == [
        "tidings: connected as alice",
        f"tidings: resumed {pid} (latest seq 3)",
    ]


async def test_listen_refusals(server: ServerThread, alice: TestUser) -> None:
    async def run(url: str, token: str, project: str) -> tuple[int, str]:
        err = io.StringIO()
        code = await listen(url, token, project, out=io.StringIO(), err=err, backoff=Backoff())
        return code, err.getvalue()

    code, err = await run(server.url, alice.token, "no-such-project")
    assert code == 1 and "cannot follow no-such-project: not_found" in err
    code, err = await run(server.url, "tdg_wrong", "p")
    assert code == 1 and "refused the token" in err
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        code, err = await run(f"http://127.0.0.1:{port}", alice.token, "p")
    assert code == 1 and "cannot connect to ws://127.0.0.1" in err
    assert alice.token not in err
