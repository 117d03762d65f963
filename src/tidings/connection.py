"""One ``/ws`` connection: its client messages in order, its writes, its close.

:class:`Connection` is the I/O side of a connection's :class:`~tidings.delivery.Delivery`
state. It takes each client message as it arrives (``ClientMessages`` decides what it
asks for), carries the actions out in order, and writes the outbound queue to its
:class:`~tidings.sockets.Socket`: on the loop iteration that queued the frames, many per
write, or from a writer task while the peer is behind. Whatever needs the hub (subscribe,
replay, fan-out bookkeeping) goes through the small :class:`Owner` interface.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from tidings.codes import CloseCode, ErrorCode
from tidings.delivery import Delivery, Verdict
from tidings.events import encode, timestamp
from tidings.frames import Frame
from tidings.messages import (
    Action,
    ClientMessages,
    Close,
    Reply,
    Subscribe,
    SubscribeMany,
    Unsubscribe,
    error,
)
from tidings.sockets import Socket, SocketClosed

logger = logging.getLogger("tidings.ws")

# One write takes at most this much: a peer that does not read holds at most about one
# batch in the transport's buffer besides its bounded queue.
BATCH_MAX_FRAMES = 256
BATCH_MAX_BYTES = 256 * 1024


class Owner(Protocol):
    """What a connection needs from the hub that owns it."""

    def schedule_flush(self, conn: Connection, later: bool = False) -> None:
        """Call ``conn.flush()`` once, at the end of this loop iteration (``later``: a
        little later, for frames that may wait)."""
        ...

    def slow(self, conn: Connection) -> None:
        """``conn``'s queue overflowed (it is being closed with 4008)."""
        ...

    def written(self, frames: list[Frame]) -> None:
        """``frames`` were handed to the transport."""
        ...

    async def subscribe(self, conn: Connection, action: Subscribe) -> None:
        """Answer a subscribe (``subscribed`` or ``error``), then replay and go live."""
        ...

    def unsubscribe(self, conn: Connection, action: Unsubscribe) -> None: ...

    def disconnected(self, conn: Connection, code: int | None) -> asyncio.Task[None]:
        """Release ``conn`` now that its socket is gone; the task ends when it is released."""
        ...


class ConnState(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"

    def to(self, new: ConnState) -> ConnState:
        if new not in _CONN_TRANSITIONS[self]:
            raise RuntimeError(f"illegal connection transition {self.value} -> {new.value}")
        return new


_CONN_TRANSITIONS = {
    ConnState.OPEN: {ConnState.CLOSING, ConnState.CLOSED},
    ConnState.CLOSING: {ConnState.CLOSED},
    ConnState.CLOSED: {ConnState.CLOSED},
}


class Connection(Delivery):
    """One authenticated client. Created by ``ws.py``; a :class:`~tidings.sockets.Receiver`."""

    # Slots: thousands of idle connections each save an attribute dict. Everything a busy
    # connection needs beyond them (writer task, inbox, replays) is created on demand.
    __slots__ = (
        "_closer",
        "_inbox",
        "_room",
        "_task",
        "_writer",
        "batch",
        "client_id",
        "close_code",
        "close_timeout",
        "credential",
        "messages",
        "owner",
        "replays",
        "resume_reading",
        "socket",
        "started",
        "state",
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
        owner: Owner,
        messages: ClientMessages,
        max_subscriptions: int,
        max_queue_messages: int,
        max_queue_bytes: int,
        close_timeout: float,
        batch: bool = False,
    ) -> None:
        super().__init__(max_subscriptions, max_queue_messages, max_queue_bytes)
        self.client_id = client_id
        self.user_id = user_id
        self.username = username
        self.credential = credential
        self.socket = socket
        self.owner = owner
        self.messages = messages
        self.close_timeout = close_timeout
        self.batch = batch
        self.state = ConnState.OPEN
        self.close_code: int | None = None
        self.started = time.monotonic()
        # Called when the inbox empties after reading was paused (see `receive`).
        self.resume_reading: Callable[[], None] = _nothing
        self.replays: dict[str, asyncio.Task[None]] | None = None
        self._inbox: list[Action] | None = None  # a list while a subscribe is answered
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None  # running while the peer is behind
        self._room: asyncio.Event | None = None  # a replay waiting for queue space
        self._closer: asyncio.Task[None] | None = None

    # -- client messages (the Receiver interface) ---------------------------------------------

    def receive(self, data: str | bytes) -> bool:
        """Take one client message; True while messages wait behind a subscribe (the
        transport then stops reading until :attr:`resume_reading` is called).

        Each message is parsed and rate-limited as it arrives, and a subscribe is
        *requested* at once (so the audience path stops at once), but actions are carried
        out in arrival order: replies wait behind the subscribes before them. A subscribe
        naming several projects is carried out as one subscribe per entry, in its order.
        """
        if self.state is not ConnState.OPEN:
            return False
        action = self.messages.receive(data, asyncio.get_running_loop().time())
        if isinstance(action, SubscribeMany):
            waiting = False
            for one in action.actions:
                waiting = self.take(one)
            return waiting
        return self.take(action)

    def take(self, action: Action) -> bool:
        """Carry out ``action`` as if a client message had asked for it, in order with
        the others (the event stream subscribes this way); returns as :meth:`receive`."""
        if self.state is not ConnState.OPEN:
            return False
        if isinstance(action, Subscribe) and not self.request(action.project_id):
            action = error(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"at most {self.max_subscriptions} subscriptions per connection",
                action.request_id,
                project_id=action.project_id,
            )
        if self._inbox is not None:
            self._inbox.append(action)
            return True
        if not isinstance(action, Subscribe):
            self._act(action)
            return False
        self._inbox = []
        self._task = asyncio.create_task(self._answer(action))
        return True

    def disconnected(self, code: int) -> None:
        self.owner.disconnected(self, code)

    async def idle(self) -> None:
        """Wait until every message received so far has been handled."""
        if self._task is not None:
            await asyncio.shield(self._task)

    def _act(self, action: Action) -> None:
        if isinstance(action, Reply):
            self.send_message(action.message)
        elif isinstance(action, Unsubscribe):
            self.owner.unsubscribe(self, action)
        elif isinstance(action, Close):
            self.close(action.code, action.reason, flush=True)

    async def _answer(self, action: Subscribe) -> None:
        """Answer subscribes, and the actions queued behind them, until none is left."""
        try:
            pending: Subscribe | None = action
            while pending is not None:
                await self.owner.subscribe(self, pending)
                pending = None
                while pending is None and self._inbox and self.state is ConnState.OPEN:
                    queued = self._inbox.pop(0)
                    if isinstance(queued, Subscribe):
                        pending = queued
                    else:
                        self._act(queued)
        finally:
            self._inbox = None
            self._task = None
            self.resume_reading()

    # -- outbound --------------------------------------------------------------------------

    def send_message(self, message: dict[str, Any]) -> None:
        """Queue a reply or notice for this connection only; ``timestamp`` is added here."""
        message["timestamp"] = timestamp()
        text = encode(message).decode()
        self.push(Frame(text, message["type"], published_at=time.time()))

    def push(self, frame: Frame) -> None:
        """Queue a frame for this connection alone, and see it written."""
        verdict = self.enqueue(frame)
        if verdict:
            self.handle(verdict)

    def handle(self, verdict: Verdict) -> None:
        """Carry out what queueing a frame asked for (REPLAY is the hub's to start)."""
        if verdict is Verdict.FLUSH:
            self.owner.schedule_flush(self)
        elif verdict is Verdict.LATER:
            self.owner.schedule_flush(self, later=True)
        elif verdict is Verdict.SLOW:
            self.owner.slow(self)
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer")

    def flush(self) -> None:
        """Write what is queued, now, if the transport takes it without waiting.

        The hub calls this once per loop iteration for every connection whose queue went
        from empty to not empty in it, so all the events fanned out in that iteration
        leave in one write. When the peer is behind (or a send is in progress) a writer
        task takes over and waits; it runs until the queue is empty.
        """
        queue = self.queue
        if self.state is not ConnState.OPEN or self._writer is not None:
            return  # a running writer takes whatever is queued
        socket = self.socket
        while queue.count:
            if not socket.writable():
                self._writer = asyncio.create_task(self._write_loop())
                return
            frames: list[Frame] = queue.drain(BATCH_MAX_FRAMES, BATCH_MAX_BYTES)  # type: ignore[assignment]
            try:
                socket.write_nowait(frames, self.batch)
            except SocketClosed:
                return  # the peer went away; the transport reports the disconnect
            except Exception:
                self._write_failed()
                return
            self.owner.written(frames)
        if self._room is not None:
            self._room.set()

    def _write_failed(self) -> None:
        """A write failed for another reason than a closed peer: never leave a socket
        open that silently drops events. The client resumes by seq elsewhere."""
        logger.exception("write to %s failed; dropping the connection", self.client_id)
        self.open = False
        self.queue.clear()
        self.socket.abort()

    # -- end -------------------------------------------------------------------------------

    def close(self, code: int, reason: str = "", *, flush: bool = False) -> None:
        """Start closing; the socket is aborted if the handshake does not finish in time.

        With ``flush``, frames already queued (say, the error that explains the close) are
        written first, within the same time limit; otherwise they are dropped.
        """
        if self.state is not ConnState.OPEN:
            return
        self.state = self.state.to(ConnState.CLOSING)
        self.open = False
        self.close_code = code
        if not flush:
            self.queue.clear()
            if self._writer is not None:
                self._writer.cancel()
        self._stop_replays()
        self._closer = asyncio.create_task(self._close(code, reason, flush))

    def track_replay(self, project_id: str, task: asyncio.Task[None]) -> None:
        if self.replays is None:
            self.replays = {}
        self.replays[project_id] = task
        task.add_done_callback(lambda t: self._replay_done(project_id, t))

    def stop_replay(self, project_id: str) -> None:
        task = self.replays.get(project_id) if self.replays else None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _replay_done(self, project_id: str, task: asyncio.Task[None]) -> None:
        if self.replays is not None and self.replays.get(project_id) is task:
            del self.replays[project_id]
            if not self.replays:
                self.replays = None

    def _stop_replays(self) -> None:
        for task in list((self.replays or {}).values()):
            task.cancel()

    async def wait_for_room(self, size: int) -> bool:
        """Wait until a replayed frame of ``size`` bytes :meth:`fits`; False if the
        connection closes first."""
        while self.state is ConnState.OPEN:
            if self.fits(size):
                return True
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            await self._room.wait()
        return False

    async def finish(self) -> None:
        """Wait for the work of this connection to end; call once the socket is gone."""
        self.open = False
        if self.state is ConnState.OPEN:
            self.state = self.state.to(ConnState.CLOSING)
        if self._writer is not None:
            self._writer.cancel()
        self._stop_replays()
        if self._room is not None:
            self._room.set()
        tasks = [t for t in (self._task, self._writer, self._closer) if t is not None]
        tasks += (self.replays or {}).values()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.state = self.state.to(ConnState.CLOSED)

    # -- I/O -------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Send what is queued, waiting on the peer, until the queue is empty; then end."""
        queue = self.queue
        try:
            while queue.count:
                frames: list[Frame] = queue.drain(BATCH_MAX_FRAMES, BATCH_MAX_BYTES)  # type: ignore[assignment]
                if self._room is not None:
                    self._room.set()
                await self.socket.send(frames, self.batch)
                self.owner.written(frames)
        except SocketClosed:
            pass  # the peer went away mid-write; the transport reports the disconnect
        except Exception:
            self._write_failed()
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None

    async def _close(self, code: int, reason: str, flush: bool) -> None:
        # Whatever happens below, the TCP connection is gone after the timeout: a peer that
        # never reads can stall both the close frame and a graceful transport close.
        loop = asyncio.get_running_loop()
        abort = loop.call_later(self.close_timeout, self.socket.abort)
        deadline = loop.time() + self.close_timeout
        try:
            if flush and self.queue.count:
                writer = self._writer or asyncio.create_task(self._write_loop())
                self._writer = writer
                done, _ = await asyncio.wait([writer], timeout=self.close_timeout)
                if not done:
                    writer.cancel()
            await asyncio.wait_for(
                self.socket.close(code, reason), max(0.0, deadline - loop.time())
            )
        except SocketClosed:
            abort.cancel()  # already gone
        except TimeoutError:
            logger.info("closing handshake of %s timed out; dropping it", self.client_id)
            self.socket.abort()
        except Exception:
            logger.exception("closing %s failed; dropping it", self.client_id)
            self.socket.abort()


def _nothing() -> None:
    pass
