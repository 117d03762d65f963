"""A full disk: the change is refused with 507, nothing is half made, and the next change
after room is made gets the next seq.

The disks are real: small tmpfs mounts (so these tests need root, as in CI), filled by
the upload itself, by running out of inodes, or by a filler file beside SQLite's
database.
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.exc import OperationalError

from tests.conftest import IN_CI, ServerThread, api, create_project, create_user, on_stacks, upload
from tidings import Settings
from tidings.db import disk_full, unavailable

FULL = {"detail": "the server has no storage space left; nothing was changed"}


@contextmanager
def small_disk(path: Path, size: str, inodes: int | None = None) -> Iterator[Path]:
    """A tmpfs of ``size`` (and at most ``inodes`` files and folders) mounted at ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tidings-test", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        why = f"a small tmpfs cannot be mounted here: {mounted.stderr.strip()}"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A server on ``settings``, and a client of a new user of it."""
    server = ServerThread(settings)
    server.start()
    try:
        async with api(server, await create_user(settings)) as client:
            yield client
    finally:
        await server.stop_async()


def files_on_disk(root: Path) -> int:
    """How many files are stored below ``root`` (under their ids, not their names)."""
    return sum(1 for p in root.rglob("*") if p.is_file())


async def head(client: httpx.AsyncClient, project_id: str) -> int:
    response = await client.get(f"/api/projects/{project_id}")
    assert response.status_code == 200
    return int(response.json()["seq"])


async def listed(client: httpx.AsyncClient, project_id: str) -> list[str]:
    response = await client.get(f"/api/projects/{project_id}/files")
    return sorted(f["name"] for f in response.json()["items"])


async def test_an_upload_larger_than_the_free_space_gets_507_and_leaves_nothing(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with small_disk(settings.files_dir, "1m"):
        async with running(settings) as client:
            project = await create_project(client)
            assert (await upload(client, project["id"], "small.txt")).status_code == 201
            seq = await head(client, project["id"])

            response = await upload(client, project["id"], "big.bin", b"x" * (2 << 20))

            assert response.status_code == 507
            assert response.json() == FULL
            (logged,) = [r for r in caplog.records if "out of disk space" in r.getMessage()]
            assert f"/api/projects/{project['id']}/files" in logged.getMessage()
            assert "No space left on device" in logged.getMessage()
            assert await listed(client, project["id"]) == ["small.txt"]
            assert await head(client, project["id"]) == seq  # no event logged
            assert list((settings.files_dir / "tmp").iterdir()) == []  # the partial file too
            again = await upload(client, project["id"], "next.txt")
            assert again.status_code == 201
            assert again.json()["seq"] == seq + 1


async def test_no_inode_left_for_the_files_folder_rolls_the_upload_back(
    settings: Settings,
) -> None:
    """The file is received, but its project's folder cannot be made: that happens inside
    the upload's transaction, which rolls back (on SQLite in the writer thread, on
    PostgreSQL on the event loop)."""
    # The mount's root, the storage's tmp folder and the upload's temporary file: no inode
    # is left for the project's folder.
    with small_disk(settings.files_dir, "1m", inodes=3) as disk:
        async with running(settings) as client:
            project = await create_project(client)
            seq = await head(client, project["id"])

            response = await upload(client, project["id"], "a.txt")

            assert response.status_code == 507
            assert response.json() == FULL
            assert await listed(client, project["id"]) == []
            assert await head(client, project["id"]) == seq
            assert files_on_disk(disk) == 0
            remount(disk, "nr_inodes=100")
            again = await upload(client, project["id"], "a.txt")
            assert again.status_code == 201
            assert again.json()["seq"] == seq + 1
            assert await listed(client, project["id"]) == ["a.txt"]


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` with one file, then free ``leave`` bytes of it again."""
    filler = disk / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with open(filler, "r+b") as out:
        out.truncate(filler.stat().st_size - leave)
    return filler


@dataclass
class Filled:
    """A running server with a project of one file, on a disk filled but for ``leave``."""

    client: httpx.AsyncClient
    settings: Settings
    project_id: str
    seq: int  # the project's seq once filled
    filler: Path  # remove to make room again


@asynccontextmanager
async def sqlite_on_a_filled_disk(
    tmp_path: Path, settings: Settings, leave: int
) -> AsyncIterator[Filled]:
    with small_disk(tmp_path / "disk", "2m") as disk:
        database = disk / "tidings.db"
        on_disk = settings.model_copy(
            update={"data_dir": disk, "database_url": f"sqlite+aiosqlite:///{database}"}
        )
        async with running(on_disk) as client:
            project = await create_project(client)
            assert (await upload(client, project["id"], "kept.txt")).status_code == 201
            seq = await head(client, project["id"])
            # The next commit must grow the write-ahead log, not reuse it.
            with sqlite3.connect(database) as checkpoint:
                checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            yield Filled(client, on_disk, project["id"], seq, fill(disk, leave=leave))


@on_stacks("sqlite-memory")
async def test_sqlite_on_a_full_disk_refuses_the_commit_and_the_placed_file_goes(
    tmp_path: Path, settings: Settings
) -> None:
    """Room for the upload's file, none for the commit: SQLite's ``database or disk is
    full`` at COMMIT. The file was placed for the row before the commit; it must not stay
    behind without its row. Reads go on meanwhile."""
    # The upload's file fits, its commit does not.
    async with sqlite_on_a_filled_disk(tmp_path, settings, leave=8192) as filled:
        client, project_id, seq = filled.client, filled.project_id, filled.seq

        response = await upload(client, project_id, "lost.txt")

        assert response.status_code == 507
        assert response.json() == FULL
        assert files_on_disk(filled.settings.files_dir) == 1  # the file kept, nothing else
        assert await listed(client, project_id) == ["kept.txt"]
        assert await head(client, project_id) == seq
        filled.filler.unlink()
        again = await upload(client, project_id, "lost.txt")
        assert again.status_code == 201
        assert again.json()["seq"] == seq + 1
        assert files_on_disk(filled.settings.files_dir) == 2


@on_stacks("sqlite-memory")
async def test_uploads_at_once_on_a_full_disk_leave_nothing_behind(
    tmp_path: Path, settings: Settings
) -> None:
    """Eight uploads at once on a disk with room for a few small files and commits: each
    is made (201) or refused (507), whether its file, its temp file's flush or its commit
    found no room; a refused one leaves no file, not even its temp file, and gives back
    the seq it took."""
    async with sqlite_on_a_filled_disk(tmp_path, settings, leave=40 * 1024) as filled:
        client, project_id, seq = filled.client, filled.project_id, filled.seq
        names = [f"lost-{n}.txt" for n in range(8)]

        responses = await asyncio.gather(*(upload(client, project_id, n) for n in names))

        assert {r.status_code for r in responses} <= {201, 507}
        made = sorted(n for n, r in zip(names, responses, strict=True) if r.status_code == 201)
        assert len(made) <= 6
        assert files_on_disk(filled.settings.files_dir) == 1 + len(made)
        assert await listed(client, project_id) == ["kept.txt", *made]
        assert await head(client, project_id) == seq + len(made)
        filled.filler.unlink()
        again = await upload(client, project_id, "again.txt")
        assert again.json()["seq"] == seq + len(made) + 1


def test_full_disks_are_told_apart_from_outages() -> None:
    enospc = OSError(errno.ENOSPC, "No space left on device")
    sqlite_full = sqlite3.OperationalError("database or disk is full")
    sqlite_full.sqlite_errorcode = sqlite3.SQLITE_FULL
    sqlite_full.sqlite_errorname = "SQLITE_FULL"
    pg_full = asyncpg.exceptions.DiskFullError("could not extend file: No space left on device")
    for exc in (enospc, OperationalError("COMMIT", {}, sqlite_full), pg_full):
        assert disk_full(exc)
    locked = OperationalError("COMMIT", {}, sqlite3.OperationalError("database is locked"))
    for exc in (locked, ConnectionResetError(), OSError(errno.EACCES, "Permission denied")):
        assert not disk_full(exc)
    assert unavailable(locked)
