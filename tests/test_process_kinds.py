"""The built-in kinds' work functions, run directly on files in a temp dir (no server)."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tidings.processes import export, thumbnails, verify
from tidings.processes.kinds import KINDS, ExportParams, ThumbnailParams, VerifyParams
from tidings.processes.state import Cancelled, Progress
from tidings.processes.work import CHUNK, SourceFile, Work


def source(tmp_path: Path, name: str, data: bytes, folder: str = "/", kind: str = "other") -> Any:
    disk = tmp_path / "store" / hashlib.sha1(f"{folder}{name}".encode()).hexdigest()
    disk.parent.mkdir(exist_ok=True)
    disk.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    return SourceFile(disk.name, name, folder, len(data), digest, kind, disk)


def work(tmp_path: Path, files: list[SourceFile], params: Any) -> Work:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return Work(files, out, params, Progress(sum(f.size for f in files)))


def test_location_joins_folder_and_name(tmp_path: Path) -> None:
    assert source(tmp_path, "a.txt", b"", "/").location == "a.txt"
    assert source(tmp_path, "a.txt", b"", "/x/y").location == "x/y/a.txt"


@pytest.mark.parametrize("compression", ["stored", "deflated"])
def test_export_writes_every_file_and_lists_missing(tmp_path: Path, compression: str) -> None:
    big = bytes(range(256)) * (CHUNK // 128)  # two chunks and a bit
    files = [
        source(tmp_path, "a.txt", b"alpha"),
        source(tmp_path, "big.bin", big + b"tail", "/deep/er"),
        source(tmp_path, "gone.txt", b"lost"),
    ]
    files[2].disk_path.unlink()
    job = work(tmp_path, files, ExportParams(compression=compression))  # type: ignore[arg-type]
    result = export.run(job)
    assert result["files"] == 2
    assert result["missing"] == [{"id": files[2].id, "path": "gone.txt"}]
    assert job.progress.done == job.progress.total
    assert not (job.out_dir / "export.zip.part").exists()
    with zipfile.ZipFile(job.out_dir / "export.zip") as archive:
        assert archive.read("a.txt") == b"alpha"
        assert archive.read("deep/er/big.bin") == big + b"tail"
        method = zipfile.ZIP_DEFLATED if compression == "deflated" else zipfile.ZIP_STORED
        assert archive.getinfo("a.txt").compress_type == method


def test_export_stops_between_chunks_when_cancelled(tmp_path: Path) -> None:
    files = [source(tmp_path, "big.bin", b"x" * (4 * CHUNK))]
    job = work(tmp_path, files, ExportParams())
    chunks = 0
    real_advance = job.progress.advance

    def advance(nbytes: int, message: str | None = None) -> None:
        nonlocal chunks
        chunks += 1
        if chunks == 2:
            job.progress.stop.set()
        real_advance(nbytes, message)

    job.progress.advance = advance  # type: ignore[method-assign]
    with pytest.raises(Cancelled):
        export.run(job)
    assert chunks == 2
    assert not (job.out_dir / "export.zip").exists()


def test_verify_reports_mismatches_and_missing(tmp_path: Path) -> None:
    good = source(tmp_path, "good", b"good" * 1000)
    bad = source(tmp_path, "bad", b"bad" * 1000)
    short = source(tmp_path, "short", b"short" * 1000)
    gone = source(tmp_path, "gone", b"gone")
    bad.disk_path.write_bytes(b"BAD" + b"bad" * 999)
    short.disk_path.write_bytes(b"short")
    gone.disk_path.unlink()
    job = work(tmp_path, [good, bad, short, gone], VerifyParams())
    result = verify.run(job)
    assert result["checked"] == 4 and result["ok"] == 1
    assert [m["id"] for m in result["mismatched"]] == [bad.id, short.id]
    assert result["mismatched"][1]["actual_size"] == 5
    assert result["missing"] == [{"id": gone.id, "path": "gone"}]
    assert job.progress.done == job.progress.total


def test_thumbnails_of_images_only(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (300, 600), (0, 0, 255, 128)).save(buffer, format="PNG")
    image = source(tmp_path, "tall.png", buffer.getvalue(), kind="image")
    broken = source(tmp_path, "broken.png", b"\x89PNG nope", kind="image")
    text = source(tmp_path, "notes.txt", b"words", kind="document")
    job = work(tmp_path, [image, broken, text], ThumbnailParams(size=100, format="jpeg"))
    result = thumbnails.run(job)
    [made] = result["thumbnails"]
    assert (made["width"], made["height"]) == (50, 100)
    assert [s["id"] for s in result["skipped"]] == [broken.id]
    with Image.open(job.out_dir / made["thumbnail"]) as thumb:
        assert thumb.format == "JPEG" and thumb.size == (50, 100)
    assert job.progress.total == image.size + broken.size


def test_kinds_registry() -> None:
    assert set(KINDS) == {"export", "verify", "thumbnails", "external"}
    assert KINDS["external"].external and not KINDS["export"].external
    assert KINDS["export"].artefact == "export.zip"


def test_progress_is_safe_to_read_while_a_thread_writes(tmp_path: Path) -> None:
    files = [source(tmp_path, f"f{i}", b"y" * CHUNK) for i in range(8)]
    job = work(tmp_path, files, VerifyParams())
    seen: list[float] = []
    thread = threading.Thread(target=verify.run, args=(job,))
    thread.start()
    while thread.is_alive():
        seen.append(job.progress.fraction)
    thread.join()
    assert seen == sorted(seen) and all(0.0 <= s < 1.0 for s in seen)


@pytest.mark.parametrize(
    ("location", "taken", "name"),
    [
        ("a/b.txt", set(), "a/b.txt"),
        ("C:evil.txt", set(), "C_evil.txt"),
        ("c:\\windows\\win.ini", set(), "c_/windows/win.ini"),
        ("../../etc/passwd", set(), "etc/passwd"),
        ("/abs/x", set(), "abs/x"),
        ("a/./b//c", set(), "a/b/c"),
        ("..", set(), "f1"),
        ("a/..\x00x", set(), "a/.._x"),
        ("a.txt", {"a.txt"}, "a (f1).txt"),
        ("a.txt", {"a.txt", "a (f1).txt"}, "a (f1 2).txt"),
        ("d/.hidden", {"d/.hidden"}, "d/.hidden (f1)"),
        ("noext", {"noext"}, "noext (f1)"),
    ],
)
def test_member_name(location: str, taken: set[str], name: str) -> None:
    used = set(taken)
    assert export.member_name(location, used, "f1") == name
    assert used == taken | {name}
