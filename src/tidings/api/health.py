"""Liveness, readiness, metrics, the protocol table and the messages' JSON Schema."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from tidings.api.deps import App
from tidings.auth import bearer_token
from tidings.codes import protocol_table
from tidings.schema import json_schema

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
async def metrics(request: Request, app: App) -> Response:
    """Prometheus metrics; with ``TIDINGS_METRICS_TOKEN`` set, only for that bearer."""
    expected = app.settings.metrics_token
    if expected:
        given = bearer_token(request.headers.get("authorization")) or ""
        # Constant time: the comparison must not reveal how much of a guess was right.
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "metrics need the bearer token of TIDINGS_METRICS_TOKEN",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return Response(app.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/protocol")
async def protocol() -> dict[str, object]:
    """Close codes and error codes of the WebSocket protocol, for clients."""
    return protocol_table()


@router.get("/api/protocol/schema", response_class=JSONResponse)
async def protocol_schema() -> JSONResponse:
    """The JSON Schema (draft 2020-12) of every WebSocket message, server's and client's,
    from the server's own definitions (``tidings/schema.py``)."""
    return JSONResponse(json_schema(), media_type="application/schema+json")
