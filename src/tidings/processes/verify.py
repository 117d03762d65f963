"""``verify``: re-read every file and compare it with the sha256 stored at upload."""

from __future__ import annotations

import hashlib
from typing import Any

from tidings.processes.work import CHUNK, Work


def run(work: Work) -> dict[str, Any]:
    progress = work.progress
    mismatched: list[dict[str, Any]] = []
    missing: list[dict[str, str]] = []
    for index, file in enumerate(work.files, 1):
        label = f"Verifying {file.location} ({index} of {len(work.files)})"
        progress.message = label
        progress.check()
        digest = hashlib.sha256()
        size = 0
        try:
            with open(file.disk_path, "rb") as source:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    progress.advance(len(chunk), label)
        except FileNotFoundError:
            missing.append({"id": file.id, "path": file.location})
            progress.advance(file.size)
            continue
        # A truncated or grown file shifts the byte count; keep the total honest.
        progress.advance(file.size - size)
        if digest.hexdigest() != file.sha256:
            mismatched.append(
                {
                    "id": file.id,
                    "path": file.location,
                    "expected_sha256": file.sha256,
                    "actual_sha256": digest.hexdigest(),
                    "expected_size": file.size,
                    "actual_size": size,
                }
            )
    return {
        "checked": len(work.files),
        "ok": len(work.files) - len(mismatched) - len(missing),
        "mismatched": mismatched,
        "missing": missing,
    }
