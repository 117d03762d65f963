"""Long-running operations on a project's files (see issue: processes).

Placeholder interface used by the rest of the app until the runner lands.
"""

from __future__ import annotations


class ProcessRunner:
    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def project_deleted(self, project_id: str) -> None:
        pass
