"""Commit durable events with no server running: the restart scenario's writes while the
node is down, as another node or a batch job would make them.

Each event is its own write transaction through ``EventLog.record`` (the real write path:
the project's next ``seq``, the event row, the commit), spread over the projects in turn,
on the database the server uses (its data dir's SQLite, or ``TIDINGS_DATABASE_URL``).
The broker is an in-process one nobody listens to: no node is up to hear it. Prints the
projects' newest ``seq`` as one JSON object.

    python bench/seed.py DATA_DIR COUNT PROJECT_ID...
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tidings import Settings
from tidings.broker import create_broker
from tidings.db import Database, create_engine
from tidings.events import FILE_UPLOADED, EventLog


async def seed(data_dir: Path, count: int, projects: list[str]) -> dict[str, int]:
    settings = Settings(data_dir=data_dir, create_admin=False)
    db = Database(create_engine(settings.effective_database_url))
    broker = create_broker("memory://")
    eventlog = EventLog(db, broker, settings.event_history, settings.broker_channel)
    await broker.connect()
    try:
        for i in range(count):
            file = {"id": f"r{i}", "name": f"while-down-{i}.txt", "path": "/", "size": 1}
            async with db.write() as session:
                project = projects[i % len(projects)]
                body = {"file": file, "pad": "x" * 120}
                await eventlog.record(session, project, FILE_UPLOADED, body)
        return await eventlog.heads(projects)
    finally:
        await broker.disconnect()
        await db.dispose()


def main() -> None:
    data_dir, count, projects = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    print(json.dumps(asyncio.run(seed(data_dir, count, projects))))


if __name__ == "__main__":
    main()
