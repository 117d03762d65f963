"""One WebSocket connection: its outbound queue, writer task and per-project cursors.

The hub calls :meth:`Connection.deliver` and :meth:`Connection.push` synchronously while it
fans out; they never await and never block. A dedicated writer task drains the queue to
the socket, several frames per write when several wait. A connection whose queue overflows
is closed as a slow consumer (4008) without holding anyone else up.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from tidings.codes import CloseCode
from tidings.events import encode, timestamp
from tidings.frames import Frame
from tidings.outqueue import OutboundQueue
from tidings.protocol import ClientMessages

logger = logging.getLogger("tidings.ws")

BATCH_MAX_FRAMES = 256


class Socket(Protocol):
    """What a connection needs from the transport (see ``server.py`` and ``ws.py``).

    ``batch`` asks for ``tidings.batch.v1`` framing: all the frames as one JSON array.
    """

    async def send(self, frames: list[Frame], batch: bool) -> None:
        """Send the frames in order; wait while the peer is behind."""
        ...

    def writable(self) -> bool:
        """True if :meth:`write_nowait` may be called now (the peer is keeping up)."""
        ...

    def write_nowait(self, frames: list[Frame], batch: bool) -> None:
        """Hand the frames to the transport without waiting; only when :meth:`writable`."""
        ...

    async def close(self, code: int, reason: str) -> None: ...

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake."""
        ...


class ConnState(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class SubState(enum.Enum):
    PENDING = "pending"  # access check and log bounds being read; live events ignored
    RECOVERING = "recovering"  # replaying from the event log; live durable events ignored
    LIVE = "live"  # live events delivered in seq order

    def to(self, new: SubState) -> SubState:
        if new not in _SUB_TRANSITIONS[self]:
            raise RuntimeError(f"illegal subscription transition {self.value} -> {new.value}")
        return new


_SUB_TRANSITIONS = {
    SubState.PENDING: {SubState.RECOVERING, SubState.LIVE},
    SubState.RECOVERING: {SubState.LIVE},
    SubState.LIVE: {SubState.RECOVERING},
}


class Subscription:
    __slots__ = ("cursor", "project_id", "state", "task")

    def __init__(self, project_id: str) -> None:
        self.project_id = project_id
        self.state = SubState.PENDING
        self.cursor = 0  # newest seq this connection has been given
        self.task: asyncio.Task[None] | None = None

    def move(self, new: SubState) -> None:
        self.state = self.state.to(new)


class Connection:
    """Delivery state of one client. Created by ``ws.py``, fed by the hub."""

    # Slots: thousands of idle connections each save an attribute dict.
    __slots__ = (
        "_closer",
        "_flush_scheduled",
        "_on_gap",
        "_on_slow",
        "_on_written",
        "_room",
        "_schedule_flush",
        "_writer",
        "batch",
        "client_id",
        "close_code",
        "close_timeout",
        "credential",
        "messages",
        "queue",
        "socket",
        "state",
        "subs",
        "user_id",
        "username",
    )

    def __init__(
        self,
        *,
        client_id: str,
        user_id: str,
        username: str,
        credential: str,
        socket: Socket,
        messages: ClientMessages,
        max_queue_messages: int,
        max_queue_bytes: int,
        close_timeout: float,
        batch: bool = False,
        on_gap: Callable[[Connection, Subscription], None],
        schedule_flush: Callable[[Connection], None],
        on_slow: Callable[[Connection], None] = lambda conn: None,
        on_written: Callable[[list[Frame]], None] = lambda frames: None,
    ) -> None:
        self.client_id = client_id
        self.user_id = user_id
        self.username = username
        self.credential = credential
        self.socket = socket
        self.messages = messages
        self.queue: OutboundQueue[Frame] = OutboundQueue(max_queue_messages, max_queue_bytes)
        self.close_timeout = close_timeout
        self.batch = batch
        self.state = ConnState.OPEN
        self.subs: dict[str, Subscription] = {}
        self.close_code: int | None = None
        self._on_gap = on_gap
        self._schedule_flush = schedule_flush
        self._flush_scheduled = False
        self._on_slow = on_slow
        self._on_written = on_written
        # Created only when needed: an idle connection holds no task and no event.
        self._writer: asyncio.Task[None] | None = None  # running while the peer is behind
        self._room: asyncio.Event | None = None  # a replay waiting for queue space
        self._closer: asyncio.Task[None] | None = None

    # -- called by the hub while fanning out: synchronous, never blocks -----------------

    def deliver(self, frame: Frame) -> None:
        """Offer an event of a project this connection is subscribed to.

        Durable events go out in strict ``seq`` order: one at the cursor + 1 is sent, an old
        one dropped, and one past a gap switches the subscription to recovery from the log.
        """
        sub = self.subs.get(frame.project_id)  # type: ignore[arg-type]
        if sub is None or sub.state is not SubState.LIVE:
            return  # a replay from the log covers it; ephemeral events wait for live
        seq = frame.seq
        if seq is None:
            self.push(frame)
        elif seq == sub.cursor + 1:
            sub.cursor = seq
            self.push(frame)
        elif seq > sub.cursor + 1:
            sub.move(SubState.RECOVERING)
            self._on_gap(self, sub)

    def push(self, frame: Frame) -> None:
        if self.state is not ConnState.OPEN:
            return
        if not self.queue.put(frame):
            self._on_slow(self)
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer")
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._schedule_flush(self)

    def flush(self) -> None:
        """Write what is queued, now, if the transport takes it without waiting.

        The hub calls this once per loop iteration for every connection that got frames,
        so all the events fanned out in that iteration leave in one write. When the peer is
        behind (or a send is already in progress) a writer task takes over and waits.
        """
        self._flush_scheduled = False
        queue = self.queue
        if self.state is not ConnState.OPEN or self._writer is not None:
            return  # a running writer takes whatever is queued
        socket = self.socket
        while queue.count:
            if not socket.writable():
                self._writer = asyncio.create_task(self._write_loop())
                return
            frames = queue.drain(BATCH_MAX_FRAMES)
            try:
                socket.write_nowait(frames, self.batch)
            except Exception as exc:  # the peer went away; the endpoint will notice
                logger.debug("write to %s failed: %r", self.client_id, exc)
                return
            self._on_written(frames)
        if self._room is not None:
            self._room.set()

    def send_message(self, message: dict[str, Any]) -> None:
        """Queue a reply or notice for this connection only; ``timestamp`` is added here."""
        message["timestamp"] = timestamp()
        text = encode(message).decode()
        self.push(Frame(text, message["type"], published_at=time.time()))

    def end_subscription(self, project_id: str, reason: str | None = None) -> None:
        sub = self.subs.pop(project_id, None)
        self.messages.forget(project_id)
        if sub is not None and sub.task is not None and sub.task is not asyncio.current_task():
            sub.task.cancel()
        if sub is not None and reason is not None:
            self.send_message({"type": "unsubscribed", "project_id": project_id, "reason": reason})

    def close(self, code: int, reason: str = "", *, flush: bool = False) -> None:
        """Start closing; the socket is aborted if the handshake does not finish in time.

        With ``flush``, frames already queued (say, the error that explains the close) are
        written first, within the same time limit; otherwise they are dropped.
        """
        if self.state is not ConnState.OPEN:
            return
        self.state = ConnState.CLOSING
        self.close_code = code
        if not flush:
            self.queue.clear()
            if self._writer is not None:
                self._writer.cancel()
        for sub in self.subs.values():
            if sub.task is not None:
                sub.task.cancel()
        self._closer = asyncio.create_task(self._close(code, reason, flush))

    # -- flow control for replays ------------------------------------------------------

    async def wait_for_room(self, size: int) -> bool:
        """Wait until ``size`` bytes fit with a quarter of the queue left for live events."""
        q = self.queue
        while self.state is ConnState.OPEN:
            if q.count + 1 <= q.max_messages * 3 // 4 and q.nbytes + size <= max(
                q.max_bytes * 3 // 4, size
            ):
                return True
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
        return False

    async def finish(self) -> None:
        """Wait for the writer and closer to end; call once the socket has disconnected."""
        self.state = ConnState.CLOSED if self.state is ConnState.OPEN else self.state
        if self._writer is not None:
            self._writer.cancel()
        for sub in self.subs.values():
            if sub.task is not None:
                sub.task.cancel()
        if self._room is not None:
            self._room.set()
        tasks = [t for t in (self._writer, self._closer) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        self.state = ConnState.CLOSED

    # -- I/O -----------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Send what is queued, waiting on the peer, until the queue is empty; then end."""
        queue = self.queue
        try:
            while queue.count:
                frames = queue.drain(BATCH_MAX_FRAMES)
                if self._room is not None:
                    self._room.set()
                await self.socket.send(frames, self.batch)
                self._on_written(frames)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the peer went away mid-write
            logger.debug("writer of %s stopped: %r", self.client_id, exc)
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None

    async def _close(self, code: int, reason: str, flush: bool) -> None:
        # Whatever happens below, the TCP connection is gone after the timeout: a peer that
        # never reads can stall both the close frame and a graceful transport close.
        loop = asyncio.get_running_loop()
        loop.call_later(self.close_timeout, self.socket.abort)
        deadline = loop.time() + self.close_timeout
        if flush and self.queue.count:
            writer = self._writer or asyncio.create_task(self._write_loop())
            self._writer = writer
            done, _ = await asyncio.wait([writer], timeout=self.close_timeout)
            if not done:
                writer.cancel()
        try:
            await asyncio.wait_for(
                self.socket.close(code, reason), max(0.0, deadline - loop.time())
            )
        except TimeoutError:
            logger.info("closing handshake of %s timed out; dropping it", self.client_id)
            self.socket.abort()
        except Exception:
            self.socket.abort()
