"""The hub: owns connections and subscriptions, fans events out, replays from the log.

Events arrive from the broker already encoded. For each one the hub decodes the frame
text once and offers the same string to every target connection's queue, synchronously:
no await, no per-client encoding, no socket I/O in the fan-out loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from tidings import metrics
from tidings.codes import CloseCode, ErrorCode
from tidings.connection import Connection, ConnState, Subscription, SubState
from tidings.events import (
    MEMBER_REMOVED,
    PROJECT_DELETED,
    SESSION_REVOKED,
    Envelope,
    EventLog,
    encode,
    timestamp,
)
from tidings.frames import Frame
from tidings.protocol import error
from tidings.resume import decide

logger = logging.getLogger("tidings.hub")

REPLAY_PAGE = 500
HEAD_SYNC_INTERVAL = 5.0


class Channel:
    """The connections subscribed to one project, and the newest seq seen for it."""

    __slots__ = ("head", "subscribers")

    def __init__(self) -> None:
        self.subscribers: dict[Connection, None] = {}  # an ordered set
        self.head = 0


class Hub:
    def __init__(
        self,
        eventlog: EventLog,
        heartbeat_interval: float,
    ) -> None:
        self.eventlog = eventlog
        self.heartbeat_interval = heartbeat_interval
        self.connections: dict[str, Connection] = {}
        self.by_user: dict[str, set[Connection]] = {}
        self.by_credential: dict[str, set[Connection]] = {}
        self.channels: dict[str, Channel] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()
        self._dirty: list[Connection] = []
        self._flush_scheduled = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="tidings-hub-listen"),
            asyncio.create_task(self._heartbeat(), name="tidings-hub-heartbeat"),
            asyncio.create_task(self._sync_heads(), name="tidings-hub-heads"),
        ]
        await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        """Close every socket with 1012 so clients reconnect elsewhere and resume."""
        for conn in list(self.connections.values()):
            conn.close(CloseCode.SERVICE_RESTART, "service restart")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- connections ----------------------------------------------------------------------

    def register(self, conn: Connection) -> None:
        self.connections[conn.client_id] = conn
        self.by_user.setdefault(conn.user_id, set()).add(conn)
        self.by_credential.setdefault(conn.credential, set()).add(conn)
        metrics.CONNECTIONS.inc()

    def unregister(self, conn: Connection) -> None:
        if self.connections.pop(conn.client_id, None) is None:
            return
        _discard(self.by_user, conn.user_id, conn)
        _discard(self.by_credential, conn.credential, conn)
        for project_id in list(conn.subs):
            self._leave(conn, project_id)
        metrics.CONNECTIONS.dec()

    def connection_args(self) -> dict[str, Any]:
        """Callbacks a new :class:`Connection` needs from the hub."""
        return {
            "on_gap": self._start_replay,
            "schedule_flush": self._schedule_flush,
            "on_slow": _count_slow,
            "on_written": _observe,
        }

    def _schedule_flush(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Once per loop iteration: write every connection that got frames in it."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()

    # -- subscriptions --------------------------------------------------------------------

    async def subscribe(
        self, conn: Connection, project_id: str, since: int | None, request_id: Any = None
    ) -> None:
        """Answer ``subscribed`` (or ``not_found``), then replay and go live.

        The subscription joins its channel before the log is read, so the channel's head
        keeps track of events committed meanwhile; anything past the cursor is then
        replayed from the log, and live delivery starts only once the replay has caught up.
        """
        if project_id in conn.subs:  # subscribing again restarts from the new `since`
            self._leave(conn, project_id)
            conn.messages.subscriptions.add(project_id)
        sub = Subscription(project_id)
        conn.subs[project_id] = sub
        channel = self.channels.get(project_id)
        if channel is None:
            channel = self.channels[project_id] = Channel()
            metrics.CHANNELS.inc()
        channel.subscribers[conn] = None
        try:
            bounds = await self.eventlog.bounds(project_id, conn.user_id)
        except Exception:
            logger.exception("subscribe %s to %s failed", conn.client_id, project_id)
            bounds, failed = None, True
        else:
            failed = False
        if conn.subs.get(project_id) is not sub or conn.state is not ConnState.OPEN:
            return  # unsubscribed or superseded while we were reading
        if bounds is None:
            self._leave(conn, project_id)
            conn.messages.forget(project_id)
            reply = (
                error(ErrorCode.INTERNAL, "subscription failed; retry", request_id)
                if failed
                else error(ErrorCode.NOT_FOUND, "project not found", request_id)
            )
            conn.send_message({**reply.message, "project_id": project_id})
            return
        oldest, latest = bounds
        resume = decide(since, oldest, latest)
        sub.cursor = resume.cursor
        message: dict[str, Any] = {"type": "subscribed", "project_id": project_id, "seq": latest}
        if resume.recovered is not None:
            message["recovered"] = resume.recovered
        if request_id is not None:
            message["id"] = request_id
        conn.send_message(message)
        metrics.SUBSCRIPTIONS.inc()
        channel.head = max(channel.head, latest)
        if channel.head > sub.cursor:
            sub.move(SubState.RECOVERING)
            self._start_replay(conn, sub)
        else:
            sub.move(SubState.LIVE)

    def unsubscribe(self, conn: Connection, project_id: str, request_id: Any = None) -> None:
        if project_id in conn.subs:
            self._leave(conn, project_id)
        message: dict[str, Any] = {"type": "unsubscribed", "project_id": project_id}
        if request_id is not None:
            message["id"] = request_id
        conn.send_message(message)

    def _leave(self, conn: Connection, project_id: str, reason: str | None = None) -> None:
        sub = conn.subs.get(project_id)
        conn.end_subscription(project_id, reason)
        if sub is not None and sub.state is not SubState.PENDING:
            metrics.SUBSCRIPTIONS.dec()
        channel = self.channels.get(project_id)
        if channel is not None:
            channel.subscribers.pop(conn, None)
            if not channel.subscribers:
                del self.channels[project_id]
                metrics.CHANNELS.dec()

    def _start_replay(self, conn: Connection, sub: Subscription) -> None:
        sub.task = asyncio.create_task(self._replay(conn, sub))

    async def _replay(self, conn: Connection, sub: Subscription) -> None:
        """Send logged events after the cursor, paced by the connection's queue, then go live."""
        project_id = sub.project_id
        try:
            while conn.subs.get(project_id) is sub:
                events = await self.eventlog.read_after(project_id, sub.cursor, REPLAY_PAGE)
                for event in events:
                    if conn.subs.get(project_id) is not sub:
                        return
                    if not await conn.wait_for_room(len(event.frame)):
                        return
                    if event.seq <= sub.cursor:
                        continue
                    sub.cursor = event.seq
                    conn.push(Frame(event.frame, event.type, project_id, event.seq))
                    if event.type == PROJECT_DELETED:
                        self._leave(conn, project_id)
                        return
                if conn.subs.get(project_id) is not sub:
                    return
                channel = self.channels.get(project_id)
                head = channel.head if channel is not None else 0
                if len(events) < REPLAY_PAGE and (sub.cursor >= head or not events):
                    # Nothing is logged past the cursor: every later event arrives live.
                    sub.move(SubState.LIVE)
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("replay of %s for %s failed", project_id, conn.client_id)
            conn.close(CloseCode.SERVICE_RESTART, "replay failed; resume")
        finally:
            if sub.task is asyncio.current_task():
                sub.task = None

    # -- fan-out --------------------------------------------------------------------------

    async def _listen(self) -> None:
        broker = self.eventlog.broker
        while True:
            try:
                stream = broker.listen(self.eventlog.channel)
                first = asyncio.ensure_future(anext(stream))  # subscribes before ready
                await asyncio.sleep(0)
                self._ready.set()
                raw = await first
                self.dispatch(raw)
                async for raw in stream:
                    self.dispatch(raw)
                return
            except asyncio.CancelledError:
                raise
            except StopAsyncIteration:
                return
            except Exception:
                logger.exception("broker listener failed; restarting")
                await asyncio.sleep(1)

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
        else:
            self.fan_out(env)

    def fan_out(self, env: Envelope) -> None:
        frame = Frame(
            env.frame.decode(), env.type, env.project_id, env.seq, env.coalesce, time.time()
        )
        project_id = env.project_id
        count = 0
        channel = self.channels.get(project_id) if project_id is not None else None
        if channel is not None:
            if env.seq is not None and env.seq > channel.head:
                channel.head = env.seq
            # deliver() never changes the channel: no copy of 1,000s of subscribers per event.
            for conn in channel.subscribers:
                conn.deliver(frame)
            count = len(channel.subscribers)
            if env.type == PROJECT_DELETED and project_id is not None:
                self._end_channel(project_id, channel)
        for user_id in env.audience:
            for conn in self.by_user.get(user_id, ()):
                if project_id not in conn.subs:
                    conn.push(frame)
                    count += 1
        metrics.EVENTS_PUBLISHED.labels(env.type).inc()
        if count:
            metrics.EVENTS_DELIVERED.labels(env.type).inc(count)

    def _end_channel(self, project_id: str, channel: Channel) -> None:
        """After ``project.deleted``: live subscriptions end; replays end when they reach it."""
        for conn in list(channel.subscribers):
            sub = conn.subs.get(project_id)
            if sub is not None and sub.state is SubState.LIVE:
                self._leave(conn, project_id)

    def revoke(self, credential: str) -> None:
        for conn in list(self.by_credential.get(credential, ())):
            conn.close(CloseCode.UNAUTHORIZED, "credentials revoked")

    def revoke_access(self, project_id: str, user_id: str) -> None:
        for conn in list(self.by_user.get(user_id, ())):
            if project_id in conn.subs:
                self._leave(conn, project_id, reason="access_revoked")

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            text = encode({"type": "system.heartbeat", "timestamp": timestamp()}).decode()
            frame = Frame(text, "system.heartbeat", coalesce="system.heartbeat")
            for conn in list(self.connections.values()):
                conn.push(frame)

    async def _sync_heads(self) -> None:
        """Catch events whose broker message never came (a node died between commit and
        publish, or a broker reconnect): compare each channel's head with the log."""
        while True:
            await asyncio.sleep(HEAD_SYNC_INTERVAL)
            if not self.channels:
                continue
            try:
                heads = await self.eventlog.heads(list(self.channels))
            except Exception:
                logger.exception("head sync failed")
                continue
            for project_id, head in heads.items():
                channel = self.channels.get(project_id)
                if channel is None or head <= channel.head:
                    continue
                channel.head = head
                for conn in list(channel.subscribers):
                    sub = conn.subs.get(project_id)
                    if sub is not None and sub.state is SubState.LIVE and sub.cursor < head:
                        sub.move(SubState.RECOVERING)
                        self._start_replay(conn, sub)


def _discard(index: dict[str, set[Connection]], key: str, conn: Connection) -> None:
    conns = index.get(key)
    if conns is not None:
        conns.discard(conn)
        if not conns:
            del index[key]


def _count_slow(conn: Connection) -> None:
    metrics.SLOW_CONSUMERS.inc()
    logger.warning("closing slow consumer %s (user %s)", conn.client_id, conn.username)


_LATENCY_SAMPLE = 16
_written = 0


def _observe(frames: list[Frame]) -> None:
    """Delivery latency of one write in 16: a histogram update per write would cost more
    than the write itself in a large fan-out."""
    global _written
    _written += 1
    if _written % _LATENCY_SAMPLE == 0 and frames[0].published_at:
        metrics.DELIVERY_LATENCY.observe(max(0.0, time.time() - frames[0].published_at))
