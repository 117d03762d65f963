"""One suite for every presence store (``broker/``): memory and Redis behave the same."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio

from tests.conftest import MS, REDIS_URL, require_service
from tidings.broker import PresenceStore, Viewer, create_presence_store

EXPIRY = 300 * MS

MakeStore = Callable[[], PresenceStore]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[MakeStore]:
    """Stores of one deployment: with Redis, several nodes' views of the same keys; in
    memory, one store that every 'node' of the test shares."""
    prefix = f"t-{secrets.token_hex(4)}"  # the machine's Redis is shared
    opened: list[PresenceStore] = []
    if request.param == "redis":
        require_service("Redis", "127.0.0.1", 6379)
        url = REDIS_URL
    else:
        url = "memory://"
        shared = create_presence_store(url, prefix, EXPIRY)

    def make() -> PresenceStore:
        store = create_presence_store(url, prefix, EXPIRY) if url != "memory://" else shared
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.disconnect()
    if request.param == "redis":  # leave nothing behind in the shared Redis
        client = redis.asyncio.from_url(REDIS_URL)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:presence:*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


@pytest.fixture
async def store(make_store: MakeStore) -> PresenceStore:
    store = make_store()
    await store.connect()
    return store


def viewer(user: str, project: str = "p1") -> Viewer:
    return Viewer(project, f"id-{user}", user)


async def test_first_entry_joins_and_last_leaves_across_nodes(store: PresenceStore) -> None:
    first = await store.update("n1", [viewer("ann")], [])
    assert first.registered and first.joined == [viewer("ann")] and not first.left
    second = await store.update("n2", [viewer("ann")], [])
    assert second.registered and not second.joined
    again = await store.update("n1", [viewer("ann")], [])  # idempotent
    assert not again.registered and not again.joined
    assert await store.viewers("p1") == [viewer("ann")]
    assert not (await store.update("n1", [], [viewer("ann")])).left
    assert await store.viewers("p1") == [viewer("ann")]
    last = await store.update("n2", [], [viewer("ann")])
    assert last.left == [viewer("ann")]
    assert await store.viewers("p1") == []
    assert not (await store.update("n2", [], [viewer("ann")])).left  # idempotent


async def test_viewers_are_distinct_users_by_name_per_project(store: PresenceStore) -> None:
    await store.update("n1", [viewer("zoe"), viewer("ann"), viewer("ann", "p2")], [])
    await store.update("n2", [viewer("ann"), viewer("bob", "p2")], [])
    assert await store.viewers("p1") == [viewer("ann"), viewer("zoe")]
    assert await store.viewers("p2") == [viewer("ann", "p2"), viewer("bob", "p2")]
    assert await store.viewers("p3") == []


async def test_removes_apply_before_adds_in_one_update(store: PresenceStore) -> None:
    await store.update("n1", [viewer("ann")], [])
    changes = await store.update("n1", [viewer("bob")], [viewer("ann")])
    assert changes.left == [viewer("ann")] and changes.joined == [viewer("bob")]


async def test_forget_removes_a_nodes_entries_at_once(store: PresenceStore) -> None:
    await store.update("n1", [viewer("ann"), viewer("bob"), viewer("ann", "p2")], [])
    await store.update("n2", [viewer("bob")], [])
    left = (await store.forget("n1")).left
    assert sorted(left, key=repr) == sorted([viewer("ann"), viewer("ann", "p2")], key=repr)
    assert await store.viewers("p1") == [viewer("bob")]
    assert not (await store.forget("n1")).left
    assert (await store.update("n1", [], [])).registered  # it must add its entries again


async def test_a_node_that_stops_refreshing_expires_once(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    await a.connect()
    if b is not a:
        await b.connect()
    await a.update("dead", [viewer("ann"), viewer("bob")], [])
    await b.update("alive", [viewer("bob")], [])
    assert not (await b.expire()).left  # not yet
    found: list[Viewer] = []
    async with asyncio.timeout(EXPIRY * 20):
        while not found:
            await asyncio.sleep(EXPIRY / 4)
            await b.update("alive", [], [])  # keeps refreshing
            found = (await b.expire()).left
    assert found == [viewer("ann")]
    assert not (await a.expire()).left  # reported to one caller only
    assert await b.viewers("p1") == [viewer("bob")]
    back = await a.update("dead", [viewer("ann")], [])
    assert back.registered and back.joined == [viewer("ann")]


async def test_many_reads_at_once_wait_for_a_connection_instead_of_failing(
    store: PresenceStore,
) -> None:
    """A node's clients subscribing all at once after a restart read presence hundreds at
    a time: more than the Redis pool's connections, and none of the reads fails."""
    await store.update("n1", [viewer("ann")], [])
    found = await asyncio.gather(*(store.viewers("p1") for _ in range(400)))
    assert all([v.username for v in viewers] == ["ann"] for viewers in found)
