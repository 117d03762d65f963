"""Server-Sent Events: a ``/ws`` connection written as ``text/event-stream``.

``GET /api/stream`` (``api/stream.py``) builds an ordinary
:class:`~tidings.connection.Connection`, registered with the hub like a WebSocket one, over
an :class:`EventStreamSocket`: the :class:`~tidings.sockets.Socket` that writes each frame
as an SSE event. Delivery, replays, back-pressure and slow-consumer closes are therefore
the socket's own (``delivery.py``, ``hub.py``); only the framing and the resume cursor
live here.

The cursor (each durable event's ``id:``, sent back by browsers as ``Last-Event-ID``)
holds the newest seq given of *every* project of the stream, so one id resumes them all.
:func:`encode_cursor` / :func:`decode_cursor` are its only readers and writers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

import orjson
from starlette.types import Receive, Send

from tidings.frames import Frame
from tidings.messages import PROJECT_ID
from tidings.sockets import SocketClosed

MEDIA_TYPE = "text/event-stream; charset=utf-8"
CURSOR_VERSION = 1
# Longer than any cursor of ws_max_subscriptions projects could reasonably be; an
# attacker's header is refused before it is decoded.
MAX_CURSOR_CHARS = 64 * 1024
MAX_SEQ = 2**63 - 1
HEADERS = [
    (b"content-type", MEDIA_TYPE.encode()),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each event on at once
]


class BadCursor(ValueError):
    """A ``Last-Event-ID`` this server did not write (or for another stream)."""


def encode_cursor(positions: dict[str, int]) -> str:
    """The opaque cursor for ``positions`` (project id → newest seq given)."""
    raw = orjson.dumps({"v": CURSOR_VERSION, "p": positions})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(text: str, max_projects: int) -> dict[str, int]:
    """Positions of a cursor made by :func:`encode_cursor`; :class:`BadCursor` for
    anything else (never a partial result)."""
    if not text or len(text) > MAX_CURSOR_CHARS:
        raise BadCursor("empty or too long")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != text:
            raise BadCursor("not canonical base64url")  # stray characters were skipped
        value = orjson.loads(raw)
    except (binascii.Error, ValueError, UnicodeError) as exc:
        raise BadCursor("not base64url JSON") from exc
    if (
        not isinstance(value, dict)
        or set(value) != {"v", "p"}
        or type(value["v"]) is not int
        or value["v"] != CURSOR_VERSION
    ):
        raise BadCursor("unknown cursor version")
    positions = value["p"]
    if not isinstance(positions, dict) or len(positions) > max_projects:
        raise BadCursor("bad positions")
    for project_id, seq in positions.items():
        if PROJECT_ID.fullmatch(project_id) is None:
            raise BadCursor("bad project id")
        if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
            raise BadCursor("bad seq")
    return positions


class EventStreamSocket:
    """A :class:`~tidings.sockets.Socket` writing SSE events into one HTTP response.

    Frames become ``event: <type>`` / ``data: <the socket's JSON>`` events; a durable
    event of a project of the stream (and a ``subscribed`` reply, which sets where the
    project starts) also gets ``id: <cursor>``. A heartbeat is preceded by a comment line,
    which keeps proxies from closing an idle stream.

    :meth:`send` hands one chunk at a time to :meth:`run`, which writes it to the ASGI
    ``send`` (waiting on HTTP flow control): at most one chunk waits here and one in the
    transport, and a peer that stops reading fills the connection's bounded queue, which
    closes it as a slow consumer, as on the socket.
    """

    def __init__(self, projects: list[str], positions: dict[str, int]) -> None:
        self.projects = frozenset(projects)
        self.positions = {p: s for p, s in positions.items() if p in self.projects}
        self._chunk: bytes | None = None  # encoded, waiting for run() to write it
        self._ready = asyncio.Event()  # a chunk waits, or the stream is closing
        self._space = asyncio.Event()  # no chunk waits, or the stream is gone
        self._done = asyncio.Event()  # run() has returned
        self._closing: tuple[int, str] | None = None
        self._gone = False  # the peer left, or run() ended: nothing more can be written
        self._pump: asyncio.Task[None] | None = None

    # -- the Socket interface -------------------------------------------------------------

    async def send(self, frames: list[Frame], batch: bool) -> None:
        chunk = self.encode(frames)
        while self._chunk is not None and not self._gone:
            self._space.clear()
            await self._space.wait()
        if self._gone or self._closing is not None:
            raise SocketClosed("event stream closed")
        self._chunk = chunk
        self._ready.set()

    def writable(self) -> bool:
        return False  # HTTP sends are awaited: the connection's writer task does them

    def write_nowait(self, frames: list[Frame], batch: bool) -> None:
        raise RuntimeError("an event stream cannot write without awaiting")

    async def close(self, code: int, reason: str) -> None:
        """End the response after what was written so far, with a comment saying why
        (EventSource reconnects by itself; clients that read the status see it next)."""
        if self._gone:
            raise SocketClosed("event stream closed")
        if self._closing is None:
            self._closing = (code, reason)
            self._ready.set()
        await self._done.wait()

    def abort(self) -> None:
        """Stop writing now (a peer that does not read): the response is left unfinished
        and the server drops the connection (uvicorn logs "ASGI callable returned without
        completing response": ASGI offers no other way to drop a stalled HTTP peer)."""
        self._gone = True
        self._space.set()
        if self._pump is not None:
            self._pump.cancel()

    # -- framing ---------------------------------------------------------------------------

    def encode(self, frames: list[Frame]) -> bytes:
        """The SSE text of ``frames``, cursor positions updated as they pass."""
        parts: list[str] = []
        for frame in frames:
            kind = frame.type
            if kind == "system.heartbeat":
                parts.append(": heartbeat\n")
            parts.append(f"event: {kind}\n")
            if self._moves_cursor(frame):
                parts.append(f"id: {encode_cursor(self.positions)}\n")
            text = frame.text
            if "\n" in text or "\r" in text:  # never from orjson; kept valid SSE regardless
                text = "\ndata: ".join(text.splitlines())
            parts.append(f"data: {text}\n\n")
        return "".join(parts).encode()

    def _moves_cursor(self, frame: Frame) -> bool:
        project_id = frame.project_id
        if frame.seq is not None and project_id in self.projects:
            assert project_id is not None
            self.positions[project_id] = frame.seq
            return True
        if frame.type != "subscribed":
            return False
        reply: dict[str, Any] = orjson.loads(frame.text)
        project_id = reply.get("project_id")
        if project_id not in self.projects:
            return False
        if reply.get("recovered") is not True:
            # Not resuming: the stream starts at the reply's seq (the replay, if any,
            # follows it). Resuming: the position stays until the replayed events move it.
            self.positions[project_id] = reply["seq"]
        return True

    # -- the HTTP side ---------------------------------------------------------------------

    async def run(self, receive: Receive, send: Send) -> None:
        """Write the response until the stream is closed or the peer goes away."""
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        self._pump = pump = asyncio.create_task(self._write(send))
        listen = asyncio.create_task(_disconnected(receive))
        try:
            await asyncio.wait([pump, listen], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._gone = True
            self._space.set()
            for task in (pump, listen):
                task.cancel()
            await asyncio.gather(pump, listen, return_exceptions=True)
            self._done.set()

    async def _write(self, send: Send) -> None:
        while True:
            chunk = self._chunk
            if chunk is None:
                if self._closing is not None:
                    break
                self._ready.clear()
                await self._ready.wait()
                continue
            self._chunk = None
            self._space.set()  # the writer may encode the next chunk meanwhile
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        code, reason = self._closing
        end = f": closed {code} {reason}\n\n".encode()
        await send({"type": "http.response.body", "body": end, "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
