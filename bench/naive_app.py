"""The baselines of tidings' benchmarks: the story's WebSocket manager, as written there.

``ConnectionManager`` is the pattern the story sketches (a dict of sockets, a
``gather`` of ``send_json`` per subscriber, awaited by whoever publishes), with the two
things the sketch leaves out filled in the obvious way: ``subscribe``/``unsubscribe``, and
a ``subscribed`` reply so the load generator knows when a subscription is in place.

``QueuedConnectionManager`` (``--queued``) is the usual first fix, kept for the ablation:
encode once, put the text on each subscriber's bounded ``asyncio.Queue`` without
awaiting, and let one writer task per socket send it.

    python bench/naive_app.py PORT [--queued] [--heartbeat SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect


def now() -> str:
    return datetime.now(UTC).isoformat()


class ConnectionManager:
    def __init__(self) -> None:
        self.active_connections: dict[str, WebSocket] = {}
        self.subscriptions: dict[str, set[str]] = {}

    async def connect(self, websocket: WebSocket, client_id: str) -> None:
        await websocket.accept()
        self.active_connections[client_id] = websocket
        await self.send_personal_message(
            {"type": "connection.established", "client_id": client_id, "timestamp": now()},
            client_id,
        )

    def disconnect(self, client_id: str) -> None:
        if client_id in self.active_connections:
            del self.active_connections[client_id]
            self.subscriptions.pop(client_id, None)

    def subscribe(self, client_id: str, project_id: str) -> None:
        self.subscriptions.setdefault(client_id, set()).add(project_id)

    def unsubscribe(self, client_id: str, project_id: str) -> None:
        self.subscriptions.get(client_id, set()).discard(project_id)

    async def send_personal_message(self, message: dict[str, Any], client_id: str) -> None:
        if websocket := self.active_connections.get(client_id):
            await websocket.send_json(message)

    async def broadcast(self, message: dict[str, Any], project_id: str | None = None) -> None:
        if project_id:
            clients = [cid for cid, subs in self.subscriptions.items() if project_id in subs]
        else:
            clients = list(self.active_connections.keys())
        tasks = [self.send_personal_message(message, cid) for cid in clients]
        await asyncio.gather(*tasks, return_exceptions=True)


class QueuedConnectionManager(ConnectionManager):
    """Never awaits a client in ``broadcast``; a full queue drops that client's event."""

    def __init__(self, max_queue: int = 1000) -> None:
        super().__init__()
        self.max_queue = max_queue
        self.queues: dict[str, asyncio.Queue[str]] = {}
        self.writers: dict[str, asyncio.Task[None]] = {}

    async def connect(self, websocket: WebSocket, client_id: str) -> None:
        self.queues[client_id] = asyncio.Queue(self.max_queue)
        self.writers[client_id] = asyncio.create_task(self._write(websocket, client_id))
        await super().connect(websocket, client_id)

    def disconnect(self, client_id: str) -> None:
        super().disconnect(client_id)
        self.queues.pop(client_id, None)
        writer = self.writers.pop(client_id, None)
        if writer is not None:
            writer.cancel()

    async def send_personal_message(self, message: dict[str, Any], client_id: str) -> None:
        queue = self.queues.get(client_id)
        if queue is not None and not queue.full():
            queue.put_nowait(json.dumps(message, separators=(",", ":")))

    async def broadcast(self, message: dict[str, Any], project_id: str | None = None) -> None:
        text = json.dumps(message, separators=(",", ":"))
        for cid, subs in self.subscriptions.items():
            if project_id is None or project_id in subs:
                queue = self.queues.get(cid)
                if queue is not None and not queue.full():
                    queue.put_nowait(text)

    async def _write(self, websocket: WebSocket, client_id: str) -> None:
        queue = self.queues[client_id]
        while True:
            text = await queue.get()
            try:
                await websocket.send_text(text)
            except Exception:
                return


def create_app(manager: ConnectionManager, heartbeat: float) -> FastAPI:
    async def heartbeat_task() -> None:
        while True:
            await asyncio.sleep(heartbeat)
            await manager.broadcast({"type": "system.heartbeat", "timestamp": now()})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(heartbeat_task())
        yield
        task.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        client_id = str(uuid.uuid4())
        await manager.connect(websocket, client_id)
        try:
            while True:
                data = await websocket.receive_json()
                if data["type"] == "subscribe":
                    manager.subscribe(client_id, data["project_id"])
                    await manager.send_personal_message(
                        {"type": "subscribed", "project_id": data["project_id"], "seq": 0},
                        client_id,
                    )
                elif data["type"] == "unsubscribe":
                    manager.unsubscribe(client_id, data["project_id"])
                elif data["type"] == "ping":
                    await manager.send_personal_message(
                        {"type": "pong", "timestamp": now()}, client_id
                    )
        except WebSocketDisconnect:
            manager.disconnect(client_id)

    @app.websocket("/bench/publish")
    async def publish(websocket: WebSocket) -> None:
        """The benchmark's publisher: each message is an event for one project."""
        await websocket.accept()
        try:
            while True:
                event = await websocket.receive_json()
                event["timestamp"] = now()
                await manager.broadcast(event, project_id=event["project_id"])
        except WebSocketDisconnect:
            pass

    @app.patch("/api/projects/{project_id}")
    async def update_project(project_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        project = {"id": project_id, **changes, "updated_at": now()}
        await manager.broadcast(
            {
                "type": "project.updated",
                "project_id": project_id,
                "data": project,
                "timestamp": now(),
            },
            project_id=project_id,
        )
        return project

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--queued", action="store_true")
    parser.add_argument("--heartbeat", type=float, default=30.0)
    args = parser.parse_args()
    manager = QueuedConnectionManager() if args.queued else ConnectionManager()
    uvicorn.run(
        create_app(manager, args.heartbeat), host="127.0.0.1", port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()
