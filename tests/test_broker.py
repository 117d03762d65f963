"""One suite for every broker: the hub relies on exactly this behaviour."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from tests.conftest import REDIS_URL, TIMEOUT, require_service
from tidings.broker import Broker, create_broker


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


async def listening(
    broker: Broker, channel: str
) -> tuple[asyncio.Queue[bytes], asyncio.Task[None]]:
    """Start a listener and return once it is subscribed (proved by a probe message)."""
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def run() -> None:
        async for message in broker.listen(channel):
            if message.startswith(b"probe-") and message != probe:
                continue  # another listener's probe
            await received.put(message)

    probe = b"probe-" + secrets.token_hex(4).encode()
    task = asyncio.create_task(run())
    async with asyncio.timeout(TIMEOUT):
        while True:
            await broker.publish(channel, probe)
            try:
                got = await asyncio.wait_for(received.get(), 0.2)
            except TimeoutError:
                continue
            if got == probe:
                break
    await asyncio.sleep(0.3)  # let late copies of our own probe arrive, then drop them
    while not received.empty():
        received.get_nowait()
    probe = b"probe-done"  # from now on every probe is someone else's
    return received, task


async def test_messages_arrive_in_order(broker: Broker) -> None:
    channel = f"t-{secrets.token_hex(4)}"
    received, task = await listening(broker, channel)
    sent = [f"m{i}".encode() + b"\n" + bytes(range(256)) for i in range(200)]
    for message in sent:
        await broker.publish(channel, message)
    got = [await asyncio.wait_for(received.get(), TIMEOUT) for _ in sent]
    assert got == sent
    task.cancel()


async def test_every_listener_gets_every_message(broker: Broker) -> None:
    channel = f"t-{secrets.token_hex(4)}"
    first, t1 = await listening(broker, channel)
    second, t2 = await listening(broker, channel)
    await broker.publish(channel, b"hello")
    assert await asyncio.wait_for(first.get(), TIMEOUT) == b"hello"
    assert await asyncio.wait_for(second.get(), TIMEOUT) == b"hello"
    t1.cancel()
    t2.cancel()


async def test_channels_are_separate(broker: Broker) -> None:
    mine = f"t-{secrets.token_hex(4)}"
    received, task = await listening(broker, mine)
    await broker.publish(mine + "-other", b"not for me")
    await broker.publish(mine, b"for me")
    assert await asyncio.wait_for(received.get(), TIMEOUT) == b"for me"
    task.cancel()


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="memory:// or redis://"):
        create_broker("kafka://localhost")
