"""A minimal WebSocket client for the load generator: an asyncio protocol, no library.

The benchmarks need a client that costs far less per message than any server it measures,
so that the figures are the server's. This one parses server frames straight out of each
read (every message of one read shares one receive time), answers pings, and masks its
own frames with a zero key (RFC 6455 requires the mask bit, not a secret key). It knows
only what the benchmarks use: text frames, ping, close.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import cast

OnMessages = Callable[["WSClient", list[bytes], float], None]

_ZERO_MASK = b"\x00\x00\x00\x00"


def _header(opcode: int, length: int) -> bytes:
    if length < 126:
        return bytes((0x80 | opcode, 0x80 | length)) + _ZERO_MASK
    if length < 65536:
        return bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big") + _ZERO_MASK
    return bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big") + _ZERO_MASK


class HandshakeError(Exception):
    pass


class WSClient(asyncio.Protocol):
    """One client connection. ``on_messages(client, payloads, received_at)`` gets every
    complete text message of one read, in order."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        on_messages: OnMessages,
        headers: Sequence[tuple[str, str]] = (),
        subprotocols: Sequence[str] = (),
        state: object = None,
    ) -> None:
        self.on_messages = on_messages
        self.state = state  # the load generator's bookkeeping for this client
        self.request = self._request(host, port, path, headers, subprotocols)
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.subprotocol: str | None = None
        self.is_open = False
        self._buffer = b""
        self._fragments: list[bytes] = []

    @staticmethod
    def _request(
        host: str,
        port: int,
        path: str,
        headers: Sequence[tuple[str, str]],
        subprotocols: Sequence[str],
    ) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers),
        ]
        if subprotocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_open = False
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.is_open:
            data = self._handshake(data)
            if not data:
                return
        buf = self._buffer + data if self._buffer else data
        pos, end = 0, len(buf)
        messages: list[bytes] = []
        while end - pos >= 2:
            b0, length = buf[pos], buf[pos + 1] & 0x7F
            if length < 126:
                start = pos + 2
            elif length == 126:
                if end - pos < 4:
                    break
                length, start = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
            else:
                if end - pos < 10:
                    break
                length, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            stop = start + length
            if stop > end:
                break
            pos = stop
            if b0 == 0x81:  # a whole text message: nearly every frame
                messages.append(buf[start:stop])
            else:
                self._frame(b0, buf[start:stop], messages)
        self._buffer = buf[pos:] if pos < end else b""
        if messages:
            self.on_messages(self, messages, now)

    def _frame(self, b0: int, payload: bytes, messages: list[bytes]) -> None:
        opcode = b0 & 0x0F
        if opcode in (0, 1, 2):
            if not b0 & 0x80:  # fragmented: keep until the final frame
                self._fragments.append(payload)
                return
            if self._fragments:
                payload = b"".join([*self._fragments, payload])
                self._fragments = []
            messages.append(payload)
        elif opcode == 9:  # ping
            self._send_frame(0xA, payload)
        elif opcode == 8:  # close: echo it, then let the server close TCP
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            if not self.closed.done():
                self.closed.set_result(code)
            if self.is_open:
                self._send_frame(0x8, payload[:2])
            self.is_open = False

    def _handshake(self, data: bytes) -> bytes:
        buf = self._buffer + data
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            self._buffer = buf
            return b""
        head = buf[:head_end].decode("latin-1").split("\r\n")
        self._buffer = b""
        if not head[0].startswith("HTTP/1.1 101"):
            if not self.opened.done():
                self.opened.set_exception(HandshakeError(head[0]))
            assert self.transport is not None
            self.transport.close()
            return b""
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-protocol":
                self.subprotocol = value.strip()
        self.is_open = True
        self.opened.set_result(self.subprotocol)
        return buf[head_end + 4 :]

    # -- sending ---------------------------------------------------------------------------

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_header(opcode, len(payload)) + payload)

    def send(self, text: bytes) -> None:
        self._send_frame(0x1, text)

    def close(self, code: int = 1000) -> None:
        if self.is_open:
            self._send_frame(0x8, code.to_bytes(2, "big"))
            self.is_open = False
        if self.transport is not None:
            self.transport.close()

    def begin_close(self, code: int = 1000) -> None:
        """Send a close frame and keep reading: :attr:`closed` gets the server's answer,
        and the server then closes the TCP connection (the closing handshake)."""
        if self.is_open:
            self._send_frame(0x8, code.to_bytes(2, "big"))
            self.is_open = False

    def reset(self) -> None:
        """Drop the TCP connection with a reset, no close frame: a crashed client or a
        network that gave up."""
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        self.is_open = False

    def stall(self) -> None:
        """Stop reading: the server's writes pile up, as with a frozen browser tab."""
        assert self.transport is not None
        self.transport.pause_reading()


async def connect(
    host: str,
    port: int,
    path: str,
    on_messages: OnMessages,
    *,
    headers: Sequence[tuple[str, str]] = (),
    subprotocols: Sequence[str] = (),
    state: object = None,
    timeout: float = 60.0,
) -> WSClient:
    """Open a connection and finish the handshake."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        _, client = await loop.create_connection(
            lambda: WSClient(host, port, path, on_messages, headers, subprotocols, state), sock=sock
        )
        await asyncio.wait_for(client.opened, timeout)
    except BaseException:
        sock.close()
        raise
    return client
