"""``/api/projects/{id}/events``: a project's event history, and publishing custom events.

The history serves the very frames the socket sends, from the same log, in ``seq`` order.
Publishing lets other services tell the UI about their own changes through that log:
a durable ``custom.*`` event is numbered, logged, replayed and recovered like a built-in
one; an ephemeral one is only fanned out, like ``process.progress``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tidings.access import sees, visible_project
from tidings.api.deps import App, CurrentUser, not_found, tell_seq
from tidings.api.paging import Limit
from tidings.api.schemas import Body
from tidings.api.validation import INT64_MAX, Id
from tidings.db import Tx, after_commit
from tidings.events import CUSTOM_TYPE, log_bounds, logged_after, take_seq
from tidings.idempotency import KEY_PATTERN, KeyReused, claim, fingerprint, settle
from tidings.settings import KiB

# A page of history holds at most this many bytes of events (a thousand 1 MiB events
# must not be read into memory for one request).
PAGE_BYTES = 4 * 1024 * 1024

router = APIRouter(prefix="/api/projects/{project_id}/events", tags=["events"])

MAX_DATA_BYTES = 64 * KiB  # of a published event's `data`, encoded as JSON
REPLAYED_HEADER = "Idempotent-Replayed"


class EventPage(BaseModel):
    events: list[dict[str, Any]] = Field(
        description="the events after `after`, as the socket sends them, in seq order"
    )
    oldest: int = Field(description="the oldest seq the log still holds (latest + 1: none)")
    latest: int = Field(description="the project's newest seq")


class HistoryGone(BaseModel):
    detail: str
    oldest: int


class PublishIn(Body):
    type: str = Field(
        max_length=71,
        pattern=f"^{CUSTOM_TYPE.pattern}$",
        description="`custom.` and a name of lower-case letters, digits, `_`, `.` and `-`",
    )
    data: dict[str, Any] = Field(
        default_factory=dict, description=f"any JSON object, at most {MAX_DATA_BYTES} bytes"
    )
    durable: bool = Field(
        default=True,
        strict=True,  # true or false, not "yes" or 0
        description="false: fanned out only, never logged (no seq, no replay)",
    )


class Published(BaseModel):
    seq: int | None = Field(default=None, description="the event's seq (durable events only)")


@router.get(
    "",
    response_model=EventPage,
    responses={status.HTTP_410_GONE: {"model": HistoryGone}},
)
async def history(
    project_id: Id,
    user: CurrentUser,
    app: App,
    after: int = Query(default=0, ge=0, le=INT64_MAX, description="the last seq already seen"),
    limit: Limit = 100,
) -> Any:
    """The events with ``seq > after``, oldest first, at most ``limit`` and at most
    :data:`PAGE_BYTES` of them (but always one): page on with ``after`` = the last seq.
    410 (with the ``oldest`` seq still kept) when some of them are no longer in the log."""
    async with app.db.snapshot() as session:  # the events and bounds of one moment
        bounds = await log_bounds(session, project_id, user.user_id)
        if bounds is None:
            raise not_found()
        oldest, latest = bounds
        if after + 1 < oldest:
            return JSONResponse(
                {"detail": "events after this seq are no longer kept", "oldest": oldest},
                status.HTTP_410_GONE,
            )
        events = await logged_after(session, project_id, after, limit, PAGE_BYTES)
    # The logged frames are JSON already: joined, not decoded and encoded again.
    body = b"".join(
        (
            b'{"events":[',
            b",".join(e.frame.encode() for e in events),
            b'],"oldest":%d,"latest":%d}' % (oldest, latest),
        )
    )
    return Response(body, media_type="application/json")


@router.post(
    "",
    response_model=Published,
    response_model_exclude_none=True,
    status_code=status.HTTP_201_CREATED,
    responses={status.HTTP_202_ACCEPTED: {"description": "ephemeral: fanned out, no seq"}},
)
async def publish(
    project_id: Id,
    body: PublishIn,
    user: CurrentUser,
    app: App,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=KEY_PATTERN,
            description="retries with the same key (per project, kept 24 h) answer the "
            "first result again and publish nothing",
        ),
    ] = None,
) -> Any:
    """Publish a ``custom.*`` event to the project's subscribers (members only).

    Durable (the default): logged and numbered like any change, 201 with its ``seq`` (also
    in ``Tidings-Seq``). Ephemeral (``"durable": false``): fanned out only, 202.
    """
    if len(orjson.dumps(body.data)) > MAX_DATA_BYTES:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", "data"),
                    "msg": f"data must be at most {MAX_DATA_BYTES} bytes of JSON",
                }
            ]
        )
    answer = status.HTTP_201_CREATED if body.durable else status.HTTP_202_ACCEPTED
    response.status_code = answer
    event = {"data": body.data}
    if idempotency_key is None and not body.durable:
        async with app.db.read() as session:
            if not await sees(session, user.user_id, project_id):
                raise not_found()
        await app.eventlog.publish_ephemeral(project_id, body.type, event)
        return {}
    if idempotency_key is None:  # the hot path: one statement takes the seq, one logs

        def log(tx: Tx) -> int:
            taken = take_seq(tx, project_id, seen_by=user.user_id)
            if taken is None:
                raise not_found()
            return app.eventlog.log(tx, project_id, taken, body.type, event)

        seq = await app.db.commit(log, key=project_id)
        tell_seq(response, seq)
        return {"seq": seq}
    async with app.db.write() as session:
        if await visible_project(session, user.user_id, project_id, for_update=True) is None:
            raise not_found()
        request = fingerprint([body.type, body.durable, body.data])
        try:
            first = await claim(
                session,
                app.db.dialect,
                project_id,
                idempotency_key,
                request,
                answer,
                datetime.now(UTC),
            )
        except KeyReused:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "this Idempotency-Key was used for a different request",
            ) from None
        if first is not None:
            response.status_code = first.status
            response.headers[REPLAYED_HEADER] = "true"
            tell_seq(response, first.seq)
            return {"seq": first.seq}
        logged: int | None = None
        if body.durable:
            logged = await app.eventlog.record(session, project_id, body.type, event)
            await settle(session, project_id, idempotency_key, logged)
        else:

            async def fan_out() -> None:
                await app.eventlog.publish_ephemeral(project_id, body.type, event)

            after_commit(session, fan_out)
    tell_seq(response, logged)
    return {"seq": logged}
