from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

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


class Model:
    """The queue's contract in the plainest terms, to check the real one against."""

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self.items: list[Item] = []

    def put(self, item: Item) -> bool:
        if item.coalesce is not None:  # the older item with the key is dropped in any case
            self.items = [i for i in self.items if i.coalesce != item.coalesce]
        size = sum(i.size for i in self.items)
        if len(self.items) >= self.max_messages or (
            self.items and size + item.size > self.max_bytes
        ):
            return False
        self.items.append(item)
        return True

    def drain(self, max_items: int | None) -> list[Item]:
        n = len(self.items) if max_items is None else max_items
        out, self.items = self.items[:n], self.items[n:]
        return out


@pytest.mark.parametrize("seed", range(20))
def test_random_operations_match_the_model(seed: int) -> None:
    rng = random.Random(seed)
    q: OutboundQueue[Item] = OutboundQueue(max_messages=8, max_bytes=40)
    model = Model(8, 40)
    for step in range(500):
        roll = rng.random()
        if roll < 0.65:
            key = rng.choice([None, None, "a", "b", "c"])
            item = Item(f"i{step}", rng.randint(1, 50), key)  # some over the budget
            assert q.put(item) == model.put(item), step
        elif roll < 0.95:
            limit = rng.choice([None, 0, 1, 2, 5])
            assert q.drain(limit) == model.drain(limit), step
        else:
            q.clear()
            model.items = []
        assert len(q) == len(model.items)
        assert q.nbytes == sum(i.size for i in model.items)
