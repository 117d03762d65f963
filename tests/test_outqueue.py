from __future__ import annotations

from dataclasses import dataclass

from tidings.outqueue import OutboundQueue


@dataclass(frozen=True)
class Item:
    name: str
    size: int
    coalesce: str | None = None


def put(q: OutboundQueue[Item], name: str, key: str | None = None, size: int | None = None) -> bool:
    return q.put(Item(name, len(name) if size is None else size, key))


def drain(
    q: OutboundQueue[Item], max_items: int | None = None, max_bytes: int | None = None
) -> list[str]:
    return [item.name for item in q.drain(max_items, max_bytes)]


def test_fifo_and_accounting() -> None:
    q: OutboundQueue[Item] = OutboundQueue(max_messages=10, max_bytes=100)
    assert put(q, "a") and put(q, "bb") and put(q, "ccc")
    assert len(q) == 3 and q.nbytes == 6
    assert drain(q, 2) == ["a", "bb"]
    assert len(q) == 1 and q.nbytes == 3
    assert drain(q) == ["ccc"]
    assert len(q) == 0 and q.nbytes == 0 and not q


def test_message_bound() -> None:
    q: OutboundQueue[Item] = OutboundQueue(max_messages=2, max_bytes=100)
    assert put(q, "a") and put(q, "b")
    assert not put(q, "c")
    assert drain(q) == ["a", "b"]


def test_byte_bound_uses_the_items_size() -> None:
    q: OutboundQueue[Item] = OutboundQueue(max_messages=10, max_bytes=10)
    assert put(q, "x", size=6)
    assert not put(q, "y", size=5)
    assert put(q, "z", size=4)
    assert q.nbytes == 10


def test_coalescing_keeps_only_newest_at_the_back() -> None:
    q: OutboundQueue[Item] = OutboundQueue(max_messages=10, max_bytes=100)
    put(q, "p1", key="progress:1")
    put(q, "other")
    put(q, "p2", key="progress:1")
    put(q, "q1", key="progress:2")
    assert len(q) == 3
    assert q.nbytes == len("other") + len("p2") + len("q1")
    assert drain(q) == ["other", "p2", "q1"]


def test_coalescing_frees_room_for_the_replacement() -> None:
    q: OutboundQueue[Item] = OutboundQueue(max_messages=1, max_bytes=100)
    assert put(q, "p1", key="k")
    assert put(q, "p2", key="k")  # replaces, so it fits
    assert drain(q) == ["p2"]


def test_coalesce_after_drain_starts_fresh() -> None:
    q: OutboundQueue[Item] = OutboundQueue(max_messages=10, max_bytes=100)
    put(q, "p1", key="k")
    assert drain(q) == ["p1"]
    put(q, "p2", key="k")
    put(q, "p3", key="k")
    assert drain(q) == ["p3"]


def test_partial_drains_skip_replaced_items_and_keep_coalescing() -> None:
    q: OutboundQueue[Item] = OutboundQueue(max_messages=10, max_bytes=100)
    put(q, "p1", key="k")
    put(q, "a")
    put(q, "p2", key="k")  # blanks p1's place
    put(q, "b")
    assert drain(q, 1) == ["a"]
    assert len(q) == 2 and q.nbytes == len("p2") + len("b")
    put(q, "p3", key="k")  # p2 is still queued: it is replaced
    assert drain(q, 1) == ["b"]
    assert drain(q) == ["p3"]
    assert len(q) == 0 and q.nbytes == 0
    put(q, "p4", key="k")
    assert drain(q) == ["p4"]


def test_an_item_over_the_byte_budget_goes_only_into_an_empty_queue() -> None:
    """Any single event can be delivered, however large; it just travels alone."""
    q: OutboundQueue[Item] = OutboundQueue(max_messages=10, max_bytes=10)
    assert put(q, "x" * 11)
    assert not put(q, "y")
    assert drain(q) == ["x" * 11]
    assert put(q, "y")
    assert not put(q, "z" * 11)
    assert len(q) == 1


def test_clear() -> None:
    q: OutboundQueue[Item] = OutboundQueue(max_messages=10, max_bytes=100)
    put(q, "a", key="k")
    q.clear()
    assert len(q) == 0 and q.nbytes == 0
    assert put(q, "b", key="k")
    assert drain(q) == ["b"]


def test_drain_stops_at_a_byte_budget_but_takes_at_least_one() -> None:
    q: OutboundQueue[Item] = OutboundQueue(max_messages=10, max_bytes=100)
    for name in ("aaaa", "bbbb", "cccc"):
        put(q, name)
    assert drain(q, max_bytes=5) == ["aaaa", "bbbb"]  # stops once the budget is spent
    assert drain(q, max_bytes=1) == ["cccc"]
    put(q, "x" * 20)
    put(q, "y")
    assert drain(q, max_bytes=30) == ["x" * 20, "y"]  # all of it fits: handed over whole
    assert q.nbytes == 0 and len(q) == 0
