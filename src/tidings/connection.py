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
from tidings.outqueue import OutboundQueue
from tidings.protocol import ClientMessages

logger = logging.getLogger("tidings.ws")

BATCH_MAX_FRAMES = 256


class Socket(Protocol):
    """What a connection needs from the transport (see ``server.py`` and ``ws.py``)."""

    async def send_frames(self, frames: list[str]) -> None:
        """Send each string as one text frame, in order; wait while the peer is behind."""
        ...

    async def close(self, code: int, reason: str) -> None: ...

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake."""
        ...


class Frame:
    """An event encoded once, shared by every connection it goes to."""

    __slots__ = ("coalesce", "project_id", "published_at", "seq", "size", "text", "type")

    def __init__(
        self,
        text: str,
        type: str,
        project_id: str | None = None,
        seq: int | None = None,
        coalesce: str | None = None,
        published_at: float = 0.0,
    ) -> None:
        self.text = text
        self.size = len(text)
        self.type = type
        self.project_id = project_id
        self.seq = seq
        self.coalesce = coalesce
        self.published_at = published_at


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
        on_slow: Callable[[Connection], None] = lambda conn: None,
        on_written: Callable[[int, float], None] = lambda count, oldest: None,
    ) -> None:
        self.client_id = client_id
        self.user_id = user_id
        self.username = username
        self.credential = credential
        self.socket = socket
        self.messages = messages
        self.queue = OutboundQueue(max_queue_messages, max_queue_bytes)
        self.close_timeout = close_timeout
        self.batch = batch
        self.state = ConnState.OPEN
        self.subs: dict[str, Subscription] = {}
        self.close_code: int | None = None
        self._on_gap = on_gap
        self._on_slow = on_slow
        self._on_written = on_written
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._oldest = 0.0  # publish time of the oldest frame waiting, for latency metrics
        self._writer = asyncio.create_task(self._write_loop(), name=f"tidings-writer-{client_id}")
        self._closer: asyncio.Task[None] | None = None

    # -- called by the hub while fanning out: synchronous, never blocks -----------------

    def deliver(self, frame: Frame) -> bool:
        """Offer an event of a project; returns False if not subscribed to it.

        Durable events go out in strict ``seq`` order: one at the cursor + 1 is sent, an old
        one dropped, and one past a gap switches the subscription to recovery from the log.
        """
        sub = self.subs.get(frame.project_id) if frame.project_id is not None else None
        if sub is None:
            return False
        if sub.state is not SubState.LIVE:
            return True  # the replay from the log covers it; ephemeral events wait for live
        seq = frame.seq
        if seq is None:
            self.push(frame)
        elif seq == sub.cursor + 1:
            sub.cursor = seq
            self.push(frame)
        elif seq > sub.cursor + 1:
            sub.move(SubState.RECOVERING)
            self._on_gap(self, sub)
        return True

    def push(self, frame: Frame) -> None:
        if self.state is not ConnState.OPEN:
            return
        if not self.queue.put(frame.text, frame.size, frame.coalesce):
            self._on_slow(self)
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer")
            return
        if len(self.queue) == 1:
            self._oldest = frame.published_at
        self._wakeup.set()

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
            if len(q) + 1 <= q.max_messages * 3 // 4 and q.nbytes + size <= max(
                q.max_bytes * 3 // 4, size
            ):
                return True
            self._room.clear()
            await self._room.wait()
        return False

    async def finish(self) -> None:
        """Wait for the writer and closer to end; call once the socket has disconnected."""
        self.state = ConnState.CLOSED if self.state is ConnState.OPEN else self.state
        self._writer.cancel()
        for sub in self.subs.values():
            if sub.task is not None:
                sub.task.cancel()
        self._room.set()
        tasks = [t for t in (self._writer, self._closer) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        self.state = ConnState.CLOSED

    # -- I/O -----------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        queue = self.queue
        try:
            while True:
                if not queue:
                    if self.state is not ConnState.OPEN:
                        return  # flushed before a close
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                oldest = self._oldest
                frames = queue.drain(BATCH_MAX_FRAMES)
                if queue:
                    self._oldest = time.time()
                self._room.set()
                if self.batch and len(frames) > 1:
                    await self.socket.send_frames(["[" + ",".join(frames) + "]"])
                elif self.batch:
                    await self.socket.send_frames(["[" + frames[0] + "]"])
                else:
                    await self.socket.send_frames(frames)
                self._on_written(len(frames), oldest)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the peer went away mid-write
            logger.debug("writer of %s stopped: %r", self.client_id, exc)

    async def _close(self, code: int, reason: str, flush: bool) -> None:
        # Whatever happens below, the TCP connection is gone after the timeout: a peer that
        # never reads can stall both the close frame and a graceful transport close.
        loop = asyncio.get_running_loop()
        loop.call_later(self.close_timeout, self.socket.abort)
        deadline = loop.time() + self.close_timeout
        if flush:
            self._wakeup.set()
            done, _ = await asyncio.wait([self._writer], timeout=self.close_timeout)
            if not done:
                self._writer.cancel()
        try:
            await asyncio.wait_for(
                self.socket.close(code, reason), max(0.0, deadline - loop.time())
            )
        except TimeoutError:
            logger.info("closing handshake of %s timed out; dropping it", self.client_id)
            self.socket.abort()
        except Exception:
            self.socket.abort()
