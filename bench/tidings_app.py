"""tidings as the benchmarks run it: the real application with two hooks for the load generator.

- ``/bench/publish`` (WebSocket): each message is an event for one project, handed to
  ``EventLog.publish`` exactly as a committed change's event is after its commit, with the
  next ``seq`` of that project. This is the fan-out path (broker → hub → queues →
  sockets) without a database write per event, so it compares with servers that have no
  database; the end-to-end scenario measures real REST changes instead.
- ``POST /bench/seed`` ``{"project_id", "count", "size"}``: records ``count`` durable
  events through ``EventLog.record`` (the real write path), for the resume scenario.
- ``POST /bench/profile`` ``{"file"}`` starts cProfile on the event loop's thread; the
  next one stops it and writes its stats to ``file`` (for docs/performance.md).
- ``POST /bench/users`` ``{"prefix", "count"}``: makes ``count`` users at once (no
  password: nobody logs in as them), for the write scenario's member adds.

Users and tokens come from the real CLI (``tidings users create``, ``tokens create``), run
by ``run.py`` before this starts. With ``--postgres ADMIN_DSN`` the server runs on a fresh
PostgreSQL database of its own (dropped when it stops) instead of the data dir's SQLite,
and the bench user and its token (``--token``) are written into it at start.

    python bench/tidings_app.py PORT --data-dir DIR [--heartbeat S] [--plain-asgi]
                                     [--postgres ADMIN_DSN --token TOKEN]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
from pathlib import Path

import orjson
import uvicorn
from fastapi import FastAPI, Request, WebSocket
from sqlalchemy import insert
from starlette.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from tidings import Settings, create_app
from tidings.db import Database, create_engine, migrate
from tidings.events import FILE_UPLOADED, Envelope, EventLog, encode, timestamp
from tidings.models import ApiToken, User, new_id
from tidings.security import hash_secret
from tidings.server import uvicorn_options

SEED_BATCH = 1000


async def publish(websocket: WebSocket) -> None:
    eventlog: EventLog = websocket.app.state.services.eventlog
    seqs: dict[str, int] = {}
    await websocket.accept()
    try:
        while True:
            event = orjson.loads(await websocket.receive_text())
            project_id, type = event.pop("project_id"), event.pop("type")
            seq = seqs.get(project_id)
            if seq is None:
                seq = (await eventlog.heads([project_id]))[project_id]
            seqs[project_id] = seq = seq + 1
            frame = encode(
                {
                    "type": type,
                    "project_id": project_id,
                    "seq": seq,
                    "timestamp": timestamp(),
                    **event,
                }
            )
            await eventlog.publish(Envelope(type, frame, project_id, seq))
    except WebSocketDisconnect:
        pass


async def seed(request: Request) -> JSONResponse:
    body = await request.json()
    eventlog: EventLog = request.app.state.services.eventlog
    project_id, count = body["project_id"], int(body["count"])
    pad = "x" * int(body.get("size", 0))
    seq = 0
    for start in range(0, count, SEED_BATCH):
        async with eventlog.db.write() as session:
            for i in range(start, min(count, start + SEED_BATCH)):
                file = {"id": f"f{i}", "name": f"{i}.txt", "path": "/", "size": 1}
                seq = await eventlog.record(
                    session, project_id, FILE_UPLOADED, {"file": file, "pad": pad}
                )
    return JSONResponse({"seq": seq})


async def users(request: Request) -> JSONResponse:
    body = await request.json()
    db: Database = request.app.state.services.db
    names = [f"{body['prefix']}{i}" for i in range(int(body["count"]))]
    async with db.write() as session:
        await session.execute(
            insert(User), [{"id": new_id(), "username": n, "password_hash": "!"} for n in names]
        )
    return JSONResponse({"users": names})


async def profile(request: Request) -> JSONResponse:
    body = await request.json()
    profiler: cProfile.Profile | None = getattr(request.app.state, "profiler", None)
    if profiler is None:
        request.app.state.profiler = profiler = cProfile.Profile()
        profiler.enable()
    else:
        profiler.disable()
        profiler.dump_stats(body["file"])
        request.app.state.profiler = None
    return JSONResponse({})


def _admin(dsn: str, sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def postgres(admin_dsn: str, port: int, token: str) -> tuple[str, str]:
    """A fresh database with the bench user and ``token``: its URL and its name."""
    name = f"tidings_bench_{port}"
    _admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(admin_dsn, f'CREATE DATABASE "{name}"')
    base = admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{base}/{name}"

    async def account() -> None:
        db = Database(create_engine(url))
        await migrate(db.engine)
        async with db.write() as session:
            user_id = new_id()
            await session.execute(
                insert(User).values(id=user_id, username="bench", password_hash="!")
            )
            await session.execute(
                insert(ApiToken).values(
                    id=new_id(), user_id=user_id, secret_hash=hash_secret(token), name="bench"
                )
            )
        await db.dispose()

    asyncio.run(account())
    return url, name


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--heartbeat", type=float, default=30.0)
    parser.add_argument(
        "--plain-asgi",
        action="store_true",
        help="uvicorn's own WebSocket protocol: every frame an awaited ASGI send",
    )
    parser.add_argument("--postgres", metavar="ADMIN_DSN", help="run on a fresh PostgreSQL db")
    parser.add_argument("--token", help="the bench user's API token (with --postgres)")
    args = parser.parse_args()
    database_url, database = "", None
    if args.postgres:
        database_url, database = postgres(args.postgres, args.port, args.token)
    settings = Settings(
        data_dir=args.data_dir,
        database_url=database_url,
        create_admin=False,
        heartbeat_interval=args.heartbeat,
    )
    app: FastAPI = create_app(settings)
    app.router.add_websocket_route("/bench/publish", publish)
    app.router.add_route("/bench/seed", seed, methods=["POST"])
    app.router.add_route("/bench/users", users, methods=["POST"])
    app.router.add_route("/bench/profile", profile, methods=["POST"])
    options = uvicorn_options(settings)
    if args.plain_asgi:
        options["ws"] = "websockets-sansio"
    try:
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", **options)
    finally:
        if database is not None:
            _admin(args.postgres, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


if __name__ == "__main__":
    main()
