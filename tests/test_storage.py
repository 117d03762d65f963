"""``storage.py`` on its own: name and path cleaning, streamed multipart receive."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from tidings.storage import LEFTOVER_AGE, Storage, UploadError, clean_folder, clean_name

BOUNDARY = "b0undary"
CTYPE = f"multipart/form-data; boundary={BOUNDARY}"


def form(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for field, filename, data in parts:
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: image/png\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    s = Storage(tmp_path / "files")
    s.prepare()
    return s


# -- clean_name / clean_folder -----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a.txt", "report 2024.pdf", "ünï©ødé.png", ".hidden", "x" * 255, "日本語.txt", "😀.png"],
)
def test_clean_name_keeps_ordinary_names(name: str) -> None:
    assert clean_name(name) == name


@pytest.mark.parametrize(
    ("given", "name"),
    [
        ("cafe\u0301.txt", "café.txt"),  # decomposed é becomes the composed one
        ("café.txt", "café.txt"),
        ("\u212b.txt", "Å.txt"),  # the Angstrom sign is a letter A with ring above
        ("e\u0301" * 255, "é" * 255),  # the limit counts composed characters
    ],
)
def test_clean_name_normalises_to_nfc(given: str, name: str) -> None:
    assert clean_name(given) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "1-255"),
        (".", "1-255"),
        ("..", "1-255"),
        ("x" * 256, "1-255"),
        ("../a", "slash"),
        ("a/b", "slash"),
        ("/abs", "slash"),
        ("a\\b", ": or \\"),
        ("C:\\x", ": or \\"),
        ("C:x", ": or \\"),
        ("file.txt:stream", ": or \\"),
        ("a\x00", "control or format"),
        ("a\nb", "control or format"),
        ("a\x7fb", "control or format"),  # DEL (Cc)
        ("a\x85b", "control or format"),  # NEL (Cc)
        ("invoice\u202egnp.exe", "control or format"),  # RIGHT-TO-LEFT OVERRIDE (Cf)
        ("a\u2066b\u2069", "control or format"),  # bidi isolates (Cf)
        ("a\u200bb", "control or format"),  # ZERO WIDTH SPACE (Cf)
        ("\ufeffa", "control or format"),  # BOM (Cf)
    ],
)
def test_clean_name_refuses_anything_but_one_plain_name(name: str, why: str) -> None:
    with pytest.raises(UploadError) as info:
        clean_name(name)
    assert info.value.status == 400
    assert why in info.value.detail


@pytest.mark.parametrize(
    ("given", "folder"),
    [
        (None, "/"),
        ("", "/"),
        ("   ", "/"),
        ("/", "/"),
        ("a", "/a"),
        ("/a/b/", "/a/b"),
        ("a//b", "/a/b"),
        ("/.config", "/.config"),
        ("a..b/c", "/a..b/c"),
        ("/cafe\u0301/x", "/café/x"),
    ],
)
def test_clean_folder_normalises(given: str | None, folder: str) -> None:
    assert clean_folder(given) == folder


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "../x",
        "/a/../b",
        "a/./b",
        ".",
        "a\\b",
        "a\x00b",
        "a\tb",
        "/" + "x" * 1024,
        "C:/x",
        "/a:b",
        "/a\u202eb",
        "/a\u200d",
    ],
)
def test_clean_folder_refuses_traversal(path: str) -> None:
    with pytest.raises(UploadError) as info:
        clean_folder(path)
    assert info.value.status == 400


# -- receive -----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
async def test_receive_streams_to_a_temp_file(storage: Storage, chunk: int) -> None:
    content = bytes(range(256)) * 40 + b"\r\n--b0und"  # boundary-like bytes inside the data
    body = form(("path", None, b"/imgs"), ("file", "pic.png", content))
    upload = await storage.receive(CTYPE, chunks(body, chunk), max_bytes=len(content))
    assert upload.name == "pic.png"
    assert upload.declared_type == "image/png"
    assert upload.folder == "/imgs"
    assert upload.size == len(content)
    assert upload.sha256 == hashlib.sha256(content).hexdigest()
    assert upload.temp_path.parent == storage.tmp
    assert upload.temp_path.read_bytes() == content

    placed = storage.place(upload, "proj", "file1")
    assert placed == storage.file_path("proj", "file1")
    assert placed.read_bytes() == content
    assert list(storage.tmp.iterdir()) == []
    storage.remove_project("proj")
    assert not storage.project_dir("proj").exists()


async def test_receive_without_path_field(storage: Storage) -> None:
    upload = await storage.receive(CTYPE, chunks(form(("file", "a", b"")), 5), max_bytes=10)
    assert upload.folder is None
    assert upload.size == 0
    assert upload.sha256 == hashlib.sha256(b"").hexdigest()


def leftovers(storage: Storage) -> list[Path]:
    return list(storage.tmp.iterdir())


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (form(("file", "a", b"x" * 101)), 413),
        (form(("path", None, b"/x")), 400),
        (form(("file", "a", b"1"), ("file", "b", b"2")), 400),
        (form(("path", None, b"p" * 5000), ("file", "a", b"1")), 400),
        (form(("file", "a", b"1"))[:-10], 400),  # truncated: no closing boundary
        (b"\x00\x01 not multipart at all", 400),
    ],
    ids=["too-big", "no-file", "two-files", "long-field", "truncated", "garbage"],
)
async def test_receive_failures_leave_no_temp_file(
    storage: Storage, body: bytes, status: int
) -> None:
    with pytest.raises(UploadError) as info:
        await storage.receive(CTYPE, chunks(body, 16), max_bytes=100)
    assert info.value.status == status
    assert leftovers(storage) == []


@pytest.mark.parametrize(
    "ctype", ["application/json", "multipart/form-data", "text/plain; boundary=x"]
)
async def test_receive_needs_multipart_with_a_boundary(storage: Storage, ctype: str) -> None:
    with pytest.raises(UploadError) as info:
        await storage.receive(ctype, chunks(b"", 1), max_bytes=100)
    assert info.value.status == 415


async def test_receive_cleans_up_when_the_stream_breaks(storage: Storage) -> None:
    class Disconnected(Exception):
        pass

    async def broken(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
        for part in parts:
            yield part
        raise Disconnected

    body = form(("file", "a", b"x" * 1000))
    with pytest.raises(Disconnected):
        await storage.receive(CTYPE, broken([body[:500]]), max_bytes=10_000)
    assert leftovers(storage) == []


def test_prepare_removes_leftovers_of_a_crash(storage: Storage) -> None:
    leftover = storage.new_temp()
    leftover.write_bytes(b"partial")
    an_hour_and_more_ago = time.time() - LEFTOVER_AGE - 60
    os.utime(leftover, (an_hour_and_more_ago, an_hour_and_more_ago))
    storage.prepare()
    assert leftovers(storage) == []


def test_a_starting_node_leaves_the_uploads_of_others_alone(storage: Storage) -> None:
    """Found by the chaos suite (tests/chaos.py): nodes share the files folder (a shared
    volume, or `--workers N`), and a node that started removed every temp file, so the
    uploads another node was receiving at that moment failed with 500 when they were
    moved into place. Only temp files untouched for a long time are a crash's leftovers."""
    receiving = storage.new_temp()
    receiving.write_bytes(b"arriving")
    Storage(storage.root).prepare()  # another node starts on the same folder
    assert leftovers(storage) == [receiving]


async def test_receive_bounds_fields_and_headers_besides_the_file(storage: Storage) -> None:
    """Many small fields in a chunked body must not pile up in memory."""
    fields = [(f"f{i}", None, b"v" * 4000) for i in range(20)]
    body = form(*fields, ("file", "a", b"x"))
    with pytest.raises(UploadError) as info:
        await storage.receive(CTYPE, chunks(body, 4096), max_bytes=100)
    assert info.value.status == 400
    assert "too large" in info.value.detail
    assert leftovers(storage) == []
    # A few ordinary fields are fine.
    upload = await storage.receive(CTYPE, chunks(form(*fields[:3], ("file", "a", b"x")), 512), 10)
    assert upload.size == 1
