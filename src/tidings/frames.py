"""An event frame, encoded once and shared by every connection it goes to."""

from __future__ import annotations

import struct


def frame_text(payload: bytes) -> bytes:
    """One unmasked, unfragmented WebSocket text frame (servers never mask, RFC 6455 §5.1)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class Frame:
    """A message as JSON text, with its routing facts and, on demand, its wire bytes.

    ``wire`` (the complete WebSocket frame) is built at most once per message, however
    many connections send it.
    """

    __slots__ = ("_wire", "coalesce", "project_id", "published_at", "seq", "size", "text", "type")

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
        self._wire: bytes | None = None

    @property
    def wire(self) -> bytes:
        wire = self._wire
        if wire is None:
            wire = self._wire = frame_text(self.text.encode())
        return wire


def batch_text(frames: list[Frame]) -> str:
    """``tidings.batch.v1``: several messages as one JSON array."""
    return "[" + ",".join([f.text for f in frames]) + "]"
