"""What a kind's work function gets: the files, an output folder, progress to report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidings.processes.state import Progress

CHUNK = 1024 * 1024  # bytes read between two cancellation checks


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A project file as the work sees it: its row's facts and where its bytes are."""

    id: str
    name: str
    path: str  # the folder inside the project, ``/`` or ``/a/b``
    size: int
    sha256: str
    asset_type: str
    disk_path: Path

    @property
    def location(self) -> str:
        """``a/b/name``: the file's place in the project, as an archive member name."""
        folder = self.path.strip("/")
        return f"{folder}/{self.name}" if folder else self.name


@dataclass(frozen=True, slots=True)
class Work:
    files: list[SourceFile]
    out_dir: Path  # private to this process; removed if it fails or is cancelled
    params: Any
    progress: Progress
