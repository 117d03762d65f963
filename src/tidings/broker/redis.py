"""Redis pub/sub broker (``redis://``): fan-out between tidings nodes. Needs ``tidings[redis]``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

logger = logging.getLogger("tidings.broker")


class RedisBroker:
    def __init__(self, url: str) -> None:
        self._url = url
        self._redis: aioredis.Redis | None = None

    async def connect(self) -> None:
        self._redis = aioredis.from_url(self._url)
        await self._redis.ping()

    async def disconnect(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def publish(self, channel: str, message: bytes) -> None:
        assert self._redis is not None, "connect() first"
        await self._redis.publish(channel, message)

    async def listen(self, channel: str) -> AsyncIterator[bytes]:
        """Yield messages; on a lost Redis connection, log and resubscribe with back-off.

        Messages published while disconnected are not seen here; subscribers recover them
        from the event log when the next event of their project reveals the gap.
        """
        assert self._redis is not None, "connect() first"
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                delay = 0.1
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        yield message["data"]
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                logger.warning("redis pub/sub lost (%s); resubscribing in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
