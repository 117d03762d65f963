"""Long-running operations on a project's files, with live progress (see docs/processes.md).

``ProcessRunner`` runs the built-in kinds (``export``, ``verify``, ``thumbnails``) in
worker threads with bounded concurrency, and takes reports for ``external`` ones.
"""

from __future__ import annotations

from tidings.processes.kinds import KINDS, Kind
from tidings.processes.runner import Busy, Conflict, NotFound, ProcessRunner
from tidings.processes.state import INTERRUPTED, Status
from tidings.processes.store import ProcessOut, process_out

__all__ = [
    "INTERRUPTED",
    "KINDS",
    "Busy",
    "Conflict",
    "Kind",
    "NotFound",
    "ProcessOut",
    "ProcessRunner",
    "Status",
    "process_out",
]
