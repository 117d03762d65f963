"""Processes over real sockets: REST to start and drive them, /ws to watch them."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import struct
import time
import zipfile
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from PIL import Image
from websockets.asyncio.client import ClientConnection

from tests.conftest import (
    MS,
    TIMEOUT,
    ServerThread,
    TestUser,
    api,
    connected,
    create_project,
    eventually,
    recv,
    recv_until,
    send,
    subscribe,
    upload,
)
from tidings.db import Database, create_engine
from tidings.models import File, Process

MiB = 1024 * 1024


# -- helpers -----------------------------------------------------------------------------


async def upload_big(client: httpx.AsyncClient, project_id: str, name: str, mib: int) -> str:
    """Stream ``mib`` MiB of random bytes as one upload; returns the file id."""
    boundary = "tidings-test-boundary"
    chunk = os.urandom(MiB)

    async def body() -> AsyncIterator[bytes]:
        yield (
            f"--{boundary}\r\nContent-Disposition: form-data; name=file; "
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        for _ in range(mib):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    response = await client.post(
        f"/api/projects/{project_id}/files",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def start(
    client: httpx.AsyncClient, project_id: str, kind: str, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = await client.post(
        f"/api/projects/{project_id}/processes", json={"kind": kind, "params": params or {}}
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


def of(process_id: str, *types: str) -> Any:
    return lambda m: m.get("process_id") == process_id and m["type"] in types


async def until_completed(ws: ClientConnection, process_id: str) -> list[dict[str, Any]]:
    """Every event of the process up to and including its ``process.completed``."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 3 * TIMEOUT
    while True:
        message = await recv(ws, max(0.0, deadline - time.monotonic()))
        if message.get("process_id") == process_id:
            seen.append(message)
            if message["type"] == "process.completed":
                return seen


def result_dir(server: ServerThread, project_id: str, process_id: str) -> Any:
    return server.settings.results_dir / project_id / process_id


# -- the event sequence and the built-in kinds -------------------------------------------


async def test_export_events_in_order_and_zip_is_byte_identical(
    make_server: Any, alice_factory: Any
) -> None:
    server = make_server(progress_interval=20 * MS)
    alice = await alice_factory(server)
    async with api(server, alice) as client:
        project = await create_project(client)
        pid = project["id"]
        contents = {
            "readme.txt": b"hello tidings",
            "img/logo.png": os.urandom(3000),
            "img/deep/raw.bin": os.urandom(5 * MiB + 17),
        }
        for location, data in contents.items():
            folder, _, name = location.rpartition("/")
            response = await upload(client, pid, name, data, path="/" + folder)
            assert response.status_code == 201, response.text
        await upload_big(client, pid, "big.bin", 48)
        ws = await connected(server, alice)
        await subscribe(ws, pid)
        created = await start(client, pid, "export")
        assert created["status"] in ("queued", "running")
        assert created["progress"] == 0.0

        events = await until_completed(ws, created["id"])
        types = [e["type"] for e in events]
        assert types[0] == "process.started", types
        assert types[-1] == "process.completed", types
        assert set(types[1:-1]) == {"process.progress"}, types
        progress = [e["progress"] for e in events[1:-1]]
        assert len(progress) >= 2, progress  # at least one step before the final 1.0
        assert progress == sorted(progress) and progress[-1] == 1.0, progress
        assert all(p < 1.0 for p in progress[:-1])
        assert all(e["message"] for e in events[2:-1])
        assert events[0]["seq"] < events[-1]["seq"]
        assert "seq" not in events[1]
        done = events[-1]["process"]
        assert done["status"] == "succeeded" and done["progress"] == 1.0
        assert done["result"]["files"] == 4

        response = await client.get(f"/api/projects/{pid}/processes/{created['id']}/result")
        assert response.status_code == 200
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            assert archive.testzip() is None
            names = set(archive.namelist())
            assert names == {*contents, "big.bin"}
            for location, data in contents.items():
                assert archive.read(location) == data
            big = await client.get(f"/api/projects/{pid}/files")
            big_id = next(f["id"] for f in big.json()["items"] if f["name"] == "big.bin")
            on_disk = server.services.storage.file_path(pid, big_id).read_bytes()
            assert archive.read("big.bin") == on_disk
        await ws.close()


async def test_verify_finds_corrupted_and_missing_files(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient
) -> None:
    project = await create_project(alice_api)
    pid = project["id"]
    ids = {}
    for name in ("good.txt", "bad.txt", "gone.txt"):
        response = await upload(alice_api, pid, name, name.encode() * 1000)
        ids[name] = response.json()["id"]
    storage = server.services.storage
    path = storage.file_path(pid, ids["bad.txt"])
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # one flipped byte, same size
    path.write_bytes(bytes(data))
    storage.file_path(pid, ids["gone.txt"]).unlink()

    ws = await connected(server, alice)
    await subscribe(ws, pid)
    process = await start(alice_api, pid, "verify")
    done = (await until_completed(ws, process["id"]))[-1]["process"]
    assert done["status"] == "succeeded"
    result = done["result"]
    assert result["checked"] == 3 and result["ok"] == 1
    assert [m["id"] for m in result["mismatched"]] == [ids["bad.txt"]]
    assert result["mismatched"][0]["path"] == "bad.txt"
    assert [m["id"] for m in result["missing"]] == [ids["gone.txt"]]
    await ws.close()


async def test_thumbnails_for_image_assets(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient
) -> None:
    project = await create_project(alice_api)
    pid = project["id"]
    buffer = io.BytesIO()
    Image.new("RGB", (800, 400), (200, 30, 30)).save(buffer, format="PNG")
    image_id = await upload(alice_api, pid, "red.png", buffer.getvalue(), content_type="image/png")
    image_id = image_id.json()["id"]
    broken = await upload(alice_api, pid, "broken.jpg", b"not a jpeg", content_type="image/jpeg")
    await upload(alice_api, pid, "notes.txt", b"text is not an image")

    ws = await connected(server, alice)
    await subscribe(ws, pid)
    process = await start(alice_api, pid, "thumbnails", {"size": 128, "format": "webp"})
    done = (await until_completed(ws, process["id"]))[-1]["process"]
    assert done["status"] == "succeeded", done
    [thumb] = done["result"]["thumbnails"]
    assert thumb["id"] == image_id and (thumb["width"], thumb["height"]) == (128, 64)
    assert [s["id"] for s in done["result"]["skipped"]] == [broken.json()["id"]]
    base = f"/api/projects/{pid}/processes/{process['id']}"
    response = await alice_api.get(f"{base}/result/{thumb['thumbnail']}")
    assert response.status_code == 200
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == "WEBP" and image.size == (128, 64)
    assert (await alice_api.get(f"{base}/result")).status_code == 404  # no single artefact
    assert (await alice_api.get(f"{base}/result/other.webp")).status_code == 404
    await ws.close()


def png(width: int, height: int, rows: bytes | None = None) -> bytes:
    """A 1-bit grayscale PNG of ``width`` by ``height``; all black, or header and no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)
    data = zlib.compress(row * height, 9) if rows is None else rows
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


async def test_thumbnails_skip_bombs_and_formats_they_do_not_support(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    ppm = io.BytesIO()
    Image.new("RGB", (40, 20), (0, 90, 0)).save(ppm, format="PPM")
    files = {
        # 64 megapixels in 8 KiB: a valid image, decoded in full before the size check.
        "wide.png": png(8000, 8000),
        # A header claiming 10 gigapixels: Pillow's own bomb check refuses it.
        "bomb.png": png(100_000, 100_000, rows=b""),
        # A format thumbnails do not open, named and typed as a PNG.
        "fake.png": ppm.getvalue(),
        "fine.png": png(64, 32),
    }
    ids = {}
    for name, data in files.items():
        sent = await upload(alice_api, pid, name, data, content_type="image/png")
        assert sent.status_code == 201, sent.text
        ids[sent.json()["id"]] = name
    ws = await connected(server, alice)
    await subscribe(ws, pid)
    process = await start(alice_api, pid, "thumbnails", {"size": 64})
    done = (await until_completed(ws, process["id"]))[-1]["process"]
    assert done["status"] == "succeeded", done
    assert [ids[t["id"]] for t in done["result"]["thumbnails"]] == ["fine.png"]
    reasons = {ids[s["id"]]: s["reason"] for s in done["result"]["skipped"]}
    assert set(reasons) == {"wide.png", "bomb.png", "fake.png"}, reasons
    assert "8000x8000" in reasons["wide.png"]
    assert "decompression bomb" in reasons["bomb.png"].lower()
    assert "cannot identify" in reasons["fake.png"]
    await ws.close()


async def test_export_member_names_stay_inside_the_archive(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient
) -> None:
    """Rows stored before names were checked on upload (put here behind the API's back)
    still export as safe member names."""
    pid = (await create_project(alice_api))["id"]
    hostile = [
        ("/", "C:evil.txt"),
        ("/../../etc", "passwd"),
        ("/", "..\\..\\win.ini"),
        ("/a/./b", ".."),
        ("/x", "c:\\boot.ini"),
        ("/", "ok.txt"),
    ]
    db = Database(create_engine(server.settings.effective_database_url))
    try:
        async with db.write() as session:
            for index, (folder, name) in enumerate(hostile):
                file_id = f"{index:032x}"
                session.add(
                    File(
                        id=file_id,
                        project_id=pid,
                        name=name,
                        path=folder,
                        size=1,
                        content_type="text/plain",
                        asset_type="document",
                        sha256=hashlib.sha256(b"x").hexdigest(),
                    )
                )
                disk = server.settings.files_dir / pid / file_id
                disk.parent.mkdir(parents=True, exist_ok=True)
                disk.write_bytes(b"x")
    finally:
        await db.dispose()
    ws = await connected(server, alice)
    await subscribe(ws, pid)
    process = await start(alice_api, pid, "export")
    done = (await until_completed(ws, process["id"]))[-1]["process"]
    assert done["status"] == "succeeded", done
    response = await alice_api.get(f"/api/projects/{pid}/processes/{process['id']}/result")
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = archive.namelist()
    assert len(names) == len(hostile) == len(set(names))
    for name in names:
        parts = name.split("/")
        assert ":" not in name and "\\" not in name and not name.startswith("/"), name
        assert all(part not in ("", ".", "..") for part in parts), name
    assert "ok.txt" in names and "etc/passwd" in names
    await ws.close()


# -- cancel, queueing, deletion -----------------------------------------------------------


async def test_cancel_stops_work_and_removes_partial_output(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient
) -> None:
    project = await create_project(alice_api)
    pid = project["id"]
    await upload_big(alice_api, pid, "big.bin", 96)
    ws = await connected(server, alice)
    await subscribe(ws, pid)
    process = await start(alice_api, pid, "export", {"compression": "deflated"})
    base = f"/api/projects/{pid}/processes/{process['id']}"
    await recv_until(ws, of(process["id"], "process.started"))
    partial = result_dir(server, pid, process["id"]) / "export.zip.part"
    await eventually(partial.exists)  # the worker has begun writing

    response = await alice_api.delete(base)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    events = await until_completed(ws, process["id"])
    completed = events[-1]
    assert completed["process"]["status"] == "cancelled"
    assert all(e.get("progress", 0.0) < 1.0 for e in events)
    assert not result_dir(server, pid, process["id"]).exists()
    assert (await alice_api.get(f"{base}/result")).status_code == 409
    assert (await alice_api.delete(base)).status_code == 409  # already finished
    await ws.close()


async def test_bounded_concurrency_queues_and_cancels_queued(
    make_server: Any, alice_factory: Any
) -> None:
    server = make_server(max_concurrent_processes=1)
    alice = await alice_factory(server)
    async with api(server, alice) as client:
        pid = (await create_project(client))["id"]
        await upload_big(client, pid, "big.bin", 64)
        ws = await connected(server, alice)
        await subscribe(ws, pid)
        first = await start(client, pid, "export", {"compression": "deflated"})
        await recv_until(ws, of(first["id"], "process.started"))
        second = await start(client, pid, "verify")
        third = await start(client, pid, "verify")
        base = f"/api/projects/{pid}/processes"
        assert (await client.get(f"{base}/{second['id']}")).json()["status"] == "queued"
        listed = (await client.get(base, params={"status": "queued"})).json()
        assert {p["id"] for p in listed["items"]} == {second["id"], third["id"]}

        cancelled = await client.delete(f"{base}/{second['id']}")
        assert cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["started_at"] is None
        # The first keeps the only slot; the third runs after it; the second never starts.
        order = []
        while len(order) < 4:
            message = await recv_until(ws, lambda m: m["type"] != "process.progress")
            order.append((message["type"], message["process_id"]))
        assert order == [
            ("process.completed", second["id"]),
            ("process.completed", first["id"]),
            ("process.started", third["id"]),
            ("process.completed", third["id"]),
        ]
        await ws.close()


async def test_deleting_project_stops_work_and_removes_outputs(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    await upload_big(alice_api, pid, "big.bin", 64)
    ws = await connected(server, alice)
    await subscribe(ws, pid)
    done = await start(alice_api, pid, "export")
    await until_completed(ws, done["id"])
    running = await start(alice_api, pid, "export", {"compression": "deflated"})
    await recv_until(ws, of(running["id"], "process.started"))
    assert (server.settings.results_dir / pid).exists()
    assert (await alice_api.delete(f"/api/projects/{pid}")).status_code == 204
    await recv_until(ws, lambda m: m["type"] == "project.deleted")
    # The outputs go once the work has stopped.
    await eventually(lambda: not (server.settings.results_dir / pid).exists())
    assert server.services.processes.active_count == 0
    await ws.close()


# -- external processes -------------------------------------------------------------------


async def test_external_process_driven_by_a_token(make_server: Any, alice_factory: Any) -> None:
    interval = 200 * MS
    server = make_server(progress_interval=interval)
    alice = await alice_factory(server)
    # The worker is another service: its own token, same user here.
    async with api(server, alice) as client:
        pid = (await create_project(client))["id"]
        ws = await connected(server, alice)
        await subscribe(ws, pid)
        process = await start(client, pid, "external", {"label": "transcode"})
        assert process["status"] == "running"
        started = await recv_until(ws, of(process["id"], "process.started"))
        assert started["process"]["params"] == {"label": "transcode"}
        base = f"/api/projects/{pid}/processes/{process['id']}"

        # A burst of reports is throttled to one event per interval, keeping the newest.
        began = time.monotonic()
        for step in range(1, 11):
            response = await client.post(
                f"{base}/progress", json={"progress": step / 20, "message": f"step {step}"}
            )
            assert response.status_code == 204, response.text
        elapsed = time.monotonic() - began
        seen = []
        while not seen or seen[-1]["progress"] != 0.5:
            seen.append(await recv_until(ws, of(process["id"], "process.progress")))
        assert seen[-1]["message"] == "step 10"
        assert len(seen) <= 2 + elapsed / interval, seen
        assert (await client.get(base)).json()["progress"] == 0.5

        bad = await client.post(f"{base}/progress", json={"progress": 1.5})
        assert bad.status_code == 409
        bad = await client.post(f"{base}/progress", json={"progress": -0.1})
        assert bad.status_code == 409
        bad = await client.post(f"{base}/progress", json={"progress": "lots"})
        assert bad.status_code == 422

        response = await client.post(
            f"{base}/complete", json={"status": "succeeded", "result": {"url": "s3://x"}}
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "succeeded"
        final = await recv_until(ws, of(process["id"], "process.progress", "process.completed"))
        assert final["type"] == "process.progress" and final["progress"] == 1.0
        completed = await recv_until(ws, of(process["id"], "process.completed"))
        assert completed["process"]["result"] == {"url": "s3://x"}
        assert completed["seq"] == started["seq"] + 1

        late = await client.post(f"{base}/progress", json={"progress": 0.9})
        assert late.status_code == 409
        again = await client.post(f"{base}/complete", json={"status": "failed", "error": "x"})
        assert again.status_code == 409

        failing = await start(client, pid, "external")
        response = await client.post(
            f"/api/projects/{pid}/processes/{failing['id']}/complete",
            json={"status": "failed", "error": "encoder crashed"},
        )
        assert response.json()["status"] == "failed"
        assert response.json()["error"] == "encoder crashed"

        cancelled = await start(client, pid, "external")
        response = await client.delete(f"/api/projects/{pid}/processes/{cancelled['id']}")
        assert response.json()["status"] == "cancelled"
        event = await recv_until(ws, of(cancelled["id"], "process.completed"))
        assert event["process"]["status"] == "cancelled"
        await ws.close()


async def test_reports_only_for_external_processes(
    server: ServerThread, alice_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    process = await start(alice_api, pid, "verify")
    base = f"/api/projects/{pid}/processes/{process['id']}"
    assert (await alice_api.post(f"{base}/progress", json={"progress": 0.5})).status_code == 409
    response = await alice_api.post(f"{base}/complete", json={"status": "succeeded"})
    assert response.status_code == 409


# -- bad input and access -----------------------------------------------------------------


async def test_bad_input_and_foreign_projects(
    server: ServerThread, alice_api: httpx.AsyncClient, bob_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    url = f"/api/projects/{pid}/processes"
    for body in (
        {"kind": "mine-bitcoin"},
        {"kind": "export", "params": {"compression": "zstd"}},
        {"kind": "export", "params": {"unknown": 1}},
        {"kind": "export", "params": {"path": "/a/../../etc"}},
        {"kind": "thumbnails", "params": {"size": 5000}},
        {"kind": "external", "params": {"blob": "x" * 20_000}},
        {"params": {}},
        {"kind": "verify", "extra": True},
    ):
        response = await alice_api.post(url, json=body)
        assert response.status_code == 422, (body, response.text)
    assert (await alice_api.post(url, json={"kind": "mine-bitcoin"})).json()["detail"][0][
        "loc"
    ] == ["body", "kind"]

    process = await start(alice_api, pid, "external")
    base = f"{url}/{process['id']}"
    assert (await bob_api.post(url, json={"kind": "verify"})).status_code == 404
    assert (await bob_api.get(url)).status_code == 404
    assert (await bob_api.get(base)).status_code == 404
    assert (await bob_api.delete(base)).status_code == 404
    assert (await bob_api.post(f"{base}/progress", json={"progress": 0.1})).status_code == 404
    response = await bob_api.post(f"{base}/complete", json={"status": "succeeded"})
    assert response.status_code == 404
    other = (await create_project(bob_api))["id"]
    # A process id under the wrong project is not found either.
    assert (
        await bob_api.get(f"/api/projects/{other}/processes/{process['id']}")
    ).status_code == 404
    assert (await alice_api.get(f"{url}/nope")).status_code == 404


# -- restarts -----------------------------------------------------------------------------


async def test_running_process_is_interrupted_by_a_restart(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    await upload_big(alice_api, pid, "big.bin", 96)
    ws = await connected(server, alice)
    await subscribe(ws, pid)
    process = await start(alice_api, pid, "export", {"compression": "deflated"})
    started = await recv_until(ws, of(process["id"], "process.started"))
    await ws.close()

    await asyncio.to_thread(server.stop)
    await asyncio.to_thread(server.start)

    base = f"/api/projects/{pid}/processes/{process['id']}"
    async with api(server, alice) as client:
        state = (await client.get(base)).json()
        assert state["status"] == "failed" and state["error"] == "interrupted"
        ws = await connected(server, alice)
        reply = await subscribe(ws, pid, since=started["seq"])
        assert reply["recovered"] is True
        completed = await recv_until(ws, of(process["id"], "process.completed"))
        assert completed["seq"] == started["seq"] + 1
        assert completed["process"]["error"] == "interrupted"
        assert not result_dir(server, pid, process["id"]).exists()
        await ws.close()


async def test_processes_of_a_dead_node_are_failed_on_start(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient
) -> None:
    """A crash leaves rows ``running``/``queued`` with a lease nobody renews."""
    pid = (await create_project(alice_api))["id"]
    external = await start(alice_api, pid, "external")
    await asyncio.to_thread(server.stop)
    stale = datetime.now(UTC) - timedelta(seconds=server.settings.process_lease + 1)
    db = Database(create_engine(server.settings.effective_database_url))
    try:
        async with db.write() as session:
            for status in ("running", "queued"):
                session.add(
                    Process(
                        id=f"crashed{status}",
                        project_id=pid,
                        kind="export",
                        params={},
                        status=status,
                        progress=0.3,
                        message="",
                        created_by=alice.id,
                        created_at=stale,
                        heartbeat_at=stale,
                        attempts=1,
                    )
                )
            session.add(
                Process(
                    id="preleasedrow",
                    project_id=pid,
                    kind="verify",
                    params={},
                    status="running",
                    progress=0.0,
                    message="",
                    created_by=alice.id,
                    heartbeat_at=None,
                    attempts=1,
                )
            )
    finally:
        await db.dispose()
    await asyncio.to_thread(server.start)

    async with api(server, alice) as client:
        ws = await connected(server, alice)
        await subscribe(ws, pid, since=0)
        interrupted = set()
        while len(interrupted) < 3:
            event = await recv_until(ws, lambda m: m["type"] == "process.completed")
            assert event["process"]["status"] == "failed"
            assert event["process"]["error"] == "interrupted"
            interrupted.add(event["process_id"])
        assert interrupted == {"crashedrunning", "crashedqueued", "preleasedrow"}
        # An external process's worker lives elsewhere: a restart does not end it.
        state = (await client.get(f"/api/projects/{pid}/processes/{external['id']}")).json()
        assert state["status"] == "running"
        await ws.close()


# -- the event loop stays free --------------------------------------------------------------


async def test_ping_answered_promptly_during_a_large_export(
    make_server: Any, alice_factory: Any
) -> None:
    server = make_server(max_upload_bytes=512 * MiB)
    alice = await alice_factory(server)
    async with api(server, alice) as client:
        pid = (await create_project(client))["id"]
        for index in range(3):
            await upload_big(client, pid, f"part{index}.bin", 100)
        ws = await connected(server, alice)
        await subscribe(ws, pid)
        worst = 0.0
        pings = 0
        # A fast disk can finish an export within a few pings: export again
        # until enough pings were answered while one ran.
        for _ in range(20):
            process = await start(client, pid, "export")
            await recv_until(ws, of(process["id"], "process.started"))
            finished = False
            while not finished:
                sent = time.monotonic()
                await send(ws, {"type": "ping", "id": pings})
                while True:
                    message = await recv(ws)
                    if message.get("process_id") == process["id"]:
                        finished = finished or message["type"] == "process.completed"
                    elif message["type"] == "pong":
                        break
                    assert message["type"] != "error", message
                worst = max(worst, time.monotonic() - sent)
                pings += 1
                await asyncio.sleep(60 * MS)  # within the per-connection message rate limit
            if pings >= 5:
                break
        assert worst < 100 * MS, f"a ping took {worst * 1000:.0f} ms"
        assert pings >= 5, "twenty exports ended too soon to measure anything"
        state = (await client.get(f"/api/projects/{pid}/processes/{process['id']}")).json()
        assert state["status"] == "succeeded" and state["result"]["files"] == 3
        await ws.close()


@pytest.fixture
def alice_factory() -> Any:
    """Create alice on a server built by ``make_server``."""
    from tests.conftest import create_user

    async def make(server: ServerThread) -> TestUser:
        return await create_user(server.settings, "alice")

    return make
