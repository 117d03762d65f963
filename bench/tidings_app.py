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
- ``POST /bench/clients`` ``{"count", "projects"}``: makes ``count`` users at once, each
  with an API token and a member of one of ``projects``, and returns their tokens: for
  clients that are each a user of their own, none of them in the server's caches yet.

Users and tokens come from the real CLI (``tidings users create``, ``tokens create``), run
by ``run.py`` before this starts, into the data dir's SQLite or, for the PostgreSQL
variant, into a fresh database that ``TIDINGS_DATABASE_URL`` names (``servers.py``).

    python bench/tidings_app.py PORT --data-dir DIR [--heartbeat S] [--plain-asgi]
"""

from __future__ import annotations

import argparse
import cProfile
from pathlib import Path

import orjson
import uvicorn
from fastapi import FastAPI, Request, WebSocket
from sqlalchemy import insert
from starlette.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from tidings import Settings, create_app
from tidings.db import Database
from tidings.events import FILE_UPLOADED, Envelope, EventLog, encode, timestamp
from tidings.models import ApiToken, Member, User, new_id
from tidings.security import TOKEN_PREFIX, hash_secret, new_secret
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


async def clients(request: Request) -> JSONResponse:
    """``count`` users at once, each with an API token and a member of one project
    (user ``k`` of ``projects[k mod len(projects)]``); their tokens, in order."""
    body = await request.json()
    projects: list[str] = body["projects"]
    db: Database = request.app.state.services.db
    made = [new_secret(TOKEN_PREFIX) for _ in range(int(body["count"]))]
    users = [
        {"id": new_id(), "username": f"client{k}", "password_hash": "!"} for k in range(len(made))
    ]
    async with db.write() as session:
        await session.execute(insert(User), users)
        await session.execute(
            insert(ApiToken),
            [
                {"id": new_id(), "secret_hash": hash_secret(t), "user_id": u["id"], "name": "bench"}
                for t, u in zip(made, users, strict=True)
            ],
        )
        await session.execute(
            insert(Member),
            [
                {"project_id": projects[k % len(projects)], "user_id": u["id"]}
                for k, u in enumerate(users)
            ],
        )
    return JSONResponse({"tokens": made})


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
    args = parser.parse_args()
    settings = Settings(  # TIDINGS_DATABASE_URL, if set, picks PostgreSQL (servers.py)
        data_dir=args.data_dir,
        create_admin=False,
        heartbeat_interval=args.heartbeat,
    )
    app: FastAPI = create_app(settings)
    app.router.add_websocket_route("/bench/publish", publish)
    app.router.add_route("/bench/seed", seed, methods=["POST"])
    app.router.add_route("/bench/users", users, methods=["POST"])
    app.router.add_route("/bench/clients", clients, methods=["POST"])
    app.router.add_route("/bench/profile", profile, methods=["POST"])
    options = uvicorn_options(settings)
    if args.plain_asgi:
        options["ws"] = "websockets-sansio"
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", **options)


if __name__ == "__main__":
    main()
