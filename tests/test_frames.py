"""``frames.py``: the WebSocket text frame header, and a frame's bytes built once."""

from __future__ import annotations

import pytest

from tidings.frames import Frame, batch_text, frame_text


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, b"\x81\x00"),
        (1, b"\x81\x01"),
        (125, b"\x81\x7d"),  # the largest 7-bit length
        (126, b"\x81\x7e\x00\x7e"),  # 126 means: a 16-bit length follows
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),  # 127: a 64-bit length
    ],
)
def test_frame_text_header_by_length(length: int, header: bytes) -> None:
    payload = b"x" * length
    assert frame_text(payload) == header + payload  # FIN, text opcode, never masked


def test_frame_wire_is_the_utf8_text_framed_once() -> None:
    frame = Frame('{"type":"é"}', "x.y", project_id="p", seq=3, coalesce="k", published_at=1.5)
    assert (frame.type, frame.project_id, frame.seq, frame.coalesce) == ("x.y", "p", 3, "k")
    assert frame.published_at == 1.5
    assert frame.size == len('{"type":"é"}')
    wire = frame.wire
    assert wire == frame_text('{"type":"é"}'.encode())
    assert frame.wire is wire  # built at most once, however many connections send it


def test_frame_defaults() -> None:
    frame = Frame("{}", "system.heartbeat")
    assert (frame.project_id, frame.seq, frame.coalesce, frame.published_at) == (
        None,
        None,
        None,
        0.0,
    )


@pytest.mark.parametrize(
    ("texts", "batch"),
    [
        ([], "[]"),
        (['{"a":1}'], '[{"a":1}]'),
        (['{"a":1}', '{"b":2}'], '[{"a":1},{"b":2}]'),
    ],
)
def test_batch_text_is_one_json_array(texts: list[str], batch: str) -> None:
    assert batch_text([Frame(text, "t") for text in texts]) == batch
