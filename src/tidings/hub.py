"""The hub: a node's connections and channels; fan-out, subscriptions, replays.

Events arrive from the broker already encoded. For each one the hub decodes the frame text
once and offers the same string to every target connection, synchronously: no await, no
per-client encoding, no socket I/O in the fan-out loop. Which connection gets what, and
when, is decided by ``delivery.py``; the hub carries the verdicts out (schedules writes,
starts replays from the event log, closes slow consumers).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson

from tidings.broker import create_presence_store
from tidings.codes import CloseCode, ErrorCode
from tidings.connection import Connection
from tidings.delivery import ENDING_TYPES, Step, Subscription, Verdict, snapshot_needed
from tidings.events import (
    CUSTOM_PREFIX,
    MEMBER_REMOVED,
    PAGE_BYTES,
    PROJECT_DELETED,
    PROJECT_UPDATED,
    SESSION_REVOKED,
    Envelope,
    EventLog,
    LoggedEvent,
    encode,
    timestamp,
)
from tidings.frames import Frame
from tidings.messages import Subscribe, Unsubscribe, error
from tidings.metrics import Metrics
from tidings.openings import AccessCache, BoundsReader
from tidings.outages import log_failure
from tidings.presence import PRESENCE_TYPES, Presence
from tidings.snapshot import Opening, Snapshots
from tidings.stopping import cancel_and_wait
from tidings.tails import Tails

logger = logging.getLogger("tidings.hub")

REPLAY_PAGE = 500  # events per read of the log, at most
REPLAY_PAGE_BYTES = PAGE_BYTES  # frame bytes per read of the log, at most (but one event)
# One write in this many feeds the delivery latency histogram: an update per write would
# cost more than the write itself in a large fan-out.
LATENCY_SAMPLE = 16
EXPIRY_CHECK_INTERVAL = 1.0
# After a flush that wrote to this many connections or more, the next waits until
# FLUSH_SPACING seconds after it (Hub._flush): at most 1 / FLUSH_SPACING large flushes a
# second, each carrying whatever arrived since. With 1,000 subscribers and 8 writers this
# took events delivered per second from 0.6-0.9x Node ws's relay to 1.3x (performance.md).
LARGE_FLUSH = 100
FLUSH_SPACING = 0.010
# A presence change alone in a connection's queue is written this much later, with
# whatever joins it meanwhile (anything else queued after it is written at once, taking
# it along): when a node's clients come back together, every arrival is a change for
# each viewer of its project, and each of those was a write of its own.
PRESENCE_WAIT = 0.25


class Expiries:
    """When each credential with open connections expires: a heap, with entries of
    credentials that left (or came back) skipped when they surface and compacted away."""

    __slots__ = ("_at", "_heap")

    def __init__(self) -> None:
        self._at: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def add(self, credential: str, at: float) -> None:
        self._at[credential] = at
        heapq.heappush(self._heap, (at, credential))
        if len(self._heap) > 2 * len(self._at) + 64:
            self._heap = [(t, c) for c, t in self._at.items()]
            heapq.heapify(self._heap)

    def discard(self, credential: str) -> None:
        self._at.pop(credential, None)

    def __len__(self) -> int:
        return len(self._at)

    def pending(self) -> int:
        """Entries in the heap, stale ones included."""
        return len(self._heap)

    def due(self, now: float) -> list[str]:
        """Credentials that expired by ``now``; each is reported once."""
        heap, due = self._heap, []
        while heap and heap[0][0] <= now:
            at, credential = heapq.heappop(heap)
            if self._at.get(credential) == at:
                del self._at[credential]
                due.append(credential)
        return due


class Channel:
    """The connections subscribed to one project, and the newest seq seen for it.

    ``synced``: the log's bounds were read from the database while the channel existed,
    so ``head`` is at least the log's latest seq then, raised by every event seen since
    (it may lag the database only by events whose broker message is still on its way,
    or lost: head sync catches those). ``oldest`` is the oldest seq the log held then.
    ``missed``: the newest seq this node knows it never got from the broker (the whole
    log before the channel's first event, a lost message): the node has seen every event
    in ``missed + 1 .. head``, and so every removal among them.
    """

    __slots__ = ("head", "missed", "oldest", "subscribers", "synced")

    def __init__(self) -> None:
        self.subscribers: dict[Connection, None] = {}  # an ordered set
        self.head = 0
        self.missed = 0
        self.oldest = 0
        self.synced = False


class Hub:
    """Implements :class:`tidings.connection.Owner` for every connection of the node."""

    def __init__(
        self,
        eventlog: EventLog,
        metrics: Metrics,
        *,
        heartbeat_interval: float,
        head_sync_interval: float,
        replay_concurrency: int = 32,
        restart_reason: str = "service restart",
        snapshot_max_files: int = 10_000,
        access_cache_entries: int = 100_000,
        resume_tail_bytes: int = 16 * 1024 * 1024,
        presence: Presence | None = None,
        forget_credential: Callable[[str], None] = lambda credential: None,
        revoked_among: Callable[[list[str]], Awaitable[set[str]]] | None = None,
        credential_check_interval: float = 10.0,
        flush_spacing: float = FLUSH_SPACING,
    ) -> None:
        self.eventlog = eventlog
        # Who views which project (presence.py); in memory unless the app says otherwise.
        self.presence = presence or Presence(
            create_presence_store("memory://", eventlog.channel, 30.0), eventlog, 30.0
        )
        self.snapshots = Snapshots(eventlog.db, snapshot_max_files)
        self.access = AccessCache(access_cache_entries)
        self.bounds = BoundsReader(eventlog.db)
        self.tails = Tails(resume_tail_bytes)
        self.metrics = metrics
        self.heartbeat_interval = heartbeat_interval
        self.head_sync_interval = head_sync_interval
        self.restart_reason = restart_reason
        self.forget_credential = forget_credential  # the credential cache's, on revocation
        # Which open connections' credentials the database says are revoked: asked every
        # `credential_check_interval` seconds, and at once when broker messages may
        # have been lost (a revocation's among them).
        self.revoked_among = revoked_among
        self.credential_check_interval = credential_check_interval
        self._check_now = asyncio.Event()
        self.connections: dict[str, Connection] = {}
        self.by_user: dict[str, set[Connection]] = {}
        self.by_credential: dict[str, set[Connection]] = {}
        self.channels: dict[str, Channel] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._finishing: set[asyncio.Task[None]] = set()  # referenced until they end
        self._ready = asyncio.Event()
        self._dirty: list[Connection] = []
        self._flush_scheduled = False
        self._waiting: list[Connection] = []  # queues holding presence changes only
        self._waiting_flush: asyncio.TimerHandle | None = None
        self.flush_spacing = flush_spacing
        self._next_flush = 0.0  # loop time before which a flush waits (see _flush)
        self._writes = 0
        self._expiries = Expiries()
        # Replays reading the log at once: bounds the database load and the pages in memory.
        self._replay_slots = asyncio.Semaphore(replay_concurrency)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="tidings-hub-listen"),
            asyncio.create_task(self._heartbeat(), name="tidings-hub-heartbeat"),
            asyncio.create_task(self._sync_heads(), name="tidings-hub-heads"),
            asyncio.create_task(self._expire(), name="tidings-hub-expiry"),
        ]
        if self.revoked_among is not None:
            self._tasks.append(
                asyncio.create_task(self._check_credentials(), name="tidings-hub-credentials")
            )
        await asyncio.wait_for(self._ready.wait(), 10)
        await self.presence.start()

    async def stop(self) -> None:
        """Close every socket with 1012 so clients reconnect elsewhere and resume; return
        once no replay reads the database any more."""
        replays: list[asyncio.Task[None]] = []
        for conn in list(self.connections.values()):
            replays += (conn.replays or {}).values()
            conn.close(CloseCode.SERVICE_RESTART, self.restart_reason)  # cancels its replays
        await cancel_and_wait([*self._tasks, *replays])
        if self._waiting_flush is not None:
            self._waiting_flush.cancel()  # every socket is closing: nothing to write
        await self.presence.stop()

    @property
    def running(self) -> bool:
        """True while the hub's background tasks (listener, heartbeat, head sync) run."""
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    # -- connections ----------------------------------------------------------------------

    def register(self, conn: Connection, expires_at: datetime | None = None) -> None:
        """Track ``conn``; with ``expires_at``, close it with 4401 once its credential
        expires (checked every second)."""
        self.connections[conn.client_id] = conn
        self.by_user.setdefault(conn.user_id, set()).add(conn)
        same = self.by_credential.setdefault(conn.credential, set())
        same.add(conn)
        if expires_at is not None and len(same) == 1:
            self._expiries.add(conn.credential, expires_at.timestamp())
        self.metrics.connections.inc()

    def connections_of(self, user_id: str) -> int:
        """Open connections of ``user_id`` on this node."""
        return len(self.by_user.get(user_id, ()))

    def disconnected(self, conn: Connection, code: int | None) -> asyncio.Task[None]:
        self._unregister(conn)
        task = asyncio.get_running_loop().create_task(self._finish(conn, code))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        return task

    def _unregister(self, conn: Connection) -> None:
        if self.connections.pop(conn.client_id, None) is None:
            return
        _discard(self.by_user, conn.user_id, conn)
        if not _discard(self.by_credential, conn.credential, conn):
            self._expiries.discard(conn.credential)
        for project_id in list(conn.subs):
            self._end(conn, project_id)
        self.metrics.connections.dec()

    async def _finish(self, conn: Connection, code: int | None) -> None:
        await conn.finish()
        logger.info(
            "ws disconnect client_id=%s user=%s code=%s server_code=%s duration=%.1fs",
            conn.client_id,
            conn.username,
            code,
            conn.close_code,
            time.monotonic() - conn.started,
        )

    # -- writes (Owner) -------------------------------------------------------------------

    def schedule_flush(self, conn: Connection, later: bool = False) -> None:
        if later:
            self._waiting.append(conn)
            if self._waiting_flush is None:
                loop = asyncio.get_running_loop()
                self._waiting_flush = loop.call_later(PRESENCE_WAIT, self._flush_waiting)
            return
        self._dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop = asyncio.get_running_loop()
            wait = self._next_flush - loop.time()
            if wait > 0:
                loop.call_later(wait, self._flush)
            else:
                loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write every connection that got frames since the last flush: once per loop
        iteration, but after a large fan-out not again for ``flush_spacing`` seconds
        (:data:`FLUSH_SPACING`), so that the events of changes committed meanwhile leave
        together, one write per subscriber for all of them instead of one for each."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()
        if len(dirty) >= LARGE_FLUSH:
            self._next_flush = asyncio.get_running_loop().time() + self.flush_spacing

    def _flush_waiting(self) -> None:
        """Write the presence changes that waited (a queue written meanwhile has nothing
        left to write, or has frames on their way already: its flush is a no-op or
        takes them a little early)."""
        self._waiting_flush = None
        waiting, self._waiting = self._waiting, []
        for conn in waiting:
            conn.flush()

    def slow(self, conn: Connection) -> None:
        self.metrics.slow_consumers.inc()
        logger.warning("closing slow consumer %s (user %s)", conn.client_id, conn.username)

    def written(self, frames: list[Frame]) -> None:
        self._writes += 1
        if self._writes % LATENCY_SAMPLE == 0 and frames[0].published_at:
            latency = max(0.0, time.time() - frames[0].published_at)
            self.metrics.delivery_latency.observe(latency)

    def _carry_out(self, conn: Connection, verdict: Verdict, project_id: str | None) -> None:
        if verdict is Verdict.REPLAY:
            assert project_id is not None
            self._replay(conn, conn.subs[project_id])
        else:
            conn.handle(verdict)

    # -- subscriptions (Owner) ------------------------------------------------------------

    async def subscribe(self, conn: Connection, action: Subscribe) -> None:
        """Answer ``subscribed`` (or an error), then replay and go live.

        The subscription joins its channel before the log is read, so the channel's head
        keeps track of events committed meanwhile; anything past the cursor is then
        replayed from the log, and live delivery starts only once the replay has caught up.
        A snapshot is read in the same transaction as the log bounds: it is the state at
        the reply's ``seq``, which is where the cursor starts.
        """
        project_id = action.project_id
        conn.stop_replay(project_id)  # subscribing again restarts from the new `since`
        sub = conn.begin(project_id, snapshot=action.snapshot)
        await self._start(conn, sub, action.since, action.request_id)

    async def _start(
        self,
        conn: Connection,
        sub: Subscription,
        since: int | None,
        request_id: Any,
        *,
        from_memory: bool = True,
    ) -> None:
        project_id = sub.project_id
        channel = self._join(conn, project_id)
        opening, failed = None, False
        if from_memory:
            opening = self._known_opening(conn, sub, since, channel)
        if opening is None:
            generation = self.access.generation
            try:
                opening = await self._read_opening(conn, sub, since)
            except Exception as exc:
                log_failure(logger, exc, "subscribe %s to %s failed", conn.client_id, project_id)
                opening, failed = None, True
            if opening is not None:
                channel.oldest = max(channel.oldest, opening.oldest)
                channel.synced = True
                if opening.latest > channel.head:
                    # An event this node never got from the broker (read from the log just
                    # now): the live subscribers have not seen it either, and head sync will
                    # not tell them once the head is raised. Compared with the head now,
                    # not the head before the read: whatever raised it meanwhile has told
                    # them (a broker event by the gap it opens; another subscribe, a replay
                    # or the head sync by this very call). So the many subscribes answered
                    # by one batched read catch the channel up once, instead of each going
                    # through all of its subscribers.
                    self._catch_up(project_id, channel, opening.latest)
                # Ignored if anything was revoked while reading.
                self.access.grant(conn.user_id, project_id, generation, opening.latest)
        # A large snapshot waits for room in the queue, as replayed events do: a client
        # that resubscribes to many projects at once is paced, not closed as slow.
        if (
            opening is not None
            and opening.snapshot is not None
            and not await conn.wait_for_room(opening.size)
        ):
            return  # the connection is closing
        viewers = (
            await self.presence.listed(project_id, conn.user_id, conn.username)
            if opening is not None
            else []
        )
        if opening is None or not conn.current(sub):
            # No access, or it was revoked (or the project deleted) while reading.
            if conn.current(sub):
                self._end(conn, project_id, sub)
            if failed:
                # The database could not be read (restarting, unreachable). An `error`
                # reply would leave a subscription that clients resubscribe by themselves
                # after a reconnect silently dead: closing makes them resume every one.
                conn.close(CloseCode.INTERNAL_ERROR, "subscription failed; resume")
                return
            reply = error(ErrorCode.NOT_FOUND, "project not found", request_id)
            conn.send_message({**reply.message, "project_id": project_id})
            return
        oldest, latest = opening.oldest, opening.latest
        start = conn.start(sub, since, oldest, latest, channel.head)
        message: dict[str, Any] = {"type": "subscribed", "project_id": project_id, "seq": latest}
        if start.recovered is not None:
            message["recovered"] = start.recovered
        if start.snapshot:
            message["snapshot"] = opening.snapshot
        if request_id is not None:
            message["id"] = request_id
        message["presence"] = viewers
        conn.send_message(message)
        self.presence.opened(project_id, conn.user_id, conn.username, conn.client_id)
        self.metrics.subscriptions.inc()
        if start.replay:
            self._replay(conn, sub)

    def _known_opening(
        self, conn: Connection, sub: Subscription, since: int | None, channel: Channel
    ) -> Opening | None:
        """The opening from what the node knows, without the database; None if it does
        not know enough: the channel's bounds were never read, the user's access is not
        remembered (or was read before an event this node missed: it may have been their
        removal), ``since`` is past the channel's head (the client saw an event whose
        broker message has not arrived here yet: only the database can say), or a
        snapshot is needed (it is read with the bounds, in one transaction).

        The latest seq is the channel's head: never below an event this node delivered,
        and any later event follows (live, or through a replay of the log)."""
        if not channel.synced or not self.access.allowed(
            conn.user_id, sub.project_id, channel.missed
        ):
            return None
        latest = channel.head
        if since is not None and since > latest:
            return None
        oldest = max(channel.oldest, self.eventlog.oldest_kept(latest))
        if snapshot_needed(sub.snapshot, since, oldest, latest):
            return None
        self.metrics.subscribes_from_memory.inc()
        return Opening(oldest, latest)

    async def _read_opening(
        self, conn: Connection, sub: Subscription, since: int | None
    ) -> Opening | None:
        """Access and bounds from the database (batched with other subscribes), and the
        snapshot in the same transaction when one is needed."""
        if sub.snapshot:
            asked = sub.snapshot
            return await self.snapshots.open(
                sub.project_id,
                conn.user_id,
                lambda oldest, latest: snapshot_needed(asked, since, oldest, latest),
                # What a replayed event may take of the queue (see wait_for_room).
                conn.queue.max_bytes * 3 // 4,
            )
        bounds = await self.bounds.read(sub.project_id, conn.user_id)
        return None if bounds is None else Opening(*bounds)

    def unsubscribe(self, conn: Connection, action: Unsubscribe) -> None:
        self._end(conn, action.project_id)
        message: dict[str, Any] = {"type": "unsubscribed", "project_id": action.project_id}
        if action.request_id is not None:
            message["id"] = action.request_id
        conn.send_message(message)

    def _join(self, conn: Connection, project_id: str) -> Channel:
        channel = self.channels.get(project_id)
        if channel is None:
            channel = self.channels[project_id] = Channel()
            self.metrics.channels.inc()
        channel.subscribers[conn] = None
        return channel

    def _end(
        self,
        conn: Connection,
        project_id: str,
        sub: Subscription | None = None,
        reason: str | None = None,
    ) -> None:
        """End a subscription: stop its replay, leave the channel, announce it if asked."""
        ended = conn.end(project_id, sub)
        if ended is None:
            return
        self.presence.closed(project_id, conn.user_id, conn.client_id)
        conn.stop_replay(project_id)
        if ended.announced:
            self.metrics.subscriptions.dec()
            if reason is not None:
                conn.send_message(
                    {"type": "unsubscribed", "project_id": project_id, "reason": reason}
                )
        self._leave(conn, project_id)  # what remains, if anything, is only requested

    def _leave(self, conn: Connection, project_id: str) -> None:
        channel = self.channels.get(project_id)
        if channel is not None:
            channel.subscribers.pop(conn, None)
            if not channel.subscribers:
                del self.channels[project_id]
                self.tails.drop(project_id)  # only active projects keep their tail
                self.presence.unwatched(project_id)
                self.metrics.channels.dec()

    # -- replays --------------------------------------------------------------------------

    def _replay(self, conn: Connection, sub: Subscription) -> None:
        if conn.open:
            task = asyncio.create_task(self._run_replay(conn, sub))
            conn.track_replay(sub.project_id, task)

    async def _run_replay(self, conn: Connection, sub: Subscription) -> None:
        """Queue logged events after the cursor, paced by the connection's queue, until the
        subscription is live (``delivery.py`` decides each step).

        A page is read only once the queue has room, holds no more bytes than that room
        (and at most :data:`REPLAY_PAGE_BYTES`), and at most ``replay_concurrency`` pages
        are read at a time on the node: a client that does not read costs its queue's
        bound, never the log's size.
        """
        project_id = sub.project_id
        try:
            while True:
                if not await conn.wait_for_room(1):
                    return
                budget = min(REPLAY_PAGE_BYTES, conn.free_bytes())
                events = self.tails.read_after(project_id, sub.cursor, REPLAY_PAGE, budget)
                if events is not None:
                    self.metrics.replay_pages_from_memory.inc()
                else:
                    async with self._replay_slots:
                        page = await self.eventlog.read_visible_after(
                            project_id, conn.user_id, sub.cursor, REPLAY_PAGE, budget
                        )
                    if page is None:
                        # The user lost access and this node missed the news (a broker
                        # message lost): the gap that started this replay is where the
                        # removal was. (The memory tail never spans such a gap: it starts
                        # again after a missing event.)
                        self.access.forget(project_id, conn.user_id)
                        self._end(conn, project_id, sub, reason="access_revoked")
                        return
                    events = page
                for event in events:
                    if not await conn.wait_for_room(len(event.frame)):
                        return
                    step = conn.replayed(sub, event.seq)
                    if step is Step.SKIP:
                        continue
                    if step is Step.STOP:
                        return
                    if step is Step.LOST:  # trimmed by retention while we replayed
                        await self._restart(conn, sub)
                        return
                    conn.push(Frame(event.frame, event.type, project_id, event.seq))
                    channel = self.channels.get(project_id)
                    if channel is not None and event.seq > channel.head:
                        # Read from the log before its broker message came (which may be
                        # lost): the live subscriptions have not seen it either, and head
                        # sync will not tell them once the head is raised.
                        self._catch_up(project_id, channel, event.seq)
                    if event.type in ENDING_TYPES:
                        self._end(conn, project_id, sub)
                        return
                channel = self.channels.get(project_id)
                head = channel.head if channel is not None else 0
                if conn.page_done(sub, len(events), REPLAY_PAGE, head):
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log_failure(logger, exc, "replay of %s for %s failed", project_id, conn.client_id)
            conn.close(CloseCode.SERVICE_RESTART, "replay failed; resume")

    async def _restart(self, conn: Connection, sub: Subscription) -> None:
        """Start again from the cursor: the reply says ``recovered: false``. The bounds are
        read from the database: the log was trimmed further than the node assumed."""
        fresh = conn.begin(sub.project_id, waiting=False, snapshot=sub.snapshot)
        await self._start(conn, fresh, sub.cursor, None, from_memory=False)

    # -- fan-out --------------------------------------------------------------------------

    async def _listen(self) -> None:
        broker = self.eventlog.broker
        while True:
            try:
                subscription = await broker.subscribe(
                    self.eventlog.channel, on_resubscribed=self._maybe_missed
                )
                self._maybe_missed()  # while unsubscribed, nothing was heard
                try:
                    self._ready.set()  # confirmed: every event published from now on arrives
                    async for raw in subscription:
                        self.dispatch(raw)
                    return
                finally:
                    await subscription.close()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("broker listener failed; restarting")
                await asyncio.sleep(1)

    def _maybe_missed(self) -> None:
        """Broker messages may have been lost (the subscription was down): revocations
        among them. Forget every remembered grant, and ask the database about the
        credentials of the open connections now rather than at the next check."""
        self.access.clear()
        self._check_now.set()

    def dispatch(self, raw: bytes) -> None:
        try:
            env = Envelope.decode(raw)
        except Exception:
            logger.exception("undecodable broker message dropped")
            return
        if env.type == SESSION_REVOKED:
            assert env.data is not None
            self.revoke(env.data["credential"])
        elif env.type == MEMBER_REMOVED:
            assert env.data is not None
            self.revoke_access(env.data["project_id"], env.data["user_id"])
        elif env.type in PRESENCE_TYPES:
            self.fan_out_presence(env)
        else:
            if env.project_id is not None and env.type in (PROJECT_UPDATED, PROJECT_DELETED):
                self.access.forget(env.project_id)  # members or ownership may have changed
            self.fan_out(env)

    def fan_out(self, env: Envelope) -> None:
        frame = Frame(
            env.frame.decode(), env.type, env.project_id, env.seq, env.coalesce, time.time()
        )
        project_id = env.project_id
        count = 0
        channel = self.channels.get(project_id) if project_id is not None else None
        if channel is not None:
            if env.seq is not None and project_id is not None:
                if env.seq > channel.head:
                    if env.seq > channel.head + 1:
                        # Events this node never got (a lost broker message; or all of
                        # them, the channel being new): one may have been a removal.
                        channel.missed = env.seq - 1
                    channel.head = env.seq
                self.tails.append(project_id, LoggedEvent(env.seq, env.type, frame.text))
            # offer() never changes the channel: no copy of 1,000s of subscribers per event.
            for conn in channel.subscribers:
                verdict = conn.offer(frame)
                if verdict:
                    self._carry_out(conn, verdict, project_id)
            count = len(channel.subscribers)
            if env.type in ENDING_TYPES and project_id is not None and env.seq is not None:
                self._end_channel(project_id, channel, env.seq)
        if project_id is not None:
            # In the event's own envelope, so every node ends them before it offers any
            # later event; the separate control message can be lost without a trace.
            for user_id in env.revoked:
                self.revoke_access(project_id, user_id)
        # The users of the audience this node holds connections of, found in C: a change
        # to a project of thousands of members names them all, and few are here.
        for user_id in self.by_user.keys() & env.audience:
            for conn in self.by_user.get(user_id, ()):
                verdict = conn.offer_audience(frame)
                if verdict:
                    conn.handle(verdict)
                count += 1
        metrics = self.metrics
        # Custom types are chosen by clients: one label for all of them keeps the metric
        # series bounded.
        label = "custom" if env.type.startswith(CUSTOM_PREFIX) else env.type
        metrics.events_published.labels(label).inc()
        if count:
            metrics.events_delivered.labels(label).inc(count)

    def fan_out_presence(self, env: Envelope) -> None:
        """``presence.*``: to the project's subscriptions on this node that have been
        answered ``subscribed`` (which carries the list these changes apply to), but those
        of the user it is about (their own ``subscribed`` lists them; when they leave, they
        have no subscription left)."""
        project_id = env.project_id
        channel = self.channels.get(project_id) if project_id is not None else None
        self.metrics.events_published.labels(env.type).inc()
        if channel is None or project_id is None:
            return
        text = env.frame.decode()
        user = orjson.loads(text)["user"]
        user_id = user["id"]
        self.presence.heard(env.type, project_id, user)  # the lists `subscribed` hands out
        frame = Frame(text, env.type, project_id, None, None, time.time())
        count = 0
        for conn in channel.subscribers:
            if conn.user_id == user_id:
                continue
            verdict = conn.offer_presence(frame)
            if verdict:
                conn.handle(verdict)
            count += 1
        if count:
            self.metrics.events_delivered.labels(env.type).inc(count)

    def _end_channel(self, project_id: str, channel: Channel, seq: int) -> None:
        """After ``project.deleted``: subscriptions that were given it end; replays end
        when they reach it."""
        for conn in list(channel.subscribers):
            sub = conn.subs.get(project_id)
            if sub is not None and conn.given(sub, seq):
                self._end(conn, project_id, sub)

    def revoke(self, credential: str) -> None:
        self.forget_credential(credential)
        for conn in list(self.by_credential.get(credential, ())):
            conn.close(CloseCode.UNAUTHORIZED, "credentials revoked")

    def revoke_access(self, project_id: str, user_id: str) -> None:
        self.access.forget(project_id, user_id)
        for conn in list(self.by_user.get(user_id, ())):
            self._end(conn, project_id, reason="access_revoked")

    async def _expire(self) -> None:
        """Close the sockets of credentials that have expired, within a second or so."""
        while True:
            await asyncio.sleep(EXPIRY_CHECK_INTERVAL)
            for credential in self._expiries.due(time.time()):
                for conn in list(self.by_credential.get(credential, ())):
                    conn.close(CloseCode.UNAUTHORIZED, "credentials expired")

    async def _check_credentials(self) -> None:
        """Close the sockets of revoked credentials whose revocation this node missed (a
        broker outage at the time): within ``credential_check_interval`` seconds."""
        assert self.revoked_among is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), self.credential_check_interval)
            self._check_now.clear()
            if not self.by_credential:
                continue
            try:
                revoked = await self.revoked_among(list(self.by_credential))
            except Exception as exc:
                log_failure(logger, exc, "checking open connections' credentials failed")
                continue
            for credential in revoked:
                self.revoke(credential)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            text = encode({"type": "system.heartbeat", "timestamp": timestamp()}).decode()
            frame = Frame(text, "system.heartbeat", coalesce="system.heartbeat")
            for conn in list(self.connections.values()):
                conn.push(frame)

    async def _sync_heads(self) -> None:
        while True:
            await asyncio.sleep(self.head_sync_interval)
            try:
                await self.sync_heads()
            except Exception as exc:
                log_failure(logger, exc, "head sync failed")

    async def sync_heads(self) -> None:
        """Catch events whose broker message never came (a node died between commit and
        publish, or a broker reconnect): compare each channel's head with the log. Run
        every ``head_sync_interval`` seconds."""
        if not self.channels:
            return
        heads = await self.eventlog.heads(list(self.channels))
        for project_id, head in heads.items():
            channel = self.channels.get(project_id)
            if channel is None or head <= channel.head:
                continue
            self._catch_up(project_id, channel, head)

    def _catch_up(self, project_id: str, channel: Channel, head: int) -> None:
        """The log holds events up to ``head``, which the channel may not have seen: the
        live subscriptions behind it replay what they missed (and replays from the log
        check access). Past the channel's head, the node missed those events: a grant
        read before them is no longer trusted (one may have been a removal)."""
        if head > channel.head:
            channel.head = channel.missed = head
        for conn in list(channel.subscribers):
            sub = conn.subs.get(project_id)
            if sub is not None and conn.behind(sub, head):
                self._replay(conn, sub)


def _discard(index: dict[str, set[Connection]], key: str, conn: Connection) -> bool:
    """Remove ``conn`` from ``index[key]``; False if no connection is left there."""
    conns = index.get(key)
    if conns is not None:
        conns.discard(conn)
        if conns:
            return True
        del index[key]
    return False
