"""``/api/projects/{id}/files``: streamed uploads and downloads."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse
from sqlalchemy import bindparam, delete, insert
from sqlalchemy.exc import IntegrityError
from starlette.requests import ClientDisconnect

from tidings.access import sees
from tidings.api.deps import App, CurrentUser, not_found, project_row, tell_seq
from tidings.api.paging import Limit, Offset, page
from tidings.api.schemas import FileCreated, FileOut, FilePage, file_event, file_out
from tidings.api.validation import Id
from tidings.assets import (
    InvalidContentType,
    asset_type,
    content_type_for,
    download_headers,
    served_type,
)
from tidings.db import Tx, after_commit
from tidings.events import FILE_DELETED, FILE_UPLOADED, take_seq
from tidings.models import FILES, File, new_id
from tidings.storage import UploadError, clean_folder, clean_name

router = APIRouter(prefix="/api/projects/{project_id}/files", tags=["files"])

# Multipart headers and small fields around the file, on top of the file size limit.
MULTIPART_OVERHEAD = 64 * 1024
# A body of at most this many bytes is received before access is checked (upload_file).
CHECKED_AFTER_BYTES = 64 * 1024

# Built once (see models.FILES).
_ADD_FILE = insert(FILES)
_DELETE_FILE = (
    delete(FILES)
    .where(FILES.c.id == bindparam("file_id"), FILES.c.project_id == bindparam("project_id"))
    .returning(*FILES.columns)
)


@router.post(
    "",
    response_model=FileCreated,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "path": {"type": "string", "default": "/"},
                        },
                    }
                }
            },
            "required": True,
        }
    },
)
async def upload_file(
    project_id: Id, request: Request, user: CurrentUser, app: App, response: Response
) -> Any:
    """Upload one file (multipart field ``file``, optional field ``path``, default ``/``).

    Streamed to disk while hashing; the size limit applies as bytes arrive. A failed or
    interrupted upload leaves neither a file nor a row.
    """
    declared = request.headers.get("content-length")
    size = int(declared) if declared and declared.isdigit() else None
    if size is None or size > CHECKED_AFTER_BYTES:
        # Only who may see the project makes the server receive a large body. A small one
        # is received first: the transaction below refuses it just the same (404), and a
        # read before it would cost a small upload a fifth of its time.
        async with app.db.read() as session:
            if not await sees(session, user.user_id, project_id):
                raise not_found()
    limit = app.settings.max_upload_bytes
    if size is not None and size > limit + MULTIPART_OVERHEAD:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"file exceeds {limit} bytes")
    try:
        upload = await app.storage.receive(
            request.headers.get("content-type", ""), request.stream(), limit
        )
    except UploadError as exc:
        raise HTTPException(exc.status, exc.detail) from None
    except ClientDisconnect:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "upload interrupted") from None
    file_id = new_id()
    try:
        name = clean_name(upload.name or "")
        folder = clean_folder(upload.folder)
        ctype = content_type_for(name, upload.declared_type)
        file = File(
            id=file_id,
            project_id=project_id,
            name=name,
            path=folder,
            size=upload.size,
            content_type=ctype,
            asset_type=asset_type(name, ctype),
            sha256=upload.sha256,
            created_at=datetime.now(UTC),
        )

        def add(tx: Tx) -> int:
            taken = take_seq(tx, project_id, seen_by=user.user_id)
            if taken is None:
                raise not_found()
            tx.execute(_ADD_FILE, _columns(file))
            seq = app.eventlog.log(tx, project_id, taken, FILE_UPLOADED, {"file": file_event(file)})
            # Placed before the commit, so that a committed row has its file; removed again
            # if the transaction does not commit (even when this request was cancelled
            # meanwhile: Database.commit() finishes the transaction regardless).
            placed = app.storage.place(upload, project_id, file_id)
            tx.if_rolled_back(lambda: placed.unlink(missing_ok=True))
            return seq

        seq = await app.db.commit(add, key=project_id)
    except UploadError as exc:
        raise HTTPException(exc.status, exc.detail) from None
    except InvalidContentType as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    except IntegrityError:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"{folder.rstrip('/')}/{name} already exists"
        ) from None
    finally:
        upload.temp_path.unlink(missing_ok=True)
    tell_seq(response, seq)
    return {**file_out(file), "seq": seq}


def _columns(file: File) -> dict[str, Any]:
    """The row of a new ``File``, for a Core insert (no unit of work on the hot path)."""
    return {c.key: getattr(file, c.key) for c in FILES.columns}


@router.get("", response_model=FilePage)
async def list_files(
    project_id: Id,
    user: CurrentUser,
    app: App,
    path: str | None = Query(default=None, description="only files in this folder"),
    limit: Limit = 100,
    offset: Offset = 0,
) -> Any:
    async with app.db.read() as session:
        if not await sees(session, user.user_id, project_id):
            raise not_found()
        where = [File.project_id == project_id]
        if path is not None:
            try:
                where.append(File.path == clean_folder(path))
            except UploadError as exc:
                raise HTTPException(exc.status, exc.detail) from None
        return await page(session, File, where, (File.path, File.name), limit, offset, file_out)


@router.get("/{file_id}", response_model=FileOut)
async def get_file(project_id: Id, file_id: Id, user: CurrentUser, app: App) -> Any:
    return file_out(await project_row(app, user.user_id, project_id, File, file_id))


@router.get("/{file_id}/content", response_class=FileResponse)
async def download_file(project_id: Id, file_id: Id, user: CurrentUser, app: App) -> Any:
    file = await project_row(app, user.user_id, project_id, File, file_id)
    path = app.storage.file_path(project_id, file.id)
    if not path.is_file():
        raise HTTPException(status.HTTP_410_GONE, "file content is missing from storage")
    # Served as an attachment with an allow-listed type: an uploaded page or SVG must not
    # run as this origin in a browser that opens the link.
    return FileResponse(
        path,
        media_type=served_type(file.content_type),
        headers=download_headers(file.name) | {"X-Content-SHA256": file.sha256},
    )


@router.delete("/{file_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_file(
    project_id: Id, file_id: Id, user: CurrentUser, app: App, response: Response
) -> None:
    ids = {"project_id": project_id, "file_id": file_id}

    def remove(tx: Tx) -> int:
        taken = take_seq(tx, project_id, seen_by=user.user_id)
        if taken is None:
            raise not_found()
        file = tx.execute(_DELETE_FILE, ids).first()
        if file is None:  # the seq taken is given back: the transaction rolls back
            raise not_found("file")
        seq = app.eventlog.log(tx, project_id, taken, FILE_DELETED, {"file": file_event(file)})
        path = app.storage.file_path(project_id, file_id)
        after_commit(tx, lambda: asyncio.to_thread(path.unlink, missing_ok=True))
        return seq

    tell_seq(response, await app.db.commit(remove, key=project_id))
