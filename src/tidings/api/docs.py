"""The API docs at ``/docs`` (Swagger UI) and ``/redoc``, served entirely by this server.

FastAPI's own docs pages load their scripts from a CDN and run an inline script. Here the
Swagger UI and ReDoc bundles come from the ``fastapi-offline`` package (served under
:data:`ASSETS_URL`) and each page is a static file plus a script of tidings' own, so the
pages work without any third-party host and under a Content-Security-Policy with no
``'unsafe-inline'`` scripts. ``TIDINGS_DOCS=false`` serves neither page (``/openapi.json``
stays).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi_offline import FastAPIOffline

from tidings.api.dashboard import STATIC_DIR

ASSETS_URL = "/docs-assets"
_SELF = "default-src 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'"
# Swagger UI draws its icons from data: URIs.
DOCS_POLICY = f"{_SELF}; img-src 'self' data:; form-action 'self'"
# ReDoc injects its styles as <style> elements and runs its search in a blob: worker.
REDOC_POLICY = (
    f"{_SELF}; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "worker-src 'self' blob:; form-action 'none'"
)

router = APIRouter(include_in_schema=False)


def _page(name: str, policy: str) -> FileResponse:
    headers = {"Content-Security-Policy": policy, "Cache-Control": "no-cache"}
    return FileResponse(STATIC_DIR / name, media_type="text/html", headers=headers)


@router.get("/docs")
async def swagger_ui() -> FileResponse:
    return _page("docs.html", DOCS_POLICY)


@router.get("/redoc")
async def redoc() -> FileResponse:
    return _page("redoc.html", REDOC_POLICY)


def create_fastapi(docs: bool, **options: Any) -> FastAPI:
    """The FastAPI app with ``/docs`` and ``/redoc`` as above when ``docs``, or none."""
    if not docs:
        return FastAPI(docs_url=None, redoc_url=None, **options)
    app = FastAPIOffline(docs_url=None, redoc_url=None, static_url=ASSETS_URL, **options)
    app.include_router(router)
    return app
