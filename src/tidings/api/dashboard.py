"""The dashboard at ``/`` and its static files (and the browser client and its TypeScript
declarations) under ``/static``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

TYPESCRIPT = "application/typescript; charset=utf-8"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def dashboard() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/static/tidings.d.ts")
async def typescript_declarations() -> FileResponse:
    """The browser client's TypeScript declarations, as TypeScript (a ``.ts`` name alone
    would be served as an MPEG transport stream)."""
    return FileResponse(STATIC_DIR / "tidings.d.ts", media_type=TYPESCRIPT)


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
