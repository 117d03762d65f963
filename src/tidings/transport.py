"""tidings' own WebSocket transport: an asyncio protocol that uvicorn runs for ``/ws``.

uvicorn hands over every WebSocket upgrade to the protocol class given as its ``ws=``
option (see ``uvicorn_options`` in ``server.py``). :class:`WebSocketTransport` is that
class: it drives the ``websockets`` library's public sans-I/O :class:`ServerProtocol`
(bytes in, events and bytes out) and speaks ASGI to the app, so ``/ws`` stays an
ordinary route of the FastAPI app: authentication, the Origin check and subprotocol
choice are the endpoint's, and a refusal before accepting is a plain HTTP response.

What it adds over a generic ASGI WebSocket server is the ``tidings.socket`` scope
extension (:data:`tidings.sockets.EXTENSION`): the transport itself, implementing
:class:`tidings.sockets.DetachableSocket`. Through it

- the writer hands a whole batch of pre-encoded frames to the TCP transport in one
  ``write`` (no per-frame objects, ASGI messages or event-loop round trips);
- the endpoint *detaches* an authenticated connection: client messages then go straight
  to a :class:`tidings.sockets.Receiver` and the ASGI app returns, so an idle connection
  holds no task, no scope, no receive queue and no handshake objects.

Liveness (pings), limits (``ws_max_size``; invalid UTF-8 closes with 1007), transport
flow control and the closing handshake are handled here; every close frame sent is
followed by a dropped connection if the peer has not completed the handshake within
:attr:`TransportOptions.close_timeout`. Per-message compression is never negotiated:
tidings encodes each event once for every recipient.
"""

from __future__ import annotations

import asyncio
import enum
import http
import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, cast
from urllib.parse import unquote

from websockets.datastructures import Headers
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from tidings.db import unavailable
from tidings.frames import Frame as EventFrame
from tidings.frames import batch_text, frame_text
from tidings.sockets import EXTENSION, Receiver, SocketClosed

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

logger = logging.getLogger("tidings.transport")

ABNORMAL = 1006  # the connection ended without a closing handshake (never sent on the wire)


@dataclass(frozen=True)
class TransportOptions:
    """What tidings configures beyond uvicorn's own ``ws_*`` options.

    uvicorn gives a ``ws=`` class nothing but its own config, so the app hands these over
    in its lifespan state, under :data:`OPTIONS_KEY` (``create_app`` does): the state
    reaches every protocol uvicorn makes, in every worker process.
    """

    close_timeout: float = 10.0
    """Seconds a peer has to complete the closing handshake before it is dropped."""

    shutdown_reason: str = "service restart"
    """The reason of the 1012 close frame sent when the server stops."""


OPTIONS_KEY = "tidings.transport"
DEFAULTS = TransportOptions()


class Phase(enum.IntEnum):
    """Where a connection is; it only moves forward."""

    REQUEST = 0  # waiting for the upgrade request
    HANDSHAKE = 1  # the app decides: accept, close (403) or an HTTP response
    RESPONDING = 2  # the app is sending an HTTP response instead of accepting
    OPEN = 3  # accepted: messages flow both ways
    CLOSING = 4  # a close frame or an HTTP response went out, or one came in: no more writes
    CLOSED = 5  # the TCP connection is gone


class WebSocketTransport(asyncio.Protocol):
    """One WebSocket connection, from uvicorn's upgrade to the end of its TCP connection.

    uvicorn constructs it with ``config``, ``server_state`` and ``app_state``, calls
    :meth:`connection_made`, replays the upgrade request through :meth:`data_received`,
    and calls :meth:`shutdown` when the server stops. Its :class:`TransportOptions` come
    from the lifespan state (``app_state``).
    """

    __slots__ = (
        "_app_state",
        "_busy",
        "_closer",
        "_config",
        "_conn",
        "_connect_sent",
        "_denial",
        "_drain",
        "_end",
        "_inbox",
        "_keepalive",
        "_message",
        "_message_text",
        "_options",
        "_phase",
        "_ping_payload",
        "_read_paused",
        "_receiver",
        "_response",
        "_server_state",
        "_transport",
        "_waiter",
        "_writable",
    )

    def __init__(
        self, config: Config, server_state: ServerState, app_state: dict[str, Any]
    ) -> None:
        self._config = config
        self._server_state = server_state
        self._app_state: dict[str, Any] | None = app_state  # copied into the scope, then let go
        self._options: TransportOptions = app_state.get(OPTIONS_KEY, DEFAULTS)
        self._transport: asyncio.Transport | None = None
        self._conn = ServerProtocol(max_size=config.ws_max_size)  # no extensions: no deflate
        self._phase = Phase.REQUEST
        self._response: Response | None = None  # the 101 prepared for the app's accept
        self._denial: tuple[int, list[tuple[bytes, bytes]], list[bytes]] | None = None
        self._connect_sent = False
        # Client messages not yet taken by the app's receive() or by the receiver.
        self._inbox: deque[str | bytes] | None = None
        self._waiter: asyncio.Future[None] | None = None  # the app waiting in receive()
        self._receiver: Receiver | None = None
        self._busy = False  # the receiver asked for a pause until resume_reading()
        self._end: Close | None = None  # how the connection ended, once it has
        self._read_paused = False
        self._writable = True  # transport flow control
        self._drain: asyncio.Future[None] | None = None
        self._message: list[bytes] | None = None  # fragments of a message in progress
        self._message_text = False
        self._keepalive: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None  # the ping awaiting its pong
        self._closer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not subclass asyncio.Transport, hence no check).
        self._transport = cast(asyncio.Transport, transport)
        # uvicorn types this set with its own protocol classes; any ws= class belongs in it.
        connections: set[Any] = self._server_state.connections
        connections.add(self)

    def data_received(self, data: bytes) -> None:
        if Phase.HANDSHAKE <= self._phase <= Phase.RESPONDING:
            # A client must wait for the handshake response before it sends anything.
            self.abort()
            return
        self._conn.receive_data(data)
        self._process()

    def eof_received(self) -> None:
        self._conn.receive_eof()
        self._process()
        # Returning None lets asyncio close the transport.

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = Phase.CLOSED
        self._server_state.connections.discard(self)
        self._stop_keepalive()
        if self._closer is not None:
            self._closer.cancel()
            self._closer = None
        self._writable = True
        self._release_writers()
        self._ended(Close(ABNORMAL, ""))

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self._release_writers()

    # -- uvicorn -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """The server is stopping: close with 1012 (or refuse a handshake in progress
        with 503) and drop the connection if that does not complete within the close
        timeout. Harmless if the connection is already closing."""
        phase = self._phase
        if phase is Phase.CLOSED:
            return
        if phase <= Phase.HANDSHAKE:
            self._refuse(http.HTTPStatus.SERVICE_UNAVAILABLE, "The server is shutting down.\n")
        elif phase is Phase.OPEN:
            self._close(1012, self._options.shutdown_reason)
        self._arm_closer()

    # -- DetachableSocket (the tidings.socket extension) ---------------------------------

    def writable(self) -> bool:
        """True if :meth:`write_nowait` may be called now (open, and the peer keeps up)."""
        return self._writable and self._phase is Phase.OPEN

    def write_nowait(self, frames: list[EventFrame], batch: bool) -> None:
        """Write pre-encoded frames (``batch``: as one ``tidings.batch.v1`` message).

        Raises :class:`SocketClosed` if the connection is closing or gone; any other
        error (say, text that cannot be encoded) propagates."""
        transport = self._transport
        if self._phase is not Phase.OPEN or transport is None or transport.is_closing():
            self._not_open()
        if batch:
            transport.write(frame_text(batch_text(frames).encode()))
        elif len(frames) == 1:
            transport.write(frames[0].wire)
        else:
            transport.write(b"".join([f.wire for f in frames]))

    async def send(self, frames: list[EventFrame], batch: bool) -> None:
        """Write the frames once the transport takes more (flow control)."""
        await self._wait_writable()
        self.write_nowait(frames, batch)

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame after what was written so far; the connection is dropped
        if the peer does not answer within the close timeout. Does nothing if the
        connection is already closing or gone."""
        self._close(code, reason)

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake."""
        if self._phase is not Phase.CLOSED:
            self._phase = max(self._phase, Phase.CLOSING)
            self._stop_keepalive()
            assert self._transport is not None
            self._transport.abort()

    def detach(self, receiver: Receiver) -> None:
        """Give client messages to ``receiver`` from now on, starting with those already
        received, and the end to its ``disconnected`` (once). The ASGI app may return.

        When the connection ends, messages not yet delivered (the receiver was busy) are
        dropped: there is nobody left to answer."""
        if self._phase < Phase.OPEN:
            raise RuntimeError("accept the WebSocket before detaching it")
        self._receiver = receiver
        pending, self._inbox = self._inbox, None
        if pending:
            self._inbox = pending
            self._deliver_pending()
        if self._end is not None:
            self._tell_end(self._end)
        self._update_reading()

    def resume_reading(self) -> None:
        """Read client messages again after :meth:`Receiver.receive` returned True."""
        self._busy = False
        self._deliver_pending()
        self._update_reading()

    # -- ASGI ----------------------------------------------------------------------------

    async def _run_app(self, scope: dict[str, Any]) -> None:
        try:
            await self._config.loaded_app(scope, self._asgi_receive, self._asgi_send)
        except SocketClosed:
            pass  # the peer left while the app was talking to it
        except Exception as exc:
            logger.exception("WebSocket application failed")
            if self._phase < Phase.OPEN and unavailable(exc):
                # The database is down or restarting (authentication needs it): retry.
                self._refuse(http.HTTPStatus.SERVICE_UNAVAILABLE, "database unavailable\n")
            elif self._phase < Phase.OPEN:
                self._refuse(http.HTTPStatus.INTERNAL_SERVER_ERROR, "Internal Server Error\n")
            else:
                self._close(1011, "internal error")
        else:
            if self._phase < Phase.OPEN:
                logger.error("WebSocket application returned without accepting or refusing")
                self._refuse(http.HTTPStatus.INTERNAL_SERVER_ERROR, "Internal Server Error\n")
            elif self._receiver is None and self._end is None:
                self._close(1000, "")  # the app is done with an undetached connection
        finally:
            if self._receiver is None:
                self._inbox = None  # nobody will read these now
                self._update_reading()

    async def _asgi_receive(self) -> dict[str, Any]:
        if not self._connect_sent:
            self._connect_sent = True
            return {"type": "websocket.connect"}
        while True:
            if self._receiver is not None:
                raise RuntimeError("receive() after detach(): messages go to the receiver")
            inbox = self._inbox
            if inbox:
                data = inbox.popleft()
                self._update_reading()
                if isinstance(data, str):
                    return {"type": "websocket.receive", "text": data}
                return {"type": "websocket.receive", "bytes": data}
            end = self._end
            if end is not None:
                return {"type": "websocket.disconnect", "code": end.code, "reason": end.reason}
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    async def _asgi_send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        phase = self._phase
        if Phase.HANDSHAKE <= phase <= Phase.RESPONDING and not self._can_respond():
            self._not_open()  # the peer left during the handshake
        if phase is Phase.HANDSHAKE:
            if kind == "websocket.accept":
                self._accept(message.get("subprotocol"), message.get("headers") or [])
            elif kind == "websocket.close":
                self._refuse(http.HTTPStatus.FORBIDDEN, "")
            elif kind == "websocket.http.response.start":
                status = int(message["status"])
                if not 100 <= status <= 599:
                    raise RuntimeError(f"invalid HTTP status {status}")
                self._denial = (status, list(message.get("headers") or []), [])
                self._phase = Phase.RESPONDING
            else:
                raise RuntimeError(f"unexpected ASGI message {kind!r} during the handshake")
        elif phase is Phase.RESPONDING:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"expected 'websocket.http.response.body', got {kind!r}")
            assert self._denial is not None
            self._denial[2].append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self._send_denial()
        elif kind == "websocket.send":
            await self._wait_writable()
            if self._phase is not Phase.OPEN:
                self._not_open()
            text = message.get("text")
            if text is not None:
                self._conn.send_text(text.encode())
            else:
                self._conn.send_binary(message["bytes"])
            self._flush()
        elif kind == "websocket.close":
            if phase is Phase.OPEN:
                self._close(int(message.get("code") or 1000), message.get("reason") or "")
        elif kind in ("websocket.accept", "websocket.http.response.start") and phase > Phase.OPEN:
            self._not_open()  # the handshake was refused or the peer left
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _scope(self, request: Request) -> dict[str, Any]:
        transport = self._transport
        assert transport is not None
        config = self._config
        raw_path, _, query = request.path.partition("?")
        root = config.root_path
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in request.headers.raw_items()
        ]
        subprotocols = [
            token.strip()
            for value in request.headers.get_all("Sec-WebSocket-Protocol")
            for token in value.split(",")
            if token.strip()
        ]
        return {
            "type": "websocket",
            "asgi": {"version": config.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if transport.get_extra_info("sslcontext") is not None else "ws",
            "server": _address(transport.get_extra_info("sockname")),
            "client": _address(transport.get_extra_info("peername")),
            "root_path": root,
            "path": root + unquote(raw_path),
            "raw_path": (root + raw_path).encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "headers": headers,
            "subprotocols": subprotocols,
            "state": dict(self._app_state or {}),
            "extensions": {"websocket.http.response": {}, EXTENSION: self},
        }

    # -- handshake -----------------------------------------------------------------------

    def _on_request(self, request: Request) -> None:
        response = self._conn.accept(request)
        if response.status_code != 101:  # not a valid upgrade: answered without the app
            self._respond(response)
            return
        limit = self._config.limit_concurrency
        if limit is not None and len(self._server_state.connections) >= limit:
            # As uvicorn answers plain requests at the limit (this one counts itself).
            self._respond(
                self._conn.reject(
                    http.HTTPStatus.SERVICE_UNAVAILABLE, "Exceeded concurrency limit."
                )
            )
            return
        self._response = response
        self._phase = Phase.HANDSHAKE
        scope = self._scope(request)
        self._app_state = None
        task = asyncio.get_running_loop().create_task(self._run_app(scope))
        tasks = self._server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _can_respond(self) -> bool:
        return self._conn.state is State.CONNECTING and not self._transport_closing()

    def _accept(self, subprotocol: str | None, headers: list[tuple[bytes, bytes]]) -> None:
        response, self._response = self._response, None
        assert response is not None
        self._add_headers(response.headers, headers)
        if subprotocol:
            response.headers["Sec-WebSocket-Protocol"] = subprotocol
        self._conn.send_response(response)
        self._phase = Phase.OPEN
        self._flush()
        self._start_keepalive()

    def _refuse(self, status: http.HTTPStatus, text: str) -> None:
        """Answer the upgrade request with an HTTP error instead of accepting it (if the
        request is still unanswered and the peer still there)."""
        if self._can_respond():
            self._respond(self._conn.reject(status, text))

    def _send_denial(self) -> None:
        assert self._denial is not None
        status, extra, body_parts = self._denial
        self._denial = None
        body = b"".join(body_parts)
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        headers = Headers([(n.decode("latin-1"), v.decode("latin-1")) for n, v in extra])
        headers.setdefault("Content-Length", str(len(body)))
        headers.setdefault("Connection", "close")
        self._respond(Response(status, phrase, headers, body))

    def _respond(self, response: Response) -> None:
        """Send an HTTP response that is not a 101 (with the server's default headers);
        the TCP connection then closes."""
        self._response = None
        self._add_headers(response.headers, [])
        self._conn.send_response(response)  # queues the end of the stream too
        self._flush()
        self._ended(Close(ABNORMAL, ""))

    def _add_headers(self, headers: Headers, extra: list[tuple[bytes, bytes]]) -> None:
        """The server's default headers (``date``, ``server``), then the app's."""
        pairs = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in [*self._server_state.default_headers, *extra]
        ]
        for name, value in pairs:
            if name.lower() == "date" and "Date" in headers:
                del headers["Date"]  # replaced, not repeated
            headers[name] = value

    # -- incoming ------------------------------------------------------------------------

    def _process(self) -> None:
        """Act on what the ServerProtocol made of the bytes received, then send its output."""
        conn = self._conn
        for event in conn.events_received():
            if isinstance(event, Frame):
                self._on_frame(event)
            else:
                assert isinstance(event, Request)  # a server receives no responses
                self._on_request(event)
        if Phase.HANDSHAKE <= self._phase <= Phase.OPEN and conn.state > State.OPEN:
            # The protocol failed the connection itself: a protocol error, a message over
            # the size limit, or the end of the stream without a closing handshake.
            self._phase = Phase.CLOSING
            sent = conn.close_sent
            self._ended(sent if sent is not None else Close(ABNORMAL, ""))
        self._flush()

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._on_message(opcode is Opcode.TEXT, frame.data)
            else:
                self._message = [bytes(frame.data)]
                self._message_text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            assert self._message is not None  # the ServerProtocol checks the sequence
            self._message.append(bytes(frame.data))
            if frame.fin:
                data, self._message = b"".join(self._message), None
                self._on_message(self._message_text, data)
        elif opcode is Opcode.PONG:
            if self._ping_payload is not None and frame.data == self._ping_payload:
                self._ping_payload = None
                self._stop_keepalive()
                self._start_keepalive()
        elif opcode is Opcode.CLOSE:
            # Either the peer starts the closing handshake (the ServerProtocol answers it)
            # or it completes ours.
            if self._phase < Phase.CLOSING:
                self._phase = Phase.CLOSING
            self._ended(Close.parse(frame.data))
        # PING: the ServerProtocol queued the pong; _process sends it.

    def _on_message(self, text: bool, data: bytes | bytearray | memoryview) -> None:
        if self._phase is not Phase.OPEN:
            return  # after our close frame: nothing more is read (RFC 6455 §1.4)
        message: str | bytes
        if text:
            try:
                message = bytes(data).decode()
            except UnicodeDecodeError:
                self._fail(1007, "invalid UTF-8 in a text message")
                return
        else:
            message = bytes(data)
        receiver = self._receiver
        if receiver is not None and not self._busy:
            self._hand(receiver, message)
            return
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.append(message)
        if receiver is None:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)
            self._update_reading()

    def _hand(self, receiver: Receiver, message: str | bytes) -> None:
        try:
            busy = receiver.receive(message)
        except Exception:
            logger.exception("WebSocket receiver failed")
            self._close(1011, "internal error")
            return
        if busy:
            self._busy = True
            self._update_reading()

    def _deliver_pending(self) -> None:
        """Hand the receiver what waited while it was busy, until it is busy again."""
        inbox, receiver = self._inbox, self._receiver
        if receiver is None or inbox is None:
            return  # not detached: the app's receive() takes the inbox
        while inbox and not self._busy and self._phase is Phase.OPEN:
            self._hand(receiver, inbox.popleft())
        if not inbox:
            self._inbox = None

    def _update_reading(self) -> None:
        """Read the socket unless the app or the receiver is behind; always read once a
        close frame is out, so that the peer's answer is seen."""
        if self._phase is not Phase.OPEN:
            pause = False
        elif self._receiver is not None:
            pause = self._busy
        else:
            inbox = self._inbox
            pause = inbox is not None and len(inbox) >= self._config.ws_max_queue
        if pause is self._read_paused or self._transport_closing():
            return
        self._read_paused = pause
        assert self._transport is not None
        if pause:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    def _ended(self, close: Close) -> None:
        """Record how the connection ended and tell the app or the receiver, once."""
        if self._end is not None:
            return
        self._end = close
        self._stop_keepalive()
        if self._receiver is not None:
            self._tell_end(close)
        elif self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _tell_end(self, close: Close) -> None:
        receiver = self._receiver
        self._receiver = None
        self._inbox = None
        self._busy = False
        if receiver is not None:
            try:
                receiver.disconnected(close.code)
            except Exception:
                logger.exception("WebSocket receiver failed")

    # -- outgoing ------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write what the ServerProtocol has to send; close the TCP connection at its end."""
        conn = self._conn
        writes = conn.data_to_send()
        if not writes:
            return
        transport = self._transport
        assert transport is not None
        data = b"".join(writes)
        if data:
            transport.write(data)
        if writes[-1] == b"":  # websockets.protocol.SEND_EOF: the server closes first
            if self._phase < Phase.CLOSING:
                self._phase = Phase.CLOSING
            transport.close()
            self._arm_closer()
        elif conn.close_expected():
            self._arm_closer()

    def _close(self, code: int, reason: str) -> None:
        """Start the closing handshake, unless the connection is not open any more."""
        if self._phase is not Phase.OPEN or self._conn.state is not State.OPEN:
            return  # (the ServerProtocol may have seen the peer's close a moment earlier)
        self._conn.send_close(code, reason)
        self._phase = Phase.CLOSING
        self._busy = False
        if self._receiver is not None:
            self._inbox = None
        self._stop_keepalive()
        self._flush()
        self._arm_closer()
        self._update_reading()

    def _fail(self, code: int, reason: str) -> None:
        """Close without waiting for the peer's answer (a protocol violation, a timeout)."""
        self._conn.fail(code, reason)
        self._phase = Phase.CLOSING
        self._flush()
        self._ended(Close(code, reason))

    def _arm_closer(self) -> None:
        if self._closer is None and self._phase is not Phase.CLOSED:
            loop = asyncio.get_running_loop()
            self._closer = loop.call_later(self._options.close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._closer = None
        logger.debug("closing handshake timed out; dropping the connection")
        self.abort()

    def _not_open(self) -> NoReturn:
        if self._phase < Phase.OPEN and not self._transport_closing():
            raise RuntimeError("the WebSocket is not accepted yet")
        raise SocketClosed("the WebSocket is closing or closed")

    def _transport_closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    async def _wait_writable(self) -> None:
        while not self._writable:
            if self._drain is None:
                self._drain = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drain)

    def _release_writers(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- keepalive -----------------------------------------------------------------------

    def _start_keepalive(self) -> None:
        interval = self._config.ws_ping_interval
        if interval and self._phase is Phase.OPEN:
            self._keepalive = asyncio.get_running_loop().call_later(interval, self._ping)

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    def _ping(self) -> None:
        self._keepalive = None
        if self._phase is not Phase.OPEN:
            return
        payload = random.randbytes(4)  # identifies the pong that answers this ping
        self._conn.send_ping(payload)
        self._flush()
        timeout = self._config.ws_ping_timeout
        if timeout:
            self._ping_payload = payload
            self._keepalive = asyncio.get_running_loop().call_later(timeout, self._ping_timed_out)
        else:
            self._start_keepalive()

    def _ping_timed_out(self) -> None:
        self._keepalive = None
        self._ping_payload = None
        logger.info("no pong within the ping timeout; dropping the connection")
        self._fail(1011, "keepalive ping timeout")


def _address(info: object) -> tuple[str, int | None] | None:
    """An ASGI ``client``/``server`` pair from ``get_extra_info``: ``(host, port)``, or
    ``(path, None)`` for a Unix socket; None when there is no address."""
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    if isinstance(info, str) and info:
        return info, None
    return None
