"""``/api/projects/{id}/processes``: start, watch, cancel and drive long-running processes."""

from __future__ import annotations

import asyncio
import mimetypes
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any, BinaryIO, Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from starlette.background import BackgroundTask

from tidings.access import sees, visible_project
from tidings.api.deps import App, CurrentUser, current_user, not_found, project_row, tell_seq
from tidings.api.paging import Limit, Offset, page
from tidings.api.schemas import Body
from tidings.api.validation import Id, PathFileName
from tidings.assets import download_headers, served_type
from tidings.auth import bearer_token
from tidings.models import Process
from tidings.processes import KINDS, Busy, Conflict, NotFound, ProcessOut, Status, process_out
from tidings.processes.state import ACTIVE, valid_fraction
from tidings.processes.store import status_in
from tidings.security import WORKER_TOKEN_PREFIX, hash_secret, new_secret
from tidings.storage import UploadError, clean_folder

router = APIRouter(prefix="/api/projects/{project_id}/processes", tags=["processes"])

MAX_EXTERNAL_PARAMS_BYTES = 16 * 1024
MAX_RESULT_BYTES = 1024 * 1024
BUSY_RETRY_AFTER = 5  # seconds; a hint, processes end at their own pace


class ProcessIn(Body):
    kind: str
    params: dict[str, Any] = {}


class ProcessChanged(ProcessOut):
    """A process as a change left it, with the seq of the event the change recorded (None
    when it recorded none: a built-in kind logs ``process.started`` only once it runs)."""

    seq: int | None = None


class NewProcessOut(ProcessChanged):
    """The answer to a create: for ``external``, the worker's token, shown this once."""

    worker_token: str | None = None


class ProgressIn(Body):
    progress: float
    message: str = ""


class CompleteIn(Body):
    status: Literal["succeeded", "failed"]
    result: Any = None
    error: str | None = None


class ProcessPage(BaseModel):
    items: list[ProcessOut]
    total: int
    next_offset: int | None


def _invalid(loc: tuple[str | int, ...], message: str, value: Any) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", *loc), "msg": message, "input": value}]
    )


def _parse(body: ProcessIn) -> tuple[Any, BaseModel]:
    """The kind and its validated params, or a 422 in FastAPI's usual error shape."""
    kind = KINDS.get(body.kind)
    if kind is None:
        known = ", ".join(sorted(KINDS))
        raise _invalid(("kind",), f"unknown kind; one of: {known}", body.kind)
    try:
        params = kind.params.model_validate(body.params)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", "params", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None
    folder = getattr(params, "path", None)
    if folder is not None:
        try:
            params.path = clean_folder(folder)  # type: ignore[attr-defined]
        except UploadError as exc:
            raise _invalid(("params", "path"), exc.detail, folder) from None
    if kind.external and len(orjson.dumps(body.params)) > MAX_EXTERNAL_PARAMS_BYTES:
        raise _invalid(("params",), "params are too large", None)
    return kind, params


@router.post("", response_model=NewProcessOut, status_code=status.HTTP_202_ACCEPTED)
async def start_process(
    project_id: Id, body: ProcessIn, user: CurrentUser, app: App, response: Response
) -> Any:
    """Start a process. Built-in kinds answer ``queued`` and run when a slot is free;
    ``external`` answers ``running`` and waits for reports on ``/progress`` and ``/complete``,
    with a ``worker_token`` for them (shown once). 429 when the project already has
    ``TIDINGS_MAX_ACTIVE_PROCESSES`` queued or running."""
    kind, params = _parse(body)
    worker_token = new_secret(WORKER_TOKEN_PREFIX) if kind.external else None
    try:
        async with app.db.write() as session:
            # The project's lock is held from here to the commit: the active count that
            # create() checks cannot change under it.
            if await visible_project(session, user.user_id, project_id, for_update=True) is None:
                raise not_found()
            process, seq = await app.processes.create(
                session,
                project_id,
                user.user_id,
                kind,
                params,
                worker_token_hash=hash_secret(worker_token) if worker_token else None,
            )
            out = process_out(process)
    except Busy as exc:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"{exc}; retry when one has finished",
            headers={"Retry-After": str(BUSY_RETRY_AFTER)},
        ) from None
    tell_seq(response, seq)
    return {**out, "seq": seq, "worker_token": worker_token}


@router.get("", response_model=ProcessPage)
async def list_processes(
    project_id: Id,
    user: CurrentUser,
    app: App,
    status_: Annotated[Status | None, Query(alias="status")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Any:
    """The project's processes, newest first."""
    async with app.db.read() as session:
        if not await sees(session, user.user_id, project_id):
            raise not_found()
        where = [Process.project_id == project_id]
        if status_ is not None:
            where.append(Process.status == status_.value)
        newest_first = (Process.created_at.desc(), Process.id)
        return await page(session, Process, where, newest_first, limit, offset, process_out)


@router.get("/{process_id}", response_model=ProcessOut)
async def get_process(project_id: Id, process_id: Id, user: CurrentUser, app: App) -> Any:
    return process_out(await project_row(app, user.user_id, project_id, Process, process_id))


@router.delete("/{process_id}", response_model=ProcessChanged)
async def cancel_process(
    project_id: Id, process_id: Id, user: CurrentUser, app: App, response: Response
) -> Any:
    """Cancel a queued or running process; answers once it has stopped (``cancelled``).
    409 if it had already finished."""
    await project_row(app, user.user_id, project_id, Process, process_id)
    try:
        seq = await app.processes.cancel(project_id, process_id)
    except NotFound:
        raise not_found("process") from None
    except Conflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    process = await project_row(app, user.user_id, project_id, Process, process_id)
    tell_seq(response, seq)
    return {**process_out(process), "seq": seq}


@router.get("/{process_id}/result", response_class=StreamingResponse)
async def download_result(project_id: Id, process_id: Id, user: CurrentUser, app: App) -> Any:
    """The artefact of a succeeded process that makes one (``export``: the zip)."""
    process = await project_row(app, user.user_id, project_id, Process, process_id)
    kind = KINDS.get(process.kind)
    if kind is None or kind.artefact is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{process.kind} makes no downloadable")
    return _serve(app, process, kind.artefact)


@router.get("/{process_id}/result/{name}", response_class=StreamingResponse)
async def download_result_file(
    project_id: Id, process_id: Id, name: PathFileName, user: CurrentUser, app: App
) -> Any:
    """One named output file of a succeeded process (``thumbnails``: ``<file id>.<ext>``)."""
    process = await project_row(app, user.user_id, project_id, Process, process_id)
    return _serve(app, process, name)


RESULT_GONE = "the result was deleted after TIDINGS_RESULT_RETENTION; run the process again"
RESULT_CHUNK = 64 * 1024  # bytes read from a result file at a time


def _serve(app: App, process: Process, name: str) -> StreamingResponse:
    """The file, opened before the answer starts: a sweep (any node's) that removes it
    meanwhile leaves the open file readable to its end, where a response that opened it
    only once its headers were sent broke off mid-body."""
    if process.status != Status.SUCCEEDED:
        raise HTTPException(status.HTTP_409_CONFLICT, f"process is {process.status}")
    if process.result_deleted_at is not None:
        raise HTTPException(status.HTTP_410_GONE, RESULT_GONE)
    path = app.processes.output(process.project_id, process.id, name)
    if path is None:
        raise not_found("result file")
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise HTTPException(status.HTTP_410_GONE, RESULT_GONE) from None
    size = os.fstat(handle.fileno()).st_size
    guessed, _ = mimetypes.guess_type(name)
    return StreamingResponse(
        _chunks(handle),
        media_type=served_type(guessed or "application/octet-stream"),
        headers={**download_headers(name), "Content-Length": str(size)},
        background=BackgroundTask(handle.close),
    )


async def _chunks(handle: BinaryIO) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(handle.read, RESULT_CHUNK):
        yield chunk


async def process_driver(project_id: Id, process_id: Id, request: Request, app: App) -> None:
    """Who may report on a process: its worker token, or the user who started it.

    A worker token is good for its own process only, and only while it is queued or
    running (401 otherwise, as for any unknown credential). Another member of the
    project gets 403; someone who cannot see the project 404.
    """
    token = bearer_token(request.headers.get("authorization"))
    if token is not None and token.startswith(WORKER_TOKEN_PREFIX):
        async with app.db.read() as session:
            found = await session.scalar(
                select(Process.id).where(
                    Process.id == process_id,
                    Process.project_id == project_id,
                    Process.worker_token_hash == hash_secret(token),
                    status_in(ACTIVE),
                )
            )
        if found is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "not authenticated",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return
    user = await current_user(request, app)
    process = await project_row(app, user.user_id, project_id, Process, process_id)
    if process.created_by != user.user_id:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "only the process's worker token or the user who started it may report on it",
        )


Driver = Depends(process_driver)


@router.post(
    "/{process_id}/progress", status_code=status.HTTP_204_NO_CONTENT, dependencies=[Driver]
)
async def report_progress(project_id: Id, process_id: Id, body: ProgressIn, app: App) -> Response:
    """An external worker's progress (0.0-1.0). 409 outside that range, for a finished
    process, or for a built-in kind (the server reports those itself)."""
    if not valid_fraction(body.progress):
        raise HTTPException(status.HTTP_409_CONFLICT, "progress must be within 0.0-1.0")
    try:
        await app.processes.report(project_id, process_id, body.progress, body.message[:1000])
    except NotFound:
        raise not_found("process") from None
    except Conflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{process_id}/complete", response_model=ProcessChanged, dependencies=[Driver])
async def complete_process(
    project_id: Id, process_id: Id, body: CompleteIn, app: App, response: Response
) -> Any:
    """An external worker's end: ``succeeded`` with ``result``, or ``failed`` with ``error``.
    The worker token stops working with it."""
    if body.result is not None and len(orjson.dumps(body.result)) > MAX_RESULT_BYTES:
        raise _invalid(("result",), "result is too large", None)
    error = (body.error or "failed")[:1000] if body.status == "failed" else None
    try:
        row, seq = await app.processes.complete(
            project_id, process_id, Status(body.status), body.result, error
        )
    except NotFound:
        raise not_found("process") from None
    except Conflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    tell_seq(response, seq)
    return {**process_out(row), "seq": seq}
