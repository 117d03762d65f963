from __future__ import annotations

import httpx

from tests.conftest import ServerThread, connected, create_project, recv_until, subscribe, upload


async def test_health(server: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).json() == {"status": "ok"}


async def test_upload_event(server, alice, alice_api, backend) -> None:
    project = await create_project(alice_api)
    ws = await connected(server, alice)
    reply = await subscribe(ws, project["id"])
    assert reply["seq"] == 1
    response = await upload(alice_api, project["id"])
    assert response.status_code == 201
    event = await recv_until(ws, lambda m: m["type"] == "file.uploaded")
    assert event["seq"] == 2
    await ws.close()
