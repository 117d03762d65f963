"""``/api/projects/{id}/files``: streamed upload and download, listing, deletion, bad input."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import (
    TIMEOUT,
    ServerThread,
    TestUser,
    api,
    create_project,
    create_user,
    db_scalars,
    eventually,
    stored_files,
    upload,
)
from tidings.models import Event, File

BOUNDARY = "tidings-test-boundary"


def multipart(*parts: tuple[str, str | None, bytes], boundary: str = BOUNDARY) -> bytes:
    """A multipart/form-data body built by hand, so names reach the server byte for byte."""
    out = b""
    for field, filename, data in parts:
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


async def post_raw(client: httpx.AsyncClient, project_id: str, body: bytes) -> httpx.Response:
    return await client.post(
        f"/api/projects/{project_id}/files",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )


async def file_rows(server: ServerThread) -> list[Any]:
    return await db_scalars(server.settings, select(File.name))


async def assert_nothing_stored(server: ServerThread, client: httpx.AsyncClient, pid: str) -> None:
    assert stored_files(server.settings) == []
    assert await file_rows(server) == []
    listing = (await client.get(f"/api/projects/{pid}/files")).json()
    assert listing == {"items": [], "total": 0, "next_offset": None}
    seqs = await db_scalars(server.settings, select(Event.seq).where(Event.project_id == pid))
    assert seqs == [1]  # only project.created: a failed upload logs no event


# -- success paths -----------------------------------------------------------------------


async def test_upload_and_read_back(server: ServerThread, alice_api: httpx.AsyncClient) -> None:
    pid = (await create_project(alice_api))["id"]
    content = b"hello, tidings\n"
    response = await upload(alice_api, pid, "notes.txt", content)
    assert response.status_code == 201, response.text
    file = response.json()
    assert set(file) == {
        "id",
        "name",
        "path",
        "size",
        "asset_type",
        "content_type",
        "sha256",
        "created_at",
        "seq",  # of its file.uploaded (read-your-writes)
    }
    assert file.pop("seq") == 2 == int(response.headers["tidings-seq"])
    assert file["name"] == "notes.txt"
    assert file["path"] == "/"
    assert file["size"] == len(content)
    assert file["sha256"] == hashlib.sha256(content).hexdigest()
    assert file["content_type"] == "text/plain"
    assert file["asset_type"] == "document"

    assert (await alice_api.get(f"/api/projects/{pid}/files/{file['id']}")).json() == file
    # Stored under its id: the user's name never reaches the file system.
    assert stored_files(server.settings) == [server.settings.files_dir / pid / file["id"]]
    download = await alice_api.get(f"/api/projects/{pid}/files/{file['id']}/content")
    assert download.status_code == 200
    assert download.content == content
    assert download.headers["content-type"].startswith("text/plain")
    assert download.headers["x-content-sha256"] == file["sha256"]
    assert 'filename="notes.txt"' in download.headers["content-disposition"]


@pytest.mark.parametrize(
    ("name", "ctype", "asset"),
    [
        ("photo.JPG", "image/jpeg", "image"),
        ("clip.mp4", "application/octet-stream", "video"),
        ("song.flac", "", "audio"),
        ("scene.glb", "application/octet-stream", "model"),
        ("bundle.zip", "application/zip", "archive"),
        ("report.pdf", "application/pdf", "document"),
        ("blob.bin", "application/octet-stream", "other"),
    ],
)
async def test_asset_type_of_uploads(
    alice_api: httpx.AsyncClient, name: str, ctype: str, asset: str
) -> None:
    pid = (await create_project(alice_api))["id"]
    response = await upload(alice_api, pid, name, b"\x00\x01", content_type=ctype)
    assert response.status_code == 201, response.text
    assert response.json()["asset_type"] == asset


async def test_download_is_byte_identical_and_streamed(
    server: ServerThread, alice_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    content = os.urandom(5 * 1024 * 1024 + 17)
    response = await upload(alice_api, pid, "big.bin", content, content_type="")
    assert response.status_code == 201
    file = response.json()
    assert file["size"] == len(content)
    assert file["sha256"] == hashlib.sha256(content).hexdigest()
    assert (server.settings.files_dir / pid / file["id"]).read_bytes() == content

    url = f"/api/projects/{pid}/files/{file['id']}/content"
    async with alice_api.stream("GET", url) as stream:
        assert stream.status_code == 200
        assert int(stream.headers["content-length"]) == len(content)
        chunks = [chunk async for chunk in stream.aiter_raw()]
    assert len(chunks) > 1  # arrived in pieces, not as one buffered body
    assert b"".join(chunks) == content


async def test_folder_paths_are_normalised(alice_api: httpx.AsyncClient) -> None:
    pid = (await create_project(alice_api))["id"]
    cases = {"": "/", "/": "/", "a/b/": "/a/b", "//a//b": "/a/b", "/etc": "/etc"}
    for given, stored in cases.items():
        response = await upload(alice_api, pid, f"f{len(given)}.txt", path=given)
        assert response.status_code == 201, (given, response.text)
        assert response.json()["path"] == stored, given


async def test_same_name_in_same_path_is_409(
    server: ServerThread, alice_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    first = await upload(alice_api, pid, "a.txt", b"one", path="/docs")
    assert first.status_code == 201
    duplicate = await upload(alice_api, pid, "a.txt", b"two", path="docs/")
    assert duplicate.status_code == 409
    assert duplicate.json() == {"detail": "/docs/a.txt already exists"}
    # Same name elsewhere is fine; the refused upload left nothing behind.
    assert (await upload(alice_api, pid, "a.txt", b"three")).status_code == 201
    assert len(stored_files(server.settings)) == 2
    file_id = first.json()["id"]
    content = await alice_api.get(f"/api/projects/{pid}/files/{file_id}/content")
    assert content.content == b"one"


async def test_concurrent_duplicates_keep_exactly_one(
    server: ServerThread, alice_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    responses = await asyncio.gather(
        *(upload(alice_api, pid, "same.txt", str(i).encode()) for i in range(6))
    )
    assert sorted(r.status_code for r in responses) == [201] + [409] * 5
    assert len(stored_files(server.settings)) == 1
    assert await file_rows(server) == ["same.txt"]


async def test_list_files_paginates(alice_api: httpx.AsyncClient) -> None:
    pid = (await create_project(alice_api))["id"]
    for i in range(5):
        assert (await upload(alice_api, pid, f"{i}.txt")).status_code == 201
    assert (await upload(alice_api, pid, "z.txt", path="/sub")).status_code == 201

    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = await alice_api.get(
            f"/api/projects/{pid}/files", params={"limit": 2, "offset": offset}
        )
        assert page.status_code == 200
        body = page.json()
        assert body["total"] == 6
        assert len(body["items"]) <= 2
        seen += [f"{f['path']}:{f['name']}" for f in body["items"]]
        offset = body["next_offset"]
    assert seen == [f"/:{i}.txt" for i in range(5)] + ["/sub:z.txt"]

    past_end = await alice_api.get(f"/api/projects/{pid}/files", params={"offset": 10})
    assert past_end.json() == {"items": [], "total": 6, "next_offset": None}
    sub = (await alice_api.get(f"/api/projects/{pid}/files", params={"path": "sub/"})).json()
    assert [f["name"] for f in sub["items"]] == ["z.txt"] and sub["total"] == 1
    for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "x"}):
        response = await alice_api.get(f"/api/projects/{pid}/files", params=params)
        assert response.status_code == 422, params
    bad_path = await alice_api.get(f"/api/projects/{pid}/files", params={"path": "../x"})
    assert bad_path.status_code == 400


async def test_delete_a_file(server: ServerThread, alice_api: httpx.AsyncClient) -> None:
    pid = (await create_project(alice_api))["id"]
    keep = (await upload(alice_api, pid, "keep.txt")).json()
    gone = (await upload(alice_api, pid, "gone.txt")).json()
    assert (await alice_api.delete(f"/api/projects/{pid}/files/{gone['id']}")).status_code == 204
    assert stored_files(server.settings) == [server.settings.files_dir / pid / keep["id"]]
    for path in (
        f"/api/projects/{pid}/files/{gone['id']}",
        f"/api/projects/{pid}/files/{gone['id']}/content",
    ):
        assert (await alice_api.get(path)).status_code == 404
    assert (await alice_api.delete(f"/api/projects/{pid}/files/{gone['id']}")).status_code == 404
    listing = (await alice_api.get(f"/api/projects/{pid}/files")).json()
    assert [f["id"] for f in listing["items"]] == [keep["id"]]
    # The name is free again.
    assert (await upload(alice_api, pid, "gone.txt")).status_code == 201


async def test_a_file_deleted_by_many_at_once_is_deleted_once(
    server: ServerThread, alice_api: httpx.AsyncClient
) -> None:
    """Eight deletes of one file at once: one 204, seven 404s, one `file.deleted` in the
    log and no seq lost to the others (each gives back the seq it took)."""
    pid = (await create_project(alice_api))["id"]
    file = (await upload(alice_api, pid, "contested.txt")).json()
    path = f"/api/projects/{pid}/files/{file['id']}"
    answers = await asyncio.gather(*(alice_api.delete(path) for _ in range(8)))
    assert sorted(r.status_code for r in answers) == [204] + [404] * 7
    [deleted] = [r for r in answers if r.status_code == 204]
    logged = (await alice_api.get(f"/api/projects/{pid}/events")).json()["events"]
    assert [(e["seq"], e["type"]) for e in logged] == [
        (1, "project.created"),
        (2, "file.uploaded"),
        (3, "file.deleted"),
    ]
    assert deleted.headers["Tidings-Seq"] == "3"
    assert stored_files(server.settings) == []
    after = await alice_api.patch(f"/api/projects/{pid}", json={"name": "next"})
    assert after.headers["Tidings-Seq"] == "4"


async def test_content_missing_from_storage_is_410(
    server: ServerThread, alice_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    file = (await upload(alice_api, pid)).json()
    (server.settings.files_dir / pid / file["id"]).unlink()
    response = await alice_api.get(f"/api/projects/{pid}/files/{file['id']}/content")
    assert response.status_code == 410


# -- visibility --------------------------------------------------------------------------


async def test_other_users_files_are_404(
    alice_api: httpx.AsyncClient, bob_api: httpx.AsyncClient, server: ServerThread
) -> None:
    pid = (await create_project(alice_api))["id"]
    fid = (await upload(alice_api, pid)).json()["id"]
    base = f"/api/projects/{pid}/files"
    for method, path in [
        ("GET", base),
        ("GET", f"{base}/{fid}"),
        ("GET", f"{base}/{fid}/content"),
        ("DELETE", f"{base}/{fid}"),
    ]:
        response = await bob_api.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json() == {"detail": "project not found"}
    assert (await upload(bob_api, pid, "intruder.txt")).status_code == 404
    assert len(stored_files(server.settings)) == 1
    assert await file_rows(server) == ["a.txt"]


async def test_a_large_upload_is_refused_before_its_body_is_read_when_the_project_is_not_seen(
    alice_api: httpx.AsyncClient, bob: TestUser, server: ServerThread
) -> None:
    """A body over 64 KiB is received only for who may see the project: the 404 comes
    while its bytes have not been sent. (A smaller one is received first and refused by
    the upload's transaction: the test above.)"""
    pid = (await create_project(alice_api))["id"]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            f"POST /api/projects/{pid}/files HTTP/1.1\r\nHost: tidings\r\n"
            f"Authorization: Bearer {bob.token}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {1 << 20}\r\n\r\n".encode()
        )
        async with asyncio.timeout(TIMEOUT):
            status_line = await reader.readline()
    finally:
        writer.close()
    assert status_line.split()[1] == b"404"
    assert stored_files(server.settings) == []


async def test_a_file_id_from_another_project_is_404(alice_api: httpx.AsyncClient) -> None:
    first = (await create_project(alice_api, "one"))["id"]
    second = (await create_project(alice_api, "two"))["id"]
    fid = (await upload(alice_api, first)).json()["id"]
    for path in (
        f"/api/projects/{second}/files/{fid}",
        f"/api/projects/{second}/files/{fid}/content",
    ):
        response = await alice_api.get(path)
        assert response.status_code == 404
        assert response.json() == {"detail": "file not found"}
    assert (await alice_api.delete(f"/api/projects/{second}/files/{fid}")).status_code == 404
    assert (await alice_api.get(f"/api/projects/{first}/files/{fid}")).status_code == 200


# -- bad input leaves nothing behind -----------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../evil.txt", "../../etc/passwd", "a/b.txt", "..", ".", "a\\b.txt", "x\x00y", "x" * 256, ""],
)
async def test_traversal_in_file_names_is_refused(
    server: ServerThread, alice_api: httpx.AsyncClient, name: str
) -> None:
    pid = (await create_project(alice_api))["id"]
    response = await post_raw(alice_api, pid, multipart(("file", name, b"payload")))
    assert response.status_code == 400, response.text
    assert "detail" in response.json()
    await assert_nothing_stored(server, alice_api, pid)


@pytest.mark.parametrize(
    "path", ["../", "/a/../../b", "..", "./x", "a\\b", "a\x00b", "a\nb", "/" + "x" * 1100]
)
async def test_traversal_in_folder_paths_is_refused(
    server: ServerThread, alice_api: httpx.AsyncClient, path: str
) -> None:
    pid = (await create_project(alice_api))["id"]
    body = multipart(("path", None, path.encode()), ("file", "ok.txt", b"payload"))
    response = await post_raw(alice_api, pid, body)
    assert response.status_code == 400, response.text
    await assert_nothing_stored(server, alice_api, pid)


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (multipart(("path", None, b"/x")), f"multipart/form-data; boundary={BOUNDARY}", 400),
        (
            multipart(("file", "a.txt", b"1"), ("file", "b.txt", b"2")),
            f"multipart/form-data; boundary={BOUNDARY}",
            400,
        ),
        (
            multipart(("path", None, b"x" * 5000), ("file", "a.txt", b"1")),
            f"multipart/form-data; boundary={BOUNDARY}",
            400,
        ),
        (b"--nope\r\ngarbage", f"multipart/form-data; boundary={BOUNDARY}", 400),
        (b'{"name": "a.txt"}', "application/json", 415),
        (b"abc", "multipart/form-data", 415),
    ],
    ids=["no-file", "two-files", "long-field", "malformed", "json", "no-boundary"],
)
async def test_bad_upload_bodies_are_refused(
    server: ServerThread, alice_api: httpx.AsyncClient, body: bytes, content_type: str, status: int
) -> None:
    pid = (await create_project(alice_api))["id"]
    response = await alice_api.post(
        f"/api/projects/{pid}/files", content=body, headers={"content-type": content_type}
    )
    assert response.status_code == status, response.text
    assert "detail" in response.json()
    await assert_nothing_stored(server, alice_api, pid)


async def test_upload_to_an_unknown_project_is_404(alice_api: httpx.AsyncClient) -> None:
    assert (await upload(alice_api, "0123456789abcdef")).status_code == 404


async def test_oversized_upload_is_413_and_leaves_nothing(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server(max_upload_bytes=1000)
    user = await create_user(server.settings, "alice")
    async with api(server, user) as client:
        pid = (await create_project(client))["id"]
        assert (await upload(client, pid, "fits.bin", b"x" * 1000)).status_code == 201
        assert len(stored_files(server.settings)) == 1
        # Over the limit while streaming (Content-Length within the multipart allowance) …
        streamed = await upload(client, pid, "big.bin", b"x" * 1001)
        assert streamed.status_code == 413
        # … and refused up front from Content-Length alone.
        declared = await upload(client, pid, "huge.bin", b"x" * 200_000)
        assert declared.status_code == 413
        assert [p.name for p in stored_files(server.settings)] == [
            (await client.get(f"/api/projects/{pid}/files")).json()["items"][0]["id"]
        ]
        assert await db_scalars(server.settings, select(File.name)) == ["fits.bin"]


async def test_oversized_chunked_upload_is_413(
    make_server: Callable[..., ServerThread],
) -> None:
    """Without a Content-Length only the streaming limit can stop the body."""
    server = make_server(max_upload_bytes=1000)
    user = await create_user(server.settings, "alice")

    async def body() -> Any:
        yield multipart(("file", "big.bin", b"x" * 5000))

    async with api(server, user) as client:
        pid = (await create_project(client))["id"]
        response = await client.post(
            f"/api/projects/{pid}/files",
            content=body(),
            headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        assert response.status_code == 413
        await assert_nothing_stored(server, client, pid)


async def test_interrupted_upload_leaves_nothing(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    head = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="partial.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tmp = server.settings.files_dir / "tmp"
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        (
            f"POST /api/projects/{pid}/files HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.port}\r\n"
            f"Authorization: Bearer {alice.token}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {10 * 1024 * 1024}\r\n\r\n"
        ).encode()
        + head
        + b"x" * 256 * 1024
    )
    await writer.drain()
    await eventually(lambda: any(tmp.iterdir()))  # the server is writing the temp file
    writer.transport.abort()  # the client goes away mid-body
    await eventually(lambda: not any(tmp.iterdir()))
    await assert_nothing_stored(server, alice_api, pid)
    # The server is fine afterwards.
    assert (await upload(alice_api, pid)).status_code == 201


async def test_body_ending_before_the_closing_boundary_is_refused(
    server: ServerThread, alice_api: httpx.AsyncClient
) -> None:
    """A chunked upload that simply stops must not be stored as a shorter file."""
    pid = (await create_project(alice_api))["id"]
    whole = multipart(("file", "cut.bin", b"x" * 10_000))

    async def cut_short() -> Any:
        yield whole[:5_000]

    response = await alice_api.post(
        f"/api/projects/{pid}/files",
        content=cut_short(),
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "incomplete multipart body"}
    await assert_nothing_stored(server, alice_api, pid)


class UnreachableBroker:
    async def publish(self, channel: str, message: bytes) -> None:
        raise ConnectionError("broker unreachable")


async def test_a_committed_change_survives_a_broker_outage(
    server: ServerThread, alice_api: httpx.AsyncClient
) -> None:
    """Publishing happens after the commit; its failure must not undo the change's effects."""
    pid = (await create_project(alice_api))["id"]
    eventlog = server.services.eventlog
    broker, eventlog.broker = eventlog.broker, UnreachableBroker()
    try:
        uploaded = await upload(alice_api, pid, "kept.txt", b"kept")
        assert uploaded.status_code == 201, uploaded.text
        fid = uploaded.json()["id"]
        content = await alice_api.get(f"/api/projects/{pid}/files/{fid}/content")
        assert content.content == b"kept"
        assert (await alice_api.delete(f"/api/projects/{pid}/files/{fid}")).status_code == 204
        assert stored_files(server.settings) == []
        assert (await upload(alice_api, pid, "again.txt")).status_code == 201
        assert (await alice_api.delete(f"/api/projects/{pid}")).status_code == 204
        assert stored_files(server.settings) == []
    finally:
        eventlog.broker = broker
    seqs = await db_scalars(server.settings, select(Event.seq).where(Event.project_id == pid))
    assert seqs == [5]  # every change was logged; the project.deleted tombstone remains


# -- names and downloads that cannot deceive ---------------------------------------------


async def test_one_name_in_any_unicode_spelling_and_no_hidden_characters(
    server: ServerThread, alice_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    composed, decomposed = "caf\u00e9.txt", "cafe\u0301.txt"
    first = await upload(alice_api, pid, composed, b"1")
    assert first.status_code == 201, first.text
    again = await upload(alice_api, pid, decomposed, b"2")
    assert again.status_code == 409, again.text
    stored = await upload(alice_api, pid, decomposed, b"3", path="/other")
    assert stored.json()["name"] == composed  # stored in NFC
    for name, path in [
        ("invoice\u202egnp.exe", None),  # shows as "invoiceexe.png"
        ("a\u200bb.txt", None),
        ("C:evil.txt", None),
        ("a.txt", "/x\u202e/y"),
        ("a.txt", "/c:/windows"),
    ]:
        response = await upload(alice_api, pid, name, b"x", path=path)
        assert response.status_code == 400, (name, path, response.text)
        assert "must not contain" in response.json()["detail"]
    listing = (await alice_api.get(f"/api/projects/{pid}/files")).json()
    assert sorted((f["path"], f["name"]) for f in listing["items"]) == [
        ("/", composed),
        ("/other", composed),
    ]


@pytest.mark.parametrize(
    ("name", "declared", "served"),
    [
        ("page.html", "text/html", "application/octet-stream"),
        ("logo.svg", "image/svg+xml", "application/octet-stream"),
        ("script.js", "text/javascript", "application/octet-stream"),
        ("data.xml", "application/xml", "application/octet-stream"),
        ("sneaky.png", "text/html", "application/octet-stream"),
        ("photo.png", "image/png", "image/png"),
        ("notes.txt", "text/plain", "text/plain; charset=utf-8"),
        ("doc.pdf", "application/pdf", "application/pdf"),
        ("data.json", "application/json", "application/json"),
        ("bundle.zip", "application/zip", "application/zip"),
        ("song.mp3", "audio/mpeg", "audio/mpeg"),
        ("clip.mp4", "video/mp4", "video/mp4"),
        ("blob.bin", "", "application/octet-stream"),
    ],
)
async def test_downloads_are_attachments_of_safe_types(
    alice_api: httpx.AsyncClient, name: str, declared: str, served: str
) -> None:
    pid = (await create_project(alice_api))["id"]
    sent = await upload(alice_api, pid, name, b"<script>alert(1)</script>", content_type=declared)
    assert sent.status_code == 201, sent.text
    download = await alice_api.get(f"/api/projects/{pid}/files/{sent.json()['id']}/content")
    assert download.status_code == 200
    assert download.headers["content-type"] == served
    assert download.headers["content-disposition"] == (
        f"attachment; filename=\"{name}\"; filename*=UTF-8''{name}"
    )
    assert download.headers["x-content-type-options"] == "nosniff"
    assert download.headers["content-security-policy"] == "sandbox"


async def test_download_names_survive_any_characters(alice_api: httpx.AsyncClient) -> None:
    pid = (await create_project(alice_api))["id"]
    sent = await upload(alice_api, pid, "naïve; 100% ✓.txt", b"x")
    assert sent.status_code == 201, sent.text
    download = await alice_api.get(f"/api/projects/{pid}/files/{sent.json()['id']}/content")
    assert download.headers["content-disposition"] == (
        'attachment; filename="na_ve; 100_ _.txt"; '
        "filename*=UTF-8''na%C3%AFve%3B%20100%25%20%E2%9C%93.txt"
    )
