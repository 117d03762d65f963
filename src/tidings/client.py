"""An asyncio client for ``/ws`` that reconnects and resumes without loss or duplicates.

The bookkeeping is pure and separate from the socket: :class:`ClientState` takes each
server message (as a dict) and says what to hand to the caller, and which subscriptions
to send after a reconnect; :class:`Backoff` computes the delays. :class:`TidingsClient`
only pumps, and hands out each message typed (:mod:`tidings.schema`: one class per
``type``). Whether to reconnect after a close code comes from
:data:`tidings.codes.CLOSE_CODES`, the same table the server documents and serves at
``GET /api/protocol``. A connection silent for twice the ``heartbeat_interval`` the server
announced counts as dead: the client drops it, reconnects and resumes.

Usage::

    async with TidingsClient("ws://localhost:8000/ws", token="tid_…") as client:
        reply = await client.subscribe(project_id, snapshot=True)
        state = reply["snapshot"]  # the project, its files and processes at reply["seq"]
        async for event in client:
            match event:
                case Subscribed(snapshot=snapshot) if snapshot is not None:
                    state = snapshot  # the project's state, afresh after a lost gap
                case FileUploaded():
                    print(event.seq, event.file.name)  # apply each event to state
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from tidings.codes import CLOSE_CODES, CloseCode, reconnect_within
from tidings.schema import ErrorMessage, Received, Subscribed, parse_server_message

logger = logging.getLogger("tidings.client")

SUBPROTOCOLS = ("tidings.batch.v1", "tidings.v1")
COOKIE_NAME = "tidings_session"
# Messages that only keep the connection alive; never handed to the caller.
SILENT = frozenset({"system.heartbeat", "pong"})
# Heartbeat intervals of silence after which a connection counts as dead.
DEAD_AFTER_HEARTBEATS = 2


class TidingsError(Exception):
    """Base class of the errors the client raises."""


class Unauthorized(TidingsError):
    """The server closed with 4401: log in again (or use a valid token) before retrying."""


class SubscriptionError(TidingsError):
    """The server answered a ``subscribe`` with an ``error`` (``not_found`` …)."""

    def __init__(self, message: Received) -> None:
        super().__init__(f"{message.get('code')}: {message.get('message')}")
        self.message = message


class SubscriptionEnded(TidingsError):
    """The subscription ended (``project.deleted``, access revoked, not found or
    unsubscribed) before the event :meth:`TidingsClient.wait_for` waited for arrived."""

    def __init__(self, project_id: str) -> None:
        super().__init__(f"the subscription to {project_id} ended")
        self.project_id = project_id


class Closed(TidingsError):
    """The server closed with a code after which a client must not reconnect."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed with {code} {reason}".strip())
        self.code = code
        self.reason = reason


def should_reconnect(code: int | None) -> bool:
    """Whether to reconnect after ``code`` (None: the connection failed or dropped).

    Codes in the protocol table decide for themselves; anything else (1006 abnormal
    closure, 1011 server error, a refused TCP connection) is a transient failure.
    """
    if code is None:
        return True
    try:
        return CLOSE_CODES[CloseCode(code)].reconnect
    except ValueError:
        return True


@dataclass
class Backoff:
    """Exponential back-off with jitter: attempt n waits a random time in
    ``[d/2, d]`` where ``d = min(cap, base * factor**n)``, so a fleet of clients
    reconnecting after a restart spreads out instead of arriving at once."""

    base: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    rng: Callable[[float, float], float] = field(default=random.uniform)
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return self.rng(ceiling / 2, ceiling)

    def spread(self, within: float) -> float:
        """The wait before the first reconnect after a restart whose close reason suggests
        spreading reconnects over ``within`` seconds: a random time in ``[0, within]``
        (``cap`` at most)."""
        return self.rng(0.0, min(within, self.cap))

    def reset(self) -> None:
        self.attempt = 0


class ClientState:
    """Per-project seq bookkeeping and subscriptions of one logical client (no I/O).

    ``last[p]`` is the newest seq of project ``p`` handed to the caller from ``p``'s
    subscription stream: what follows its ``subscribed`` reply on the current connection.
    Only that stream moves the cursor. A durable event of a project the caller subscribes
    to that arrives outside the stream (a ``project.*`` sent to the user's project list
    before the server took the subscribe) is dropped: the stream delivers it, or the
    ``subscribed`` seq covers it. One with ``seq <= last[p]`` is a duplicate (a replay
    overlapping what was already seen) and is dropped too. Events of projects the caller
    does not subscribe to (the project-list audience) pass through untouched. After a
    reconnect, :meth:`resubscribe` gives the one ``subscribe`` message that resumes every
    subscription from its ``last`` seq; those that asked for a snapshot ask again, so the
    server sends the state whenever it cannot resume.
    """

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.subscriptions: set[str] = set()
        self.streaming: set[str] = set()  # answered with `subscribed` on this connection
        self.snapshots: set[str] = set()  # subscriptions that ask for a snapshot

    def want(self, project_id: str, since: int | None, snapshot: bool = False) -> dict[str, Any]:
        """Record a subscription the caller asked for; return the message to send.

        With ``snapshot`` and no ``since`` the caller holds nothing of the project: the
        subscription starts from the state the server sends, not from a seq seen before.
        """
        self.subscriptions.add(project_id)
        self.streaming.discard(project_id)  # a new stream starts with the new reply
        if snapshot:
            self.snapshots.add(project_id)
            if since is None:
                self.last.pop(project_id, None)
        else:
            self.snapshots.discard(project_id)
        if since is not None:
            self.last[project_id] = since
        return self.subscribe_message(project_id)

    def drop(self, project_id: str) -> dict[str, Any]:
        self._forget(project_id)
        return {"type": "unsubscribe", "project_id": project_id}

    def _forget(self, project_id: str) -> None:
        self.subscriptions.discard(project_id)
        self.streaming.discard(project_id)
        self.snapshots.discard(project_id)

    def subscribe_message(self, project_id: str) -> dict[str, Any]:
        return {"type": "subscribe", **self._entry(project_id)}

    def _entry(self, project_id: str) -> dict[str, Any]:
        message: dict[str, Any] = {"project_id": project_id}
        if project_id in self.last:
            message["since"] = self.last[project_id]
        if project_id in self.snapshots:
            message["snapshot"] = True
        return message

    def seen(self, project_id: str, seq: int) -> bool:
        """Whether the caller's view of the project includes its event ``seq``: handed over
        from the stream, or covered by a ``subscribed`` seq (a snapshot's, or where a
        subscription without recovery starts)."""
        return self.last.get(project_id, -1) >= seq

    def resubscribe(self) -> dict[str, Any] | None:
        """A new connection: every wanted subscription starts a new stream. Returns the one
        ``subscribe`` message (``projects``) that asks for all of them (None: none)."""
        self.streaming.clear()
        if not self.subscriptions:
            return None
        return {
            "type": "subscribe",
            "projects": [self._entry(p) for p in sorted(self.subscriptions)],
        }

    def receive(self, message: dict[str, Any]) -> bool:
        """Account for one server message; True if the caller should see it."""
        kind = message.get("type")
        if kind in SILENT:
            return False
        project_id = message.get("project_id")
        if not isinstance(project_id, str):
            return True
        seq = message.get("seq")
        if kind == "subscribed":
            if project_id in self.subscriptions:
                self.streaming.add(project_id)
            if isinstance(seq, int):
                if message.get("recovered") is False:
                    # The gap cannot be replayed; the caller refetches, we start from here.
                    self.last[project_id] = seq
                elif "recovered" not in message:
                    self.last[project_id] = max(self.last.get(project_id, 0), seq)
            return True
        if (kind == "unsubscribed" and message.get("reason") is not None) or (
            kind == "error" and message.get("code") == "not_found"
        ):
            self._forget(project_id)
            return True
        if isinstance(seq, int) and project_id in self.subscriptions:
            if project_id not in self.streaming or seq <= self.last.get(project_id, -1):
                return False
            self.last[project_id] = seq
            if kind == "project.deleted":
                self._forget(project_id)
        return True


def websocket_url(url: str) -> str:
    """Accept ``ws(s)://host/ws`` as is, or a base ``http(s)://host`` (``/ws`` appended)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _seconds(value: Any) -> float | None:
    """A positive number of seconds, or None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def decode_frame(data: str | bytes) -> list[dict[str, Any]]:
    """The messages of one frame (``tidings.batch.v1`` frames carry a JSON array)."""
    parsed = orjson.loads(data)
    items = parsed if isinstance(parsed, list) else [parsed]
    return [m for m in items if isinstance(m, dict)]


_END = object()
# Seconds a closing handshake may take before the socket is simply dropped: a connection
# given up as dead never answers one.
CLOSE_TIMEOUT = 2.0
# The messages that answer a request about one project.
_REPLIES = {
    "subscribe": frozenset({"subscribed", "error"}),
    "unsubscribe": frozenset({"unsubscribed"}),
}


class TidingsClient:
    """One logical connection to ``/ws`` that survives restarts of the server.

    Authenticate with an API ``token`` (``Authorization: Bearer``) or the session
    ``cookie`` value. Iterating yields every server message except heartbeats, pongs and
    duplicates, in order, each an instance of its class in :mod:`tidings.schema`
    (:class:`~tidings.schema.UnknownMessage` for a type this version does not know):
    ``connection.established`` (again after each reconnect: refetch whatever you track
    without a subscription, such as the project list), ``subscribed`` (with
    ``recovered: false`` when events were lost to retention: refetch that project),
    events, ``unsubscribed`` and ``error``. Iteration raises :class:`Unauthorized` on 4401
    and :class:`Closed` on any other close code whose table entry says not to reconnect.
    ``on_unrecovered(project_id)`` is also called for each ``recovered: false``. A
    subscription made with ``snapshot=True`` gets the project's state in its ``subscribed``
    reply (``"snapshot"``) at first, and again whenever a resume cannot recover.

    A connection that carries nothing for :data:`DEAD_AFTER_HEARTBEATS` times the
    ``heartbeat_interval`` of its ``connection.established`` is given up as dead (a laptop
    that slept, a NAT that forgot the connection): the client reconnects and resumes.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        cookie: str | None = None,
        *,
        backoff: Backoff | None = None,
        on_unrecovered: Callable[[str], Any] | None = None,
        open_timeout: float = 10.0,
    ) -> None:
        self.url = websocket_url(url)
        self.headers: dict[str, str] = {}
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"
        if cookie is not None:
            self.headers["Cookie"] = f"{COOKIE_NAME}={cookie}"
        self.backoff = backoff or Backoff()
        self.on_unrecovered = on_unrecovered
        self.open_timeout = open_timeout
        self.state = ClientState()
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.heartbeat_interval: float | None = None  # announced by the current connection
        self._ws: ClientConnection | None = None
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None
        self._pending: dict[tuple[str, frozenset[str]], list[asyncio.Future[Received]]] = {}
        self._dropping: set[asyncio.Task[None]] = set()  # closes of dead connections
        self._waiters: dict[str, list[tuple[int, asyncio.Future[None]]]] = {}

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> TidingsClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the first connection (errors propagate), then keep it up in the background."""
        ws = await self._open()
        self._deliver(await self._first_message(ws))
        self._runner = asyncio.create_task(self._run(ws), name="tidings-client")

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        await asyncio.gather(*self._dropping, return_exceptions=True)

    # -- API ------------------------------------------------------------------------------

    async def subscribe(
        self, project_id: str, since: int | None = None, *, snapshot: bool = False
    ) -> Subscribed:
        """Subscribe (resuming after ``since`` if given); return the ``subscribed`` reply.

        With ``snapshot`` the reply carries the project's state at its ``seq`` (the
        project, its files and processes, as REST shows them) unless it resumes from
        ``since``; after a reconnect that cannot recover, the ``subscribed`` message
        iteration yields carries it again. Raises :class:`SubscriptionError` if the server
        refuses. The subscription is kept across reconnects until :meth:`unsubscribe`,
        ``project.deleted`` or revoked access. While disconnected this waits for the
        reconnect; bound it with ``asyncio.timeout``.
        """
        message = self.state.want(project_id, since, snapshot)
        reply = await self._request(message)
        if not isinstance(reply, Subscribed):
            raise TidingsError(f"unexpected reply to subscribe: {reply.raw}")
        return reply

    async def unsubscribe(self, project_id: str) -> None:
        """End a subscription (at once when disconnected: it is simply not resumed)."""
        message = self.state.drop(project_id)
        self._release_waiters(project_id)
        if self.connected.is_set():
            await self._request(message)

    async def wait_for(self, project_id: str, seq: int) -> None:
        """Return once the event ``seq`` of ``project_id`` has been delivered on the
        socket (or a ``subscribed`` reply covers it): read-your-writes for a change whose
        answer said ``Tidings-Seq: seq``.

        Needs a subscription to the project; raises :class:`SubscriptionEnded` if there is
        none or it ends first, and the client's error if it stops. Bound it with
        ``asyncio.timeout``.
        """
        if self.state.seen(project_id, seq):
            return
        if project_id not in self.state.subscriptions:
            raise SubscriptionEnded(project_id)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(project_id, [])
        waiters.append((seq, future))
        try:
            await future
        finally:
            if (seq, future) in waiters:
                waiters.remove((seq, future))
            if not waiters and self._waiters.get(project_id) is waiters:
                del self._waiters[project_id]

    def __aiter__(self) -> TidingsClient:
        return self

    async def __anext__(self) -> Received:
        item = await self._events.get()
        if item is _END:
            self._events.put_nowait(_END)
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._events.put_nowait(item)  # every later call raises it too
            raise item
        return item  # type: ignore[no-any-return]  # the queue holds only these

    # -- I/O ------------------------------------------------------------------------------

    async def _request(self, message: dict[str, Any]) -> Received:
        """Send ``message`` and wait for the reply about its project.

        Replies are matched by project rather than by ``id``, because a subscription made
        while disconnected is sent (and answered) only after the reconnect.
        """
        reply_types = _REPLIES[message["type"]]
        key = (message["project_id"], reply_types)
        future: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append(future)
        try:
            await self._send(message)
            reply = await future
        finally:
            waiting = self._pending.get(key, [])
            if future in waiting:
                waiting.remove(future)
        if isinstance(reply, ErrorMessage):
            raise SubscriptionError(reply)
        return reply

    async def _send(self, message: dict[str, Any]) -> None:
        """Send now if connected; otherwise the reconnect sends it (from ``state``)."""
        ws = self._ws
        if ws is None or not self.connected.is_set():
            return
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(orjson.dumps(message).decode())

    async def _open(self) -> ClientConnection:
        return await websockets.connect(
            self.url,
            additional_headers=self.headers,
            subprotocols=[websockets.Subprotocol(p) for p in SUBPROTOCOLS],
            open_timeout=self.open_timeout,
            close_timeout=CLOSE_TIMEOUT,
            max_size=None,
        )

    async def _first_message(self, ws: ClientConnection) -> list[dict[str, Any]]:
        """Wait for ``connection.established``; raise if the server closes instead.

        Returns the whole first frame: with ``tidings.batch.v1`` more may follow the hello.
        """
        try:
            raw = await asyncio.wait_for(ws.recv(), self.open_timeout)
        except websockets.ConnectionClosed:
            code = ws.close_code
            if code == CloseCode.UNAUTHORIZED:
                raise Unauthorized(ws.close_reason or "not authenticated") from None
            raise
        messages = decode_frame(raw)
        kind = messages[0].get("type") if messages else None
        if kind != "connection.established":
            raise TidingsError(f"unexpected first message {kind!r}")
        self.heartbeat_interval = _seconds(messages[0].get("heartbeat_interval"))
        # Subscriptions the caller asked for, from where each left off; sent before
        # `connected` is set so that a concurrent subscribe() cannot interleave.
        resubscribe = self.state.resubscribe()
        if resubscribe is not None:
            await ws.send(orjson.dumps(resubscribe).decode())
        self._ws = ws
        self.connected.set()
        self.backoff.reset()
        return messages

    def _deliver(self, first_frame: list[dict[str, Any]]) -> None:
        self._events.put_nowait(parse_server_message(first_frame[0]))  # connection.established
        for message in first_frame[1:]:
            self._handle(message)

    async def _run(self, ws: ClientConnection) -> None:
        try:
            while True:
                code = await self._pump(ws)
                self.connected.clear()
                self._ws = None
                if code == CloseCode.UNAUTHORIZED:
                    self._finish(Unauthorized("closed with 4401"))
                    return
                if not should_reconnect(code):
                    self._finish(Closed(code))
                    return
                # A node that stops (1012) suggests spreading the fleet's return over a few
                # seconds: wait a random part of that before the first attempt.
                within = None
                if code == CloseCode.SERVICE_RESTART:
                    within = reconnect_within(ws.close_reason or "")
                ws = await self._reconnect(within)
        except (Unauthorized, Closed) as exc:
            self._finish(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an unexpected reply: surface it, do not hang
            logger.exception("tidings client stopped")
            self._finish(exc)

    async def _pump(self, ws: ClientConnection) -> int | None:
        """Read until the connection ends or falls silent; return its close code (None:
        dropped, or given up as dead)."""
        loop = asyncio.get_running_loop()
        limit = self.heartbeat_interval and DEAD_AFTER_HEARTBEATS * self.heartbeat_interval
        try:
            async with asyncio.timeout(limit and loop.time() + limit) as silence:
                async for raw in ws:
                    if limit:
                        silence.reschedule(loop.time() + limit)
                    for message in decode_frame(raw):
                        self._handle(message)
        except websockets.ConnectionClosed:
            pass
        except TimeoutError:
            logger.info("tidings client: nothing heard for %.1fs; reconnecting", limit)
            self._drop(ws)
            return None
        code = ws.close_code
        return None if code == 1006 else code

    def _drop(self, ws: ClientConnection) -> None:
        """Close a dead connection in the background: its closing handshake cannot
        complete, so it ends after :data:`CLOSE_TIMEOUT`, and the reconnect need not wait."""
        task = asyncio.create_task(ws.close())
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)

    def _handle(self, message: dict[str, Any]) -> None:
        if not self.state.receive(message):
            return
        event = parse_server_message(message)
        project_id = message.get("project_id")
        for key in [k for k in self._pending if k[0] == project_id]:
            if event.type in key[1]:
                for future in self._pending.pop(key):
                    if not future.done():
                        future.set_result(event)
        lost = isinstance(event, Subscribed) and event.recovered is False
        if lost and self.on_unrecovered is not None:
            self.on_unrecovered(str(message["project_id"]))
        self._events.put_nowait(event)
        if isinstance(project_id, str) and project_id in self._waiters:
            self._release_waiters(project_id)

    def _release_waiters(self, project_id: str) -> None:
        """Wake :meth:`wait_for` calls the project's view now covers, or whose
        subscription has ended."""
        ended = project_id not in self.state.subscriptions
        for seq, future in self._waiters.get(project_id, []):
            if future.done():
                continue
            if self.state.seen(project_id, seq):
                future.set_result(None)
            elif ended:
                future.set_exception(SubscriptionEnded(project_id))

    async def _reconnect(self, within: float | None = None) -> ClientConnection:
        """Connect again, after ``backoff.spread(within)`` the first time if given (a
        restart's suggestion), else (and after each failure) after the back-off."""
        while True:
            if within is not None:
                delay, within = self.backoff.spread(within), None
            else:
                delay = self.backoff.next_delay()
            logger.info("tidings client: reconnecting in %.2fs", delay)
            await asyncio.sleep(delay)
            try:
                ws = await self._open()
            except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                logger.info("tidings client: connect failed: %s", exc)
                continue
            try:
                first_frame = await self._first_message(ws)
            except (websockets.ConnectionClosed, TimeoutError, TidingsError) as exc:
                if isinstance(exc, Unauthorized):
                    raise
                logger.info("tidings client: no handshake: %s", exc)
                await ws.close()
                if isinstance(exc, websockets.ConnectionClosed) and not should_reconnect(
                    ws.close_code
                ):
                    raise Closed(ws.close_code, ws.close_reason or "") from None
                continue
            self.reconnects += 1
            self._deliver(first_frame)
            return ws

    def _finish(self, exc: BaseException | None) -> None:
        for futures in self._pending.values():
            for future in futures:
                if not future.done():
                    future.set_exception(exc or Closed(None))
        self._pending.clear()
        for waiters in self._waiters.values():
            for _, waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc or Closed(None))
        self._events.put_nowait(exc if exc is not None else _END)
