"""``export``: a zip of the project's files, streamed to disk one chunk at a time."""

from __future__ import annotations

import os
import zipfile
from datetime import datetime
from typing import Any

from tidings.processes.work import CHUNK, Work

ARCHIVE = "export.zip"
# zipfile needs to know up front whether a member needs ZIP64 headers.
_ZIP64_THRESHOLD = 0x7FFF_FFFF


def member_name(location: str, taken: set[str], fallback: str) -> str:
    """A zip member name for a file at ``location`` that no unzip tool places outside the
    folder it extracts into: relative, ``/``-separated, with no empty, ``.`` or ``..``
    segment and no ``:`` (a drive letter or stream on Windows), and not in ``taken`` (it
    is added there). Rows stored before uploads were checked may hold any of these.
    ``fallback`` (the file's id) names what has nothing left, and tells duplicates apart.
    """
    # zipfile would cut a name at a NUL, which could leave a bare "..".
    parts = location.replace("\\", "/").replace(":", "_").replace("\x00", "_").split("/")
    name = "/".join(p for p in parts if p not in ("", ".", "..")) or fallback
    stem, dot, ext = name.rpartition(".")
    if not (dot and stem and not stem.endswith("/") and "/" not in ext):
        stem, dot, ext = name, "", ""
    candidate, n = name, 0
    while candidate in taken:
        n += 1
        label = fallback if n == 1 else f"{fallback} {n}"
        candidate = f"{stem} ({label}){dot}{ext}"
    taken.add(candidate)
    return candidate


def run(work: Work) -> dict[str, Any]:
    """Write ``export.zip`` (via a ``.part`` file renamed at the end) into ``out_dir``.

    Memory stays at one chunk whatever the project's size. Files missing from storage
    are listed in the result rather than failing the export.
    """
    params = work.params
    method = zipfile.ZIP_DEFLATED if params.compression == "deflated" else zipfile.ZIP_STORED
    progress = work.progress
    target = work.out_dir / ARCHIVE
    part = target.with_name(ARCHIVE + ".part")
    missing: list[dict[str, str]] = []
    taken: set[str] = set()
    count = 0
    with zipfile.ZipFile(part, "w", compression=method, allowZip64=True) as archive:
        for index, file in enumerate(work.files, 1):
            label = f"Exporting {file.location} ({index} of {len(work.files)})"
            progress.message = label
            progress.check()
            try:
                source = open(file.disk_path, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                missing.append({"id": file.id, "path": file.location})
                progress.advance(file.size)
                continue
            with source:
                stat = os.fstat(source.fileno())
                info = zipfile.ZipInfo(
                    member_name(file.location, taken, file.id),
                    datetime.fromtimestamp(stat.st_mtime).timetuple()[:6],
                )
                info.compress_type = method
                info.file_size = stat.st_size
                with archive.open(info, "w", force_zip64=stat.st_size > _ZIP64_THRESHOLD) as dst:
                    while chunk := source.read(CHUNK):
                        dst.write(chunk)
                        progress.advance(len(chunk), label)
            count += 1
    os.replace(part, target)
    return {
        "archive": ARCHIVE,
        "files": count,
        "size": target.stat().st_size,
        "missing": missing,
    }
