"""/ws against a client that is not Python: Node's npm ``ws`` package (pinned in bench/node)
over a real socket, through tidings' transport under uvicorn."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    IN_CI,
    TIMEOUT,
    ServerThread,
    TestUser,
    create_project,
    eventually,
    upload,
)

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "bench" / "node" / "node_modules"
SCRIPT = Path(__file__).resolve().parent / "node" / "subscribe.js"


def node() -> str:
    """The node executable, with the pinned ``ws`` installed; skip (fail under CI) if not."""
    executable = shutil.which("node")
    reason = None
    if executable is None:
        reason = "node is not installed"
    elif not (NODE_MODULES / "ws").is_dir():
        reason = "bench/node's packages are not installed (make bench/node/node_modules)"
    if reason is None:
        assert executable is not None
        return executable
    if IN_CI:
        pytest.fail(f"{reason} (CI=true requires it)")
    pytest.skip(reason)


async def test_node_ws_client_subscribes_and_receives_an_event(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient
) -> None:
    project = await create_project(alice_api)
    proc = await asyncio.create_subprocess_exec(
        node(),
        str(SCRIPT),
        server.ws_url,
        alice.token,
        project["id"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            line = await proc.stdout.readline()
            assert line == b"ready\n", line + await proc.stderr.read()
            assert (await upload(alice_api, project["id"], "from-rest.txt")).status_code == 201
            event = json.loads(await proc.stdout.readline())
            assert (event["type"], event["seq"]) == ("file.uploaded", 2)
            assert event["file"]["name"] == "from-rest.txt"
            assert await proc.stdout.readline() == b"closed 1000\n"
            assert await proc.wait() == 0, await proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    await eventually(lambda: not server.services.hub.connections)
