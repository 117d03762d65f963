"""Liveness, readiness, metrics and the protocol table."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from tidings.api.deps import App
from tidings.codes import protocol_table

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(app: App) -> Any:
    try:
        async with app.db.read() as session:
            await session.execute(text("SELECT 1"))
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "detail": str(exc)[:200]}, status_code=503)
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def metrics(app: App) -> Response:
    return Response(app.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/protocol")
async def protocol() -> dict[str, object]:
    """Close codes and error codes of the WebSocket protocol, for clients."""
    return protocol_table()
