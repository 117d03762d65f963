from __future__ import annotations

from tidings.outqueue import OutboundQueue


def test_fifo_and_accounting() -> None:
    q = OutboundQueue(max_messages=10, max_bytes=100)
    assert q.put("a") and q.put("bb") and q.put("ccc")
    assert len(q) == 3 and q.nbytes == 6
    assert q.drain(2) == ["a", "bb"]
    assert len(q) == 1 and q.nbytes == 3
    assert q.drain() == ["ccc"]
    assert len(q) == 0 and q.nbytes == 0 and not q


def test_message_bound() -> None:
    q = OutboundQueue(max_messages=2, max_bytes=100)
    assert q.put("a") and q.put("b")
    assert not q.put("c")
    assert q.drain() == ["a", "b"]


def test_byte_bound_uses_given_size() -> None:
    q = OutboundQueue(max_messages=10, max_bytes=10)
    assert q.put("x", size=6)
    assert not q.put("y", size=5)
    assert q.put("z", size=4)
    assert q.nbytes == 10


def test_coalescing_keeps_only_newest_at_the_back() -> None:
    q = OutboundQueue(max_messages=10, max_bytes=100)
    q.put("p1", key="progress:1")
    q.put("other")
    q.put("p2", key="progress:1")
    q.put("q1", key="progress:2")
    assert len(q) == 3
    assert q.nbytes == len("other") + len("p2") + len("q1")
    assert q.drain() == ["other", "p2", "q1"]


def test_coalescing_frees_room_for_the_replacement() -> None:
    q = OutboundQueue(max_messages=1, max_bytes=100)
    assert q.put("p1", key="k")
    assert q.put("p2", key="k")  # replaces, so it fits
    assert q.drain() == ["p2"]


def test_coalesce_after_drain_starts_fresh() -> None:
    q = OutboundQueue(max_messages=10, max_bytes=100)
    q.put("p1", key="k")
    assert q.drain() == ["p1"]
    q.put("p2", key="k")
    q.put("p3", key="k")
    assert q.drain() == ["p3"]


def test_oversized_frame_never_fits() -> None:
    q = OutboundQueue(max_messages=10, max_bytes=10)
    assert not q.put("x" * 11)
    assert len(q) == 0


def test_clear() -> None:
    q = OutboundQueue(max_messages=10, max_bytes=100)
    q.put("a", key="k")
    q.clear()
    assert len(q) == 0 and q.nbytes == 0
    assert q.put("b", key="k")
    assert q.drain() == ["b"]


def test_fits() -> None:
    q = OutboundQueue(max_messages=2, max_bytes=10)
    q.put("12345")
    assert q.fits(5)
    assert not q.fits(6)
    assert not q.fits(1, messages=2)
