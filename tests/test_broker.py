"""One suite for every broker: the hub relies on exactly this behaviour."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
import redis
import redis.exceptions

from tests.conftest import REDIS_URL, TIMEOUT, PrivateRedis, require_service
from tidings.broker import Broker, create_broker
from tidings.broker.base import Subscription


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    if request.param == "redis":
        require_service("Redis", "127.0.0.1", 6379)
        instance = create_broker(REDIS_URL)
    else:
        instance = create_broker("memory://")
    await instance.connect()
    try:
        yield instance
    finally:
        await instance.disconnect()


def new_channel() -> str:
    return f"t-{secrets.token_hex(4)}"  # the machine's Redis is shared


async def receive(subscription: Subscription, count: int) -> list[bytes]:
    """The next ``count`` messages; fail if they do not come."""
    messages = aiter(subscription)
    return [await asyncio.wait_for(anext(messages), TIMEOUT) for _ in range(count)]


async def test_a_message_published_right_after_subscribe_is_received(broker: Broker) -> None:
    channel = new_channel()
    subscription = await broker.subscribe(channel)
    await broker.publish(channel, b"first")  # no sleep: subscribe returned once confirmed
    assert await receive(subscription, 1) == [b"first"]
    await subscription.close()


async def test_messages_arrive_in_order(broker: Broker) -> None:
    channel = new_channel()
    subscription = await broker.subscribe(channel)
    sent = [f"m{i}".encode() + b"\n" + bytes(range(256)) for i in range(200)]
    for message in sent:
        await broker.publish(channel, message)
    assert await receive(subscription, len(sent)) == sent
    await subscription.close()


async def test_every_subscriber_gets_every_message(broker: Broker) -> None:
    channel = new_channel()
    first = await broker.subscribe(channel)
    second = await broker.subscribe(channel)
    await broker.publish(channel, b"hello")
    assert await receive(first, 1) == [b"hello"]
    assert await receive(second, 1) == [b"hello"]
    await first.close()
    await second.close()


async def test_channels_are_separate(broker: Broker) -> None:
    mine = new_channel()
    subscription = await broker.subscribe(mine)
    await broker.publish(mine + "-other", b"not for me")
    await broker.publish(mine, b"for me")  # after the other: it would have come first
    assert await receive(subscription, 1) == [b"for me"]
    await subscription.close()


async def test_close_ends_iteration_and_delivery(broker: Broker) -> None:
    channel = new_channel()
    closing = await broker.subscribe(channel)
    staying = await broker.subscribe(channel)
    reading = asyncio.create_task(receive(closing, 1))
    await closing.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(reading, TIMEOUT)
    await closing.close()  # idempotent
    await broker.publish(channel, b"after close")
    assert await receive(staying, 1) == [b"after close"]
    with pytest.raises(StopAsyncIteration):
        await receive(closing, 1)
    await staying.close()


async def test_disconnect_ends_every_subscription(broker: Broker) -> None:
    subscriptions = [await broker.subscribe(new_channel()) for _ in range(2)]
    reading = [asyncio.create_task(receive(s, 1)) for s in subscriptions]
    await broker.disconnect()
    for task in reading:
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(task, TIMEOUT)


@pytest.mark.redis
async def test_redis_has_the_subscriber_when_subscribe_returns() -> None:
    """Another node publishes the instant ``subscribe`` returns, before this loop runs again
    (a blocking client): Redis already counts the subscriber and delivers."""
    require_service("Redis", "127.0.0.1", 6379)
    other_node = redis.Redis.from_url(REDIS_URL)
    other_node.ping()
    broker = create_broker(REDIS_URL)
    await broker.connect()
    try:
        channel = new_channel()
        subscription = await broker.subscribe(channel)
        assert other_node.publish(channel, b"at once") == 1  # receivers
        assert await receive(subscription, 1) == [b"at once"]
    finally:
        await broker.disconnect()
        other_node.close()


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="memory:// or redis://"):
        create_broker("kafka://localhost")


# -- a Redis that goes away and comes back ----------------------------------------------


@pytest.mark.redis
async def test_redis_subscription_survives_a_restart(private_redis: PrivateRedis) -> None:
    broker = create_broker(private_redis.url)
    await broker.connect()
    resubscribed = asyncio.Event()
    subscription = await broker.subscribe("events", on_resubscribed=resubscribed.set)
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def pump() -> None:
        async for message in subscription:
            received.put_nowait(message)

    reader = asyncio.create_task(pump())
    try:
        await broker.publish("events", b"before")
        assert await asyncio.wait_for(received.get(), TIMEOUT) == b"before"
        await asyncio.to_thread(private_redis.kill)
        assert not resubscribed.is_set()
        await asyncio.to_thread(private_redis.start)  # same port, empty: no subscribers
        await asyncio.wait_for(resubscribed.wait(), TIMEOUT)
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    await broker.publish("events", b"after")
                    break
                except redis.exceptions.ConnectionError:
                    pass  # the publishing connection died with the server; the next reconnects
        assert await asyncio.wait_for(received.get(), TIMEOUT) == b"after"
        assert received.empty()
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await broker.disconnect()
