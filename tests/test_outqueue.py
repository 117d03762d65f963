from __future__ import annotations

from collections.abc import Hashable

from tidings.outqueue import OutboundQueue


def put(q: OutboundQueue[str], item: str, key: Hashable | None = None) -> bool:
    return q.put(item, len(item), key)


def test_fifo_and_accounting() -> None:
    q = OutboundQueue(max_messages=10, max_bytes=100)
    assert put(q, "a") and put(q, "bb") and put(q, "ccc")
    assert len(q) == 3 and q.nbytes == 6
    assert q.drain(2) == ["a", "bb"]
    assert len(q) == 1 and q.nbytes == 3
    assert q.drain() == ["ccc"]
    assert len(q) == 0 and q.nbytes == 0 and not q


def test_message_bound() -> None:
    q = OutboundQueue(max_messages=2, max_bytes=100)
    assert put(q, "a") and put(q, "b")
    assert not put(q, "c")
    assert q.drain() == ["a", "b"]


def test_byte_bound_uses_given_size() -> None:
    q = OutboundQueue(max_messages=10, max_bytes=10)
    assert q.put("x", 6)
    assert not q.put("y", 5)
    assert q.put("z", 4)
    assert q.nbytes == 10


def test_coalescing_keeps_only_newest_at_the_back() -> None:
    q = OutboundQueue(max_messages=10, max_bytes=100)
    put(q, "p1", key="progress:1")
    put(q, "other")
    put(q, "p2", key="progress:1")
    put(q, "q1", key="progress:2")
    assert len(q) == 3
    assert q.nbytes == len("other") + len("p2") + len("q1")
    assert q.drain() == ["other", "p2", "q1"]


def test_coalescing_frees_room_for_the_replacement() -> None:
    q = OutboundQueue(max_messages=1, max_bytes=100)
    assert put(q, "p1", key="k")
    assert put(q, "p2", key="k")  # replaces, so it fits
    assert q.drain() == ["p2"]


def test_coalesce_after_drain_starts_fresh() -> None:
    q = OutboundQueue(max_messages=10, max_bytes=100)
    put(q, "p1", key="k")
    assert q.drain() == ["p1"]
    put(q, "p2", key="k")
    put(q, "p3", key="k")
    assert q.drain() == ["p3"]


def test_oversized_frame_never_fits() -> None:
    q = OutboundQueue(max_messages=10, max_bytes=10)
    assert not put(q, "x" * 11)
    assert len(q) == 0


def test_clear() -> None:
    q = OutboundQueue(max_messages=10, max_bytes=100)
    put(q, "a", key="k")
    q.clear()
    assert len(q) == 0 and q.nbytes == 0
    assert put(q, "b", key="k")
    assert q.drain() == ["b"]


def test_fits() -> None:
    q = OutboundQueue(max_messages=2, max_bytes=10)
    put(q, "12345")
    assert q.fits(5)
    assert not q.fits(6)
    assert not q.fits(1, messages=2)
