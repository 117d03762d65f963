"""The event log and the envelope events travel in.

Durable events are written by :meth:`EventLog.record` inside the same write transaction
as the change they describe, numbered per project (1, 2, 3 … without gaps, by bumping
``projects.last_seq`` in that transaction), and handed to the broker only after the
commit. Ephemeral events (``process.progress``) skip the log.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Executable, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tidings import schema
from tidings.access import memberships, visible_to
from tidings.batches import Batches
from tidings.broker import Broker
from tidings.db import Database, Tx, after_commit, listed
from tidings.models import EVENTS, PROJECTS, Event

logger = logging.getLogger("tidings.events")

# Durable event types.
PROJECT_CREATED = "project.created"
PROJECT_UPDATED = "project.updated"
PROJECT_DELETED = "project.deleted"
FILE_UPLOADED = "file.uploaded"
FILE_DELETED = "file.deleted"
PROCESS_STARTED = "process.started"
PROCESS_COMPLETED = "process.completed"
# Ephemeral.
PROCESS_PROGRESS = "process.progress"
# Published by other services (POST /api/projects/{id}/events), durable or ephemeral.
CUSTOM_TYPE = re.compile(schema.CUSTOM_TYPE)
CUSTOM_PREFIX = schema.CUSTOM_PREFIX
# Control messages between nodes (never sent to clients as such).
SESSION_REVOKED = "control.session_revoked"
MEMBER_REMOVED = "control.member_removed"


# What a control message lost on its way to the other nodes costs (logged with the loss).
_UNPUBLISHED_CONTROL = {
    MEMBER_REMOVED: "the removal's own event still ends the member's subscriptions",
    SESSION_REVOKED: (
        "other nodes refuse the credential, and close its sockets, within 10 s (their "
        "credential caches expire; they check their open connections' credentials)"
    ),
}


# ``values(last_seq=NEXT_SEQ)``: the next seq of the project, taken in the statement that
# row-locks it (see EventLog.log).
NEXT_SEQ = PROJECTS.c.last_seq + 1

# The statements of the hot paths, built once (see models.PROJECTS and db.listed).
_HEADS = select(PROJECTS.c.id, PROJECTS.c.last_seq).where(PROJECTS.c.id.in_(listed("ids")))
_OWNERS = select(PROJECTS.c.id, PROJECTS.c.owner_id).where(PROJECTS.c.id.in_(listed("ids")))
# Takes the project's next seq; callers add what it should hand back (RETURNING).
SEQ_BUMP = (
    update(PROJECTS).where(PROJECTS.c.id == bindparam("project_id")).values(last_seq=NEXT_SEQ)
)
_TAKE_SEQ = SEQ_BUMP.returning(PROJECTS.c.last_seq)
_TAKE_SEQ_IF_VISIBLE = _TAKE_SEQ.where(visible_to(bindparam("user_id")))
_LOG = insert(EVENTS)
_TRIM = delete(EVENTS).where(
    EVENTS.c.project_id == bindparam("project_id"), EVENTS.c.seq <= bindparam("upto")
)
# A user's view of the project's log bounds: (latest, oldest logged seq or NULL).
_BOUNDS = select(
    PROJECTS.c.last_seq,
    select(func.min(EVENTS.c.seq)).where(EVENTS.c.project_id == PROJECTS.c.id).scalar_subquery(),
).where(PROJECTS.c.id == bindparam("project_id"), visible_to(bindparam("user_id")))
# A page of the log: events after `after`, at most `limit`, none past `upto`; and the sizes
# of the frames such a page would hold, read first when the page is bounded in bytes.
_AFTER = (EVENTS.c.project_id == bindparam("project_id"), EVENTS.c.seq > bindparam("after"))
_SIZES = (
    select(EVENTS.c.seq, func.length(EVENTS.c.frame))
    .where(*_AFTER)
    .order_by(EVENTS.c.seq)
    .limit(bindparam("limit"))
)
_PAGE = (
    select(EVENTS.c.seq, EVENTS.c.type, EVENTS.c.frame)
    .where(*_AFTER, EVENTS.c.seq <= bindparam("upto"))
    .order_by(EVENTS.c.seq)
    .limit(bindparam("limit"))
)
_NO_SEQ_AFTER = 2**63 - 1  # `upto` of a page bounded by its count alone


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339, UTC, milliseconds, ``Z``: ``2026-11-25T16:28:35.123Z``."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One broker message: routing header plus the client frame, encoded once at the source.

    ``audience``: users who get the frame even without a subscription (``project.*``).
    ``coalesce``: queued frames with the same key replace each other (progress updates).
    ``data``: payload of control messages.
    ``revoked``: users who may no longer see the project from this event on (a member
    removed): every node ends their subscriptions as it fans this event out.
    """

    type: str
    frame: bytes = b""
    project_id: str | None = None
    seq: int | None = None
    audience: tuple[str, ...] = ()
    coalesce: str | None = None
    data: dict[str, Any] | None = None
    revoked: tuple[str, ...] = ()

    def encode(self) -> bytes:
        header = {
            "t": self.type,
            "p": self.project_id,
            "s": self.seq,
            "a": self.audience,
            "c": self.coalesce,
            "d": self.data,
            "r": self.revoked,
        }
        return orjson.dumps(header) + b"\n" + self.frame

    @classmethod
    def decode(cls, raw: bytes) -> Envelope:
        head, _, frame = raw.partition(b"\n")
        h = orjson.loads(head)
        return cls(
            type=h["t"],
            frame=frame,
            project_id=h["p"],
            seq=h["s"],
            audience=tuple(h["a"] or ()),
            coalesce=h["c"],
            data=h["d"],
            revoked=tuple(h.get("r") or ()),
        )


async def log_bounds(
    session: AsyncSession, project_id: str, user_id: str
) -> tuple[int, int] | None:
    """:meth:`EventLog.bounds` in ``session``'s transaction (to read more in the same one).

    ``oldest`` is ``latest + 1`` when the log holds nothing of the project."""
    params = {"project_id": project_id, "user_id": user_id}
    row = (await session.execute(_BOUNDS, params)).first()
    if row is None:
        return None
    latest, first = row
    return (first if first is not None else latest + 1, latest)


async def next_seq(session: AsyncSession, project_id: str) -> int | None:
    """Take the project's next seq (for :meth:`EventLog.record`) if it exists, in one
    statement that also row-locks it; else None."""
    seq = await session.scalar(_TAKE_SEQ, {"project_id": project_id})
    return None if seq is None else int(seq)


def take_seq(tx: Tx, project_id: str, seen_by: str) -> int | None:
    """Take the project's next seq (for :meth:`EventLog.log`) if it exists and ``seen_by``
    may see it, in one statement that also row-locks it; else None. In a transaction of
    :meth:`Database.commit`."""
    seq = tx.scalar(_TAKE_SEQ_IF_VISIBLE, {"project_id": project_id, "user_id": seen_by})
    return None if seq is None else int(seq)


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    seq: int
    type: str
    frame: str


def fit(events: Iterable[LoggedEvent], limit: int, max_bytes: int | None) -> list[LoggedEvent]:
    """The first of ``events`` a page holds: at most ``limit``, and with ``max_bytes``
    no more frames than fit in that many bytes, but always the first one however large,
    so that a reader makes progress (the rule of :func:`logged_after`)."""
    page: list[LoggedEvent] = []
    used = 0
    for event in events:
        used += len(event.frame)
        if len(page) == limit or (page and max_bytes is not None and used > max_bytes):
            break
        page.append(event)
    return page


class EventLog:
    """Writes durable events, publishes envelopes, and reads the log back for resume."""

    def __init__(self, db: Database, broker: Broker, history: int, channel: str) -> None:
        self.db = db
        self.broker = broker
        self.history = history
        self.channel = channel
        self.pages = PageReader(db)

    async def record(
        self,
        session: AsyncSession,
        project_id: str,
        type: str,
        body: dict[str, Any] | Callable[[int], dict[str, Any]],
        audience: Iterable[str] = (),
        revoked: Iterable[str] = (),
    ) -> int:
        """Log a durable event in ``session``'s write transaction; publish it after commit.

        ``body`` may be a function of the new seq. Returns the seq. ``revoked``: users who
        lose access to the project with this change (see :class:`Envelope`). Bumping
        ``projects.last_seq`` row-locks the project (PostgreSQL) or holds the write lock
        (SQLite), so concurrent changes get consecutive numbers.
        """
        seq = await next_seq(session, project_id)
        if seq is None:
            raise LookupError(f"project {project_id} does not exist")
        for statement, params in self._entry(
            session, project_id, seq, type, body, audience, revoked
        ):
            await session.execute(statement, params)
        return seq

    def log(
        self,
        tx: Tx,
        project_id: str,
        seq: int,
        type: str,
        body: dict[str, Any],
        audience: Iterable[str] = (),
        revoked: Iterable[str] = (),
    ) -> int:
        """:meth:`record`, in a transaction of :meth:`Database.commit`, for a caller that
        has bumped ``projects.last_seq`` to ``seq`` itself (:func:`take_seq`, or
        ``values(last_seq=NEXT_SEQ)`` in the UPDATE … RETURNING that makes its change: one
        statement fewer). Returns ``seq``."""
        for statement, params in self._entry(tx, project_id, seq, type, body, audience, revoked):
            tx.execute(statement, params)
        return seq

    def _entry(
        self,
        transaction: AsyncSession | Tx,
        project_id: str,
        seq: int,
        type: str,
        body: dict[str, Any] | Callable[[int], dict[str, Any]],
        audience: Iterable[str],
        revoked: Iterable[str],
    ) -> list[tuple[Executable, dict[str, Any]]]:
        """The statements that log an event in ``transaction`` (its row, and the trim the
        retention asks for); its envelope is published once that transaction commits."""
        if callable(body):
            body = body(seq)
        frame = encode(
            {"type": type, "project_id": project_id, "seq": seq, "timestamp": timestamp(), **body}
        )
        row = {
            "project_id": project_id,
            "seq": seq,
            "type": type,
            "frame": frame.decode(),
            "created_at": datetime.now(UTC),
        }
        envelope = Envelope(
            type=type,
            frame=frame,
            project_id=project_id,
            seq=seq,
            audience=tuple(audience),
            revoked=tuple(revoked),
        )
        after_commit(transaction, lambda: self._publish_committed(envelope))
        statements: list[tuple[Executable, dict[str, Any]]] = [(_LOG, row)]
        if seq > self.history and seq % self._trim_every() == 0:
            statements.append((_TRIM, {"project_id": project_id, "upto": seq - self.history}))
        return statements

    def _trim_every(self) -> int:
        # The log is trimmed back to ``history`` events at every hundredth of that many
        # seqs: it holds up to 1 % more between trims, and a change to a project whose
        # log is full spends no statement on it the other 99 times.
        return max(1, self.history // 100)

    def oldest_kept(self, latest: int) -> int:
        """The oldest seq retention keeps of a project whose latest is ``latest``."""
        trimmed_at = latest - latest % self._trim_every()
        return max(1, trimmed_at - self.history + 1)

    async def _publish_committed(self, envelope: Envelope) -> None:
        """After the commit the event is in the log: a publish that fails (the broker is
        down or hangs) costs its subscribers latency, not the event, which they read from
        the log (head sync, or the gap the next event reveals). One line in the log for
        each, not a traceback: an outage fails every publish."""
        try:
            await self.publish(envelope)
        except Exception as exc:
            if envelope.seq is None:  # a control message
                what = f"{envelope.type} {envelope.data}"
                effect = _UNPUBLISHED_CONTROL.get(envelope.type, "other nodes miss it")
            else:
                what = f"event {envelope.seq} of project {envelope.project_id}"
                effect = "subscribers read it from the log"
            logger.warning("%s not published (%s: %s); %s", what, type(exc).__name__, exc, effect)

    async def forget_project(self, session: AsyncSession, project_id: str, keep_from: int) -> None:
        """Drop a deleted project's history, keeping its ``project.deleted`` tombstone."""
        await session.execute(
            delete(Event).where(Event.project_id == project_id, Event.seq < keep_from)
        )

    async def publish(self, envelope: Envelope) -> None:
        await self.broker.publish(self.channel, envelope.encode())

    async def publish_ephemeral(
        self, project_id: str, type: str, body: dict[str, Any], coalesce: str | None = None
    ) -> None:
        frame = encode({"type": type, "project_id": project_id, "timestamp": timestamp(), **body})
        await self.publish(
            Envelope(type=type, frame=frame, project_id=project_id, coalesce=coalesce)
        )

    async def publish_control(self, type: str, data: dict[str, Any]) -> None:
        """A control message for every node, once its change has committed: a failed
        publish is one line in the log (as an event's), for the change stands."""
        await self._publish_committed(Envelope(type=type, data=data))

    async def bounds(self, project_id: str, user_id: str) -> tuple[int, int] | None:
        """``(oldest retained seq, latest seq)`` of a project ``user_id`` can see, else None.

        One query: the access check and the log bounds of a subscription together.
        """
        async with self.db.read() as session:
            return await log_bounds(session, project_id, user_id)

    async def heads(self, project_ids: Sequence[str]) -> dict[str, int]:
        """Latest seq of each existing project among ``project_ids``."""
        async with self.db.read() as session:
            rows = await session.execute(_HEADS, {"ids": list(project_ids)})
            return {pid: seq for pid, seq in rows}

    async def read_after(
        self, project_id: str, after: int, limit: int, max_bytes: int | None = None
    ) -> list[LoggedEvent]:
        """:func:`logged_after`, in a read transaction of its own."""
        async with self.db.read() as session:
            return await logged_after(session, project_id, after, limit, max_bytes)

    async def read_visible_after(
        self,
        project_id: str,
        user_id: str,
        after: int,
        limit: int,
        max_bytes: int | None = None,
    ) -> list[LoggedEvent] | None:
        """:func:`logged_after` for a reader who must still see the project: None if
        ``user_id`` may no longer see it (a deleted project's tombstone is still read).

        The access check and the page come from one snapshot: a page read after a member
        was removed holds no event of theirs to see, even when the broker lost the news.
        Reads asked for at the same time go together (:class:`PageReader`).
        """
        return await self.pages.read(project_id, user_id, after, limit, max_bytes)


async def logged_after(
    session: AsyncSession,
    project_id: str,
    after: int,
    limit: int,
    max_bytes: int | None = None,
) -> list[LoggedEvent]:
    """Up to ``limit`` logged events of the project with ``seq > after``, in seq order;
    with ``max_bytes``, no more frames than fit in that many bytes — but always the first
    one, however large, so a reader makes progress. The sizes are read first, then only
    the frames that fit: a page never holds more than its reader has room for."""
    params = {"project_id": project_id, "after": after, "limit": limit, "upto": _NO_SEQ_AFTER}
    if max_bytes is not None:
        last, total = after, 0
        for seq, size in await session.execute(_SIZES, params):
            total += size
            if total > max_bytes and last > after:
                break
            last = seq
        if last == after:
            return []
        params["upto"] = last
    rows = await session.execute(_PAGE, params)
    return [LoggedEvent(seq, type_, frame) for seq, type_, frame in rows]


PAGE_BATCH = 500  # replay pages answered by one batched read, at most
PAGE_BYTES = 1024 * 1024  # frame bytes of a replay page, at most (but one event)
# Replay pages kept after their read, by frame bytes: clients back after a restart replay
# the same few pages, most of them not in the same batch.
PAGE_CACHE_BYTES = 8 * 1024 * 1024

_PageRequest = tuple[str, str, int, int, "int | None"]  # project, user, after, limit, bytes
_PageKey = tuple[str, int, int, "int | None"]  # project, after, limit, room


class PageReader:
    """Replay pages for readers who must still see their project, read in batches.

    :meth:`read` answers what :meth:`EventLog.read_visible_after` promises. Reads asked
    for while a batch is being read wait for it and go together in the next one: one
    snapshot for the whole batch and one access query for all its (project, user) pairs.
    A page (project, cursor, limit) is read with :data:`PAGE_BYTES` of room, whatever
    room its readers have (up to that), then cut to each reader's; so one read serves
    every reader of the page, and the page is kept (up to ``cache_bytes`` of frames, the
    least recently used going first) for the readers of later batches. That is what a
    node sees when its clients come back at once after a restart: thousands of replays,
    most of them of the same few pages, and its memory tails still empty.

    A kept page is the log as it was when read: events are never changed once logged,
    so a later reader gets what a read would give it then, but perhaps fewer of the
    newest events (its replay reads on from where the page ends) and perhaps events
    trimmed by retention since (which its reader could see: access is read in each
    batch's snapshot, for every reader). A deleted project's page is never taken from
    memory: its log is its tombstone now.
    """

    def __init__(
        self, db: Database, batch: int = PAGE_BATCH, cache_bytes: int = PAGE_CACHE_BYTES
    ) -> None:
        self.db = db
        self.cache_bytes = cache_bytes
        self.pages = 0  # pages read from the database (for tests)
        self._cache: OrderedDict[_PageKey, tuple[list[LoggedEvent], int]] = OrderedDict()
        self._cached_bytes = 0
        self._batches: Batches[_PageRequest, list[LoggedEvent] | None]
        self._batches = Batches(self._query, batch)

    @property
    def queries(self) -> int:
        """Batched reads made (for tests)."""
        return self._batches.batches

    async def read(
        self, project_id: str, user_id: str, after: int, limit: int, max_bytes: int | None
    ) -> list[LoggedEvent] | None:
        # Each reader its own list: a page is cut to each reader's room.
        return await self._batches.ask((project_id, user_id, after, limit, max_bytes))

    async def _query(self, batch: list[_PageRequest]) -> list[list[LoggedEvent] | None]:
        projects = {request[0] for request in batch}
        users = {request[1] for request in batch}
        async with self.db.snapshot() as session:
            rows = await session.execute(_OWNERS, {"ids": list(projects)})
            owners: dict[str, str] = {pid: owner for pid, owner in rows}
            members = await memberships(session, owners, users)
            pages: dict[_PageKey, list[LoggedEvent]] = {}
            for project_id, user_id, after, limit, max_bytes in batch:
                key = (project_id, after, limit, _room(max_bytes))
                if key in pages or not _sees(owners, members, project_id, user_id):
                    continue
                page = self._kept(key) if project_id in owners else None
                if page is None:
                    self.pages += 1
                    page = await logged_after(session, project_id, after, limit, key[3])
                    if project_id in owners:
                        self._keep(key, page)
                pages[key] = page
        answers: list[list[LoggedEvent] | None] = []
        for project_id, user_id, after, limit, max_bytes in batch:
            key = (project_id, after, limit, _room(max_bytes))
            if key not in pages or not _sees(owners, members, project_id, user_id):
                answers.append(None)  # the project is there, but not for this user
            else:
                answers.append(fit(pages[key], limit, max_bytes))
        return answers

    def _kept(self, key: _PageKey) -> list[LoggedEvent] | None:
        kept = self._cache.get(key)
        if kept is None:
            return None
        self._cache.move_to_end(key)
        return kept[0]

    def _keep(self, key: _PageKey, page: list[LoggedEvent]) -> None:
        size = sum(len(event.frame) for event in page)
        if key[3] is None or size > self.cache_bytes // 4:
            return  # unbounded, or too large to be worth its room
        self._cache[key] = (page, size)
        self._cached_bytes += size
        while self._cached_bytes > self.cache_bytes:
            _, (_, evicted) = self._cache.popitem(last=False)
            self._cached_bytes -= evicted


def _room(max_bytes: int | None) -> int | None:
    """The room a page is read with for a reader with ``max_bytes`` of it."""
    return PAGE_BYTES if max_bytes is not None and max_bytes <= PAGE_BYTES else max_bytes


def _sees(
    owners: dict[str, str], members: set[tuple[str, str]], project_id: str, user: str
) -> bool:
    """Whether ``user`` may read the project's log: its owner or a member, or anyone if
    the project is gone (a deleted project's tombstone is still read)."""
    owner = owners.get(project_id)
    return owner is None or owner == user or (project_id, user) in members
