"""The process runner: a bounded pool of worker threads driven from the event loop.

Built-in kinds wait ``queued`` in this node's memory until one of
``max_concurrent_processes`` slots is free, then run their blocking work in a thread
(``asyncio.to_thread``); the loop only polls their :class:`Progress` every
``progress_interval`` and publishes ``process.progress``. Cancelling sets the progress's
stop flag, which the work checks between chunks.

Crash safety is a lease: this node renews ``heartbeat_at`` of the processes it holds every
``process_lease / 3`` seconds, and any node fails a built-in process whose lease is stale
(``interrupted``), at start and periodically. On a clean shutdown the node fails its own
processes at once. ``external`` processes are exempt: their worker lives elsewhere; one
that has not reported for ``external_timeout`` fails as ``timeout`` instead.

Every node also sweeps, every ``sweep_interval``, a bounded batch of succeeded processes
older than ``result_retention`` and deletes their results. Every sweep moves each row by
compare-and-set, so nodes sweeping at once never act twice on one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db import Database, after_commit, listed
from tidings.events import PROCESS_COMPLETED, PROCESS_PROGRESS, PROCESS_STARTED, EventLog
from tidings.models import Process
from tidings.outages import log_failure
from tidings.processes.kinds import Kind
from tidings.processes.state import (
    ACTIVE,
    INTERRUPTED,
    TIMEOUT,
    Cancelled,
    Gate,
    Progress,
    Status,
)
from tidings.processes.store import move, process_out, source_files, status_in
from tidings.processes.work import Work
from tidings.settings import Settings
from tidings.stopping import cancel_and_wait
from tidings.storage import Storage

logger = logging.getLogger("tidings.processes")

# The built-in poller's floor, so that progress_interval=0 cannot spin the loop.
MIN_POLL = 0.02
STOP_GRACE = 10.0  # seconds a shutdown waits for worker threads to notice the stop flag
SWEEP_BATCH = 100  # processes one sweep pass handles at most, per kind of sweep

# The lease of this node's processes renewed (see db.listed): which are still active.
_HEARTBEAT = (
    update(Process)
    .where(Process.id.in_(listed("ids")), status_in(ACTIVE))
    .values(heartbeat_at=bindparam("now"))
    .returning(Process.id)
)


class NotFound(Exception):
    pass


class Conflict(Exception):
    """The request is well-formed but the process is not in a state that allows it."""


class Busy(Exception):
    """The project already has ``max_active_processes`` queued or running."""

    def __init__(self, active: int, limit: int) -> None:
        super().__init__(f"the project has {active} queued or running processes (at most {limit})")


@dataclass
class Outcome:
    status: Status
    result: Any = None
    error: str | None = None


@dataclass(eq=False)
class Job:
    """A built-in process held by this node, queued or running."""

    id: str
    project_id: str
    kind: Kind
    params: BaseModel
    status: Status = Status.QUEUED
    progress: Progress = field(default_factory=Progress)
    task: asyncio.Task[None] | None = None
    completed_seq: int | None = None  # the seq of its process.completed, once recorded


@dataclass(eq=False)
class Feed:
    """Throttle state of an external process's reports on this node."""

    gate: Gate
    pending: tuple[float, str] | None = None
    timer: asyncio.Task[None] | None = None


class ProcessRunner:
    def __init__(
        self, settings: Settings, db: Database, eventlog: EventLog, storage: Storage
    ) -> None:
        self.db = db
        self.eventlog = eventlog
        self.storage = storage
        self.results_dir = settings.results_dir
        self.limit = settings.max_concurrent_processes
        self.interval = settings.progress_interval
        self.lease = settings.process_lease
        self.max_active = settings.max_active_processes
        self.retention = settings.result_retention
        self.external_timeout = settings.external_timeout
        self.sweep_interval = settings.sweep_interval
        self._jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._feeds: dict[str, Feed] = {}
        self._lease_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def active_count(self) -> int:
        """How many built-in processes this node holds now, queued or running."""
        return len(self._jobs)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Fail what a dead node left behind, then keep this node's leases fresh."""
        await asyncio.to_thread(self.results_dir.mkdir, parents=True, exist_ok=True)
        await self.sweep()
        self._lease_task = asyncio.create_task(self._keep_lease(), name="tidings-process-lease")
        self._sweep_task = asyncio.create_task(self._keep_sweeping(), name="tidings-sweep")

    async def stop(self) -> None:
        """Stop every worker and fail this node's processes as ``interrupted``."""
        self._stopping = True
        await cancel_and_wait(t for t in (self._lease_task, self._sweep_task) if t is not None)
        queued = list(self._queue)
        self._queue.clear()
        running = [job for job in self._jobs.values() if job.task is not None]
        for job in running:
            job.progress.stop.set()
        for job in queued:
            self._jobs.pop(job.id, None)
            await self._finish(job, Outcome(Status.FAILED, error=INTERRUPTED))
        tasks = [job.task for job in running if job.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE)
        for feed in self._feeds.values():
            if feed.timer is not None:
                feed.timer.cancel()
        self._feeds.clear()

    # -- creating and cancelling ----------------------------------------------------------

    async def create(
        self,
        session: AsyncSession,
        project_id: str,
        user_id: str,
        kind: Kind,
        params: BaseModel,
        worker_token_hash: str | None = None,
    ) -> tuple[Process, int | None]:
        """Insert a process in ``session``'s write transaction; it runs after the commit.

        The caller must hold the project's lock in that transaction (``visible_project(…,
        for_update=True)``): the count of active processes checked here is then exact even
        under concurrent creates. Raises :class:`Busy` at ``max_active_processes``.
        An ``external`` process is ``running`` from here and logs ``process.started`` now:
        the second value is that event's seq (None for a built-in kind, which logs
        nothing until it runs).
        """
        active = await session.scalar(
            select(func.count())
            .select_from(Process)
            .where(
                Process.project_id == project_id,
                status_in(ACTIVE),
            )
        )
        if (active or 0) >= self.max_active:
            raise Busy(active or 0, self.max_active)
        now = datetime.now(UTC)
        process = Process(
            project_id=project_id,
            kind=kind.name,
            params=params.model_dump(mode="json", exclude_none=True),
            status=(Status.RUNNING if kind.external else Status.QUEUED).value,
            progress=0.0,
            message="",
            created_by=user_id,
            created_at=now,
            started_at=now if kind.external else None,
            heartbeat_at=now,
            attempts=1 if kind.external else 0,
            worker_token_hash=worker_token_hash,
        )
        session.add(process)
        await session.flush()
        if kind.external:
            return process, await self._record(session, process, PROCESS_STARTED)
        job = Job(process.id, project_id, kind, params)

        async def enqueue() -> None:
            self._enqueue(job)

        after_commit(session, enqueue)
        return process, None

    async def cancel(self, project_id: str, process_id: str) -> int | None:
        """Stop a queued or running process; it ends ``cancelled``, its output removed.

        Returns once it has ended (a worker notices within one chunk), with the seq of its
        ``process.completed`` (None if another node or a sweep recorded its end). Raises
        NotFound, or Conflict if it had already finished.
        """
        async with self.db.read() as session:
            current = await session.get(Process, process_id)
        if current is None or current.project_id != project_id:
            raise NotFound
        if Status(current.status).finished:
            raise Conflict("process has already finished")
        job = self._jobs.get(process_id)
        if job is not None:
            if job.task is None:
                self._queue.remove(job)
                self._jobs.pop(job.id, None)
                return await self._finish(job, Outcome(Status.CANCELLED))
            job.progress.stop.set()
            await asyncio.shield(job.task)
            return job.completed_seq
        # Not held here: external, or held by another node (its lease renewal notices).
        await self._drop_feed(process_id)
        async with self.db.write() as session:
            row = await move(
                session,
                process_id,
                ACTIVE,
                Status.CANCELLED,
                finished_at=datetime.now(UTC),
                heartbeat_at=None,
            )
            if row is None:
                raise Conflict("process has already finished")
            seq = await self._record(session, row, PROCESS_COMPLETED)
        await self._remove_output(project_id, process_id)
        return seq

    async def project_deleted(self, project_id: str) -> None:
        """The project is gone (its rows too): stop its work, remove its outputs."""
        tasks = []
        for job in [j for j in self._jobs.values() if j.project_id == project_id]:
            job.progress.stop.set()
            if job.task is None:
                self._queue.remove(job)
                self._jobs.pop(job.id, None)
            else:
                tasks.append(job.task)
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE)
        await asyncio.to_thread(shutil.rmtree, self.results_dir / project_id, ignore_errors=True)

    # -- external processes ---------------------------------------------------------------

    async def report(self, project_id: str, process_id: str, progress: float, message: str) -> None:
        """An external worker's progress: stored, and published at most every interval."""
        async with self.db.write() as session:
            row = await self._external_row(session, project_id, process_id)
            row.progress = progress
            row.message = message
            row.heartbeat_at = datetime.now(UTC)
        feed = self._feeds.get(process_id)
        if feed is None:
            feed = self._feeds[process_id] = Feed(Gate(self.interval))
        feed.pending = (progress, message)
        if feed.timer is not None:
            return  # the scheduled emission will carry this newest value
        delay = feed.gate.delay(time.monotonic())
        if delay <= 0:
            await self._flush(project_id, process_id, feed)
        else:
            feed.timer = asyncio.create_task(self._flush_later(project_id, process_id, feed, delay))

    async def complete(
        self, project_id: str, process_id: str, status: Status, result: Any, error: str | None
    ) -> tuple[Process, int]:
        """An external worker's end: ``succeeded`` with a result or ``failed`` with an error.
        Returns the process and the seq of its ``process.completed``."""
        async with self.db.read() as session:
            await self._external_row(session, project_id, process_id)
        await self._drop_feed(process_id)
        if status is Status.SUCCEEDED:
            await self._publish_progress(project_id, process_id, 1.0, "Done")
        async with self.db.write() as session:
            row = await move(
                session,
                process_id,
                [Status.RUNNING],
                status,
                progress=1.0 if status is Status.SUCCEEDED else Process.progress,
                result=result if status is Status.SUCCEEDED else None,
                error=error if status is Status.FAILED else None,
                finished_at=datetime.now(UTC),
                heartbeat_at=None,
            )
            if row is None:
                raise Conflict("process has already finished")
            seq = await self._record(session, row, PROCESS_COMPLETED)
        return row, seq

    async def _external_row(
        self, session: AsyncSession, project_id: str, process_id: str
    ) -> Process:
        row = await session.get(Process, process_id, populate_existing=True)
        if row is None or row.project_id != project_id:
            raise NotFound
        if row.kind != "external":
            raise Conflict("only external processes take progress reports")
        if Status(row.status).finished:
            raise Conflict("process has already finished")
        return row

    async def _flush_later(
        self, project_id: str, process_id: str, feed: Feed, delay: float
    ) -> None:
        await asyncio.sleep(delay)
        feed.timer = None
        await self._flush(project_id, process_id, feed)

    async def _flush(self, project_id: str, process_id: str, feed: Feed) -> None:
        if feed.pending is None:
            return
        progress, message = feed.pending
        feed.pending = None
        feed.gate.sent(time.monotonic())
        await self._publish_progress(project_id, process_id, progress, message)

    async def _drop_feed(self, process_id: str) -> None:
        feed = self._feeds.pop(process_id, None)
        if feed is not None and feed.timer is not None:
            feed.timer.cancel()
            await asyncio.gather(feed.timer, return_exceptions=True)

    # -- running built-in kinds -----------------------------------------------------------

    def _enqueue(self, job: Job) -> None:
        if self._stopping:
            return  # its lease goes stale; the next start fails it as interrupted
        self._jobs[job.id] = job
        self._queue.append(job)
        self._pump()

    def _pump(self) -> None:
        running = sum(1 for job in self._jobs.values() if job.task is not None)
        while running < self.limit and self._queue and not self._stopping:
            job = self._queue.popleft()
            job.task = asyncio.create_task(self._run(job), name=f"tidings-process-{job.id}")
            running += 1

    async def _run(self, job: Job) -> None:
        try:
            outcome = await self._execute(job)
        except Exception as exc:
            logger.exception("process %s (%s) failed", job.id, job.kind.name)
            outcome = Outcome(Status.FAILED, error=f"internal error: {type(exc).__name__}")
        try:
            if outcome is not None:
                await self._finish(job, outcome)
        except Exception:
            logger.exception("could not record the end of process %s", job.id)
        finally:
            self._jobs.pop(job.id, None)
            self._pump()

    async def _execute(self, job: Job) -> Outcome | None:
        """Mark it running, run the work in a thread; None if it was taken away first."""
        now = datetime.now(UTC)
        async with self.db.write() as session:
            row = await move(
                session,
                job.id,
                [Status.QUEUED],
                Status.RUNNING,
                started_at=now,
                heartbeat_at=now,
                attempts=Process.attempts + 1,
            )
            if row is None:
                return None
            job.status = job.status.to(Status.RUNNING)
            await self._record(session, row, PROCESS_STARTED)
            folder = getattr(job.params, "path", None)
            files = await source_files(session, self.storage, job.project_id, folder)
        job.progress.total = sum(f.size for f in files)
        out_dir = self._out_dir(job.project_id, job.id)
        await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
        assert job.kind.run is not None
        done = asyncio.Event()
        reporter = asyncio.create_task(self._poll_progress(job, done))
        try:
            result = await asyncio.to_thread(
                job.kind.run, Work(files, out_dir, job.params, job.progress)
            )
        except Cancelled:
            if self._stopping:
                return Outcome(Status.FAILED, error=INTERRUPTED)
            return Outcome(Status.CANCELLED)
        except Exception as exc:
            logger.warning("process %s (%s) failed: %r", job.id, job.kind.name, exc)
            return Outcome(Status.FAILED, error=f"{type(exc).__name__}: {exc}"[:1000])
        finally:
            # Told, not cancelled: a cancel that lands inside a Redis publish can be lost
            # (redis-py on Python 3.11), and the reporter, and so the process, never ends.
            done.set()
            await reporter
        return Outcome(Status.SUCCEEDED, result=result)

    async def _poll_progress(self, job: Job, done: asyncio.Event) -> None:
        """Publish the worker's progress when it changed, once per interval at most, until
        ``done`` is set."""
        last: tuple[float, str] | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(self.interval, MIN_POLL)):
                    await done.wait()
            if done.is_set():
                return
            now = (round(job.progress.fraction, 4), job.progress.message)
            if now != last:
                last = now
                await self._publish_progress(job.project_id, job.id, *now)

    async def _finish(self, job: Job, outcome: Outcome) -> int | None:
        """Record the end (if nobody else did), emitting the final 1.0 on success first.
        Returns the seq of the ``process.completed`` it recorded, if it did."""
        if outcome.status is Status.SUCCEEDED:
            await self._publish_progress(job.project_id, job.id, 1.0, "Done")
        else:
            await self._remove_output(job.project_id, job.id)
        seq: int | None = None
        try:
            async with self.db.write() as session:
                row = await move(
                    session,
                    job.id,
                    ACTIVE,
                    outcome.status,
                    progress=1.0 if outcome.status is Status.SUCCEEDED else job.progress.fraction,
                    message="Done" if outcome.status is Status.SUCCEEDED else job.progress.message,
                    result=outcome.result,
                    error=outcome.error,
                    finished_at=datetime.now(UTC),
                    heartbeat_at=None,
                )
                if row is not None:
                    job.status = job.status.to(outcome.status)
                    seq = await self._record(session, row, PROCESS_COMPLETED)
        except LookupError:
            seq = None  # the project was deleted meanwhile
        if seq is None and outcome.status is Status.SUCCEEDED:
            await self._remove_output(job.project_id, job.id)
        job.completed_seq = seq
        return seq

    # -- leases ---------------------------------------------------------------------------

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self.renew()
                await self.sweep()
            except Exception as exc:
                log_failure(logger, exc, "process lease renewal failed")

    async def renew(self) -> None:
        """Renew the leases of this node's processes; stop any taken away meanwhile."""
        jobs = list(self._jobs.values())
        if not jobs:
            return
        now = datetime.now(UTC)
        async with self.db.write() as session:
            for job in jobs:
                if job.task is not None:
                    await session.execute(
                        update(Process)
                        .where(Process.id == job.id, Process.status == Status.RUNNING.value)
                        .values(progress=job.progress.fraction, message=job.progress.message)
                    )
            held = set(await session.scalars(_HEARTBEAT, {"ids": [j.id for j in jobs], "now": now}))
        for job in jobs:
            if job.id not in held:  # cancelled elsewhere, swept, or its project deleted
                job.progress.stop.set()
                if job.task is None and job in self._queue:
                    self._queue.remove(job)
                    self._jobs.pop(job.id, None)

    async def sweep(self) -> int:
        """Fail built-in processes whose lease is stale (their node died): ``interrupted``."""
        now = datetime.now(UTC)
        cutoff = now - timedelta(seconds=self.lease)
        async with self.db.write() as session:
            rows = list(
                await session.scalars(
                    update(Process)
                    .where(
                        status_in(ACTIVE),
                        Process.kind != "external",
                        or_(Process.heartbeat_at.is_(None), Process.heartbeat_at < cutoff),
                    )
                    .values(
                        status=Status.FAILED.value,
                        error=INTERRUPTED,
                        finished_at=now,
                        heartbeat_at=None,
                    )
                    .returning(Process),
                    execution_options={"populate_existing": True},
                )
            )
            for row in rows:
                await self._record(session, row, PROCESS_COMPLETED)
        for row in rows:
            logger.warning("process %s (%s) interrupted", row.id, row.kind)
            await self._remove_output(row.project_id, row.id)
        return len(rows)

    # -- timeouts and retention -----------------------------------------------------------

    async def _keep_sweeping(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.time_out_externals()
                await self.expire_results()
            except Exception as exc:
                log_failure(logger, exc, "process sweep failed")

    async def time_out_externals(self) -> int:
        """Fail ``external`` processes without a report for ``external_timeout``: error
        ``timeout``, and their ``process.completed``. At most :data:`SWEEP_BATCH` a pass."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.external_timeout)
        stale = [
            Process.kind == "external",
            Process.status == Status.RUNNING.value,
            Process.heartbeat_at < cutoff,
        ]
        async with self.db.read() as session:
            ids = list(
                await session.scalars(
                    select(Process.id).where(*stale).order_by(Process.id).limit(SWEEP_BATCH)
                )
            )
        timed_out = 0
        for process_id in ids:
            # One transaction each, and the same compare-and-set as a worker's own end: of
            # two nodes sweeping (or a sweep racing a late report), exactly one moves it.
            try:
                async with self.db.write() as session:
                    row = await move(
                        session,
                        process_id,
                        [Status.RUNNING],
                        Status.FAILED,
                        where=stale,
                        error=TIMEOUT,
                        finished_at=datetime.now(UTC),
                        heartbeat_at=None,
                    )
                    if row is not None:
                        await self._record(session, row, PROCESS_COMPLETED)
            except LookupError:
                continue  # its project was deleted meanwhile
            if row is not None:
                timed_out += 1
                await self._drop_feed(process_id)
                logger.warning("external process %s timed out", process_id)
        return timed_out

    async def expire_results(self) -> int:
        """Delete the results of succeeded processes that finished ``result_retention`` ago:
        the files on disk and the ``result`` field (the row stays). At most
        :data:`SWEEP_BATCH` a pass."""
        now = datetime.now(UTC)
        due = [
            Process.status == Status.SUCCEEDED.value,
            Process.result_deleted_at.is_(None),
            Process.finished_at < now - timedelta(seconds=self.retention),
        ]
        async with self.db.read() as session:
            if await session.scalar(select(Process.id).where(*due).limit(1)) is None:
                return 0  # the usual case: no write transaction (nor SQLite lock) for nothing
        async with self.db.write() as session:
            # SKIP LOCKED (PostgreSQL; SQLite's write lock serialises anyway): a node
            # sweeping at the same moment takes other rows, never waits on or deadlocks
            # with this one; the repeated conditions below make a stale pick a no-op.
            candidates = (
                select(Process.id)
                .where(*due)
                .order_by(Process.finished_at)
                .limit(SWEEP_BATCH)
                .with_for_update(skip_locked=True)
            )
            rows = list(
                await session.execute(
                    update(Process)
                    .where(Process.id.in_(candidates.scalar_subquery()), *due)
                    .values(result=None, result_deleted_at=now)
                    .returning(Process.id, Process.project_id)
                )
            )
        # Marked first, then deleted: a crash in between leaves files that nothing serves
        # (410), never a result that points at deleted files.
        for process_id, project_id in rows:
            await self._remove_output(project_id, process_id)
        return len(rows)

    # -- helpers --------------------------------------------------------------------------

    def _out_dir(self, project_id: str, process_id: str) -> Path:
        return self.results_dir / project_id / process_id

    def output(self, project_id: str, process_id: str, name: str) -> Path | None:
        """A result file of a process, if it exists; ``name`` must be a plain file name."""
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            return None
        path = self._out_dir(project_id, process_id) / name
        return path if path.is_file() and not name.endswith(".part") else None

    async def _remove_output(self, project_id: str, process_id: str) -> None:
        out_dir = self._out_dir(project_id, process_id)
        await asyncio.to_thread(shutil.rmtree, out_dir, ignore_errors=True)

    async def _record(self, session: AsyncSession, process: Process, type: str) -> int:
        body = {"process_id": process.id, "process": process_out(process)}
        return await self.eventlog.record(session, process.project_id, type, body)

    async def _publish_progress(
        self, project_id: str, process_id: str, progress: float, message: str
    ) -> None:
        body = {"process_id": process_id, "progress": progress, "message": message}
        with contextlib.suppress(Exception):  # progress is best-effort; never fail the work
            await self.eventlog.publish_ephemeral(
                project_id, PROCESS_PROGRESS, body, coalesce=f"progress:{process_id}"
            )
