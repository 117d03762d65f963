"""Redis pub/sub broker (``redis://``): fan-out between tidings nodes. Needs ``tidings[redis]``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

logger = logging.getLogger("tidings.broker")

# What a lost or refused Redis connection raises.
_LOST = (aioredis.ConnectionError, aioredis.TimeoutError, OSError)
FIRST_RETRY_DELAY = 0.1
MAX_RETRY_DELAY = 5.0


class RedisSubscription:
    """One channel on its own pub/sub connection; subscribes again after a lost connection.

    Messages published while the connection is down are lost for this node; subscribers
    recover them from the event log when the next event of their project reveals the gap,
    or when the hub's head sync finds them.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        channel: str,
        on_resubscribed: Callable[[], object] | None,
        registry: set[RedisSubscription],
    ) -> None:
        self._redis = redis
        self._registry = registry  # the broker's open subscriptions, closed on disconnect
        self._channel = channel
        self._on_resubscribed = on_resubscribed
        self._pubsub: PubSub | None = None
        self._closed = False
        self._delay = FIRST_RETRY_DELAY

    async def open(self) -> None:
        """SUBSCRIBE on a new pub/sub connection; return once Redis has confirmed it."""
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            while True:  # on a new connection the confirmation is the first reply
                message = await pubsub.get_message(timeout=None)
                if message is not None and message["type"] == "subscribe":
                    break
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        self._pubsub = pubsub

    def __aiter__(self) -> RedisSubscription:
        return self

    async def __anext__(self) -> bytes:
        while not self._closed:
            pubsub = self._pubsub
            if pubsub is None:
                await self._subscribe_again()
                continue
            try:
                message = await pubsub.get_message(timeout=None)
            except Exception as exc:
                if self._closed:
                    break  # close() pulled the connection from under the read
                if not isinstance(exc, _LOST):
                    raise
                logger.warning("redis pub/sub on %r lost (%s)", self._channel, exc)
                self._pubsub = None
                await pubsub.aclose()  # type: ignore[no-untyped-call]
                continue
            if message is None:
                continue
            if message["type"] == "message":
                data: bytes = message["data"]
                return data
            if message["type"] == "subscribe":
                # redis-py reconnected by itself and sent SUBSCRIBE again: confirmed anew.
                self._resubscribed()
        raise StopAsyncIteration

    async def _subscribe_again(self) -> None:
        try:
            await self.open()
        except _LOST as exc:
            logger.warning(
                "redis pub/sub on %r: subscribing failed (%s); retrying in %.1fs",
                self._channel,
                exc,
                self._delay,
            )
            await asyncio.sleep(self._delay)
            self._delay = min(self._delay * 2, MAX_RETRY_DELAY)
            return
        self._delay = FIRST_RETRY_DELAY
        self._resubscribed()

    def _resubscribed(self) -> None:
        logger.warning("redis pub/sub on %r subscribed again", self._channel)
        if self._on_resubscribed is not None:
            self._on_resubscribed()

    async def close(self) -> None:
        self._closed = True
        self._registry.discard(self)
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await pubsub.aclose()  # type: ignore[no-untyped-call]


class RedisBroker:
    def __init__(self, url: str) -> None:
        self._url = url
        self._redis: aioredis.Redis | None = None
        self._subscriptions: set[RedisSubscription] = set()

    async def connect(self) -> None:
        self._redis = aioredis.from_url(self._url)
        await self._redis.ping()

    async def disconnect(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.close()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def publish(self, channel: str, message: bytes) -> None:
        assert self._redis is not None, "connect() first"
        await self._redis.publish(channel, message)

    async def subscribe(
        self, channel: str, on_resubscribed: Callable[[], object] | None = None
    ) -> RedisSubscription:
        """Return once Redis has confirmed the SUBSCRIBE (see :class:`RedisSubscription`)."""
        assert self._redis is not None, "connect() first"
        subscription = RedisSubscription(self._redis, channel, on_resubscribed, self._subscriptions)
        await subscription.open()
        self._subscriptions.add(subscription)
        return subscription
