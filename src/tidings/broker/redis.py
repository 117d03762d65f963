"""Redis pub/sub broker (``redis://``): fan-out between tidings nodes; and presence in Redis.
Needs ``tidings[redis]``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript

from tidings.broker.base import PresenceChanges, Viewer

logger = logging.getLogger("tidings.broker")

# What a lost or refused Redis connection raises.
_LOST = (aioredis.ConnectionError, aioredis.TimeoutError, OSError)
FIRST_RETRY_DELAY = 0.1
MAX_RETRY_DELAY = 5.0
POOL_CONNECTIONS = 100  # presence's Redis connections per node, at most
POOL_WAIT = 10.0  # seconds a command waits for a free one before it fails


def _client(url: str, timeout: float) -> aioredis.Redis:
    """A client whose commands wait for a free connection when all of its pool's are busy
    (up to :data:`POOL_WAIT`), and then give up after ``timeout`` seconds without a reply.

    redis-py's default pool fails a command at once beyond 100 connections: the
    presence reads of a node's clients subscribing all at once after a restart got
    ``Too many connections`` by the hundred. The reply's timeout is the socket's, so
    that the wait for a connection (CPU-bound queueing during such a storm) does not
    count against it. No pub/sub on this client: its idle reads would time out."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_CONNECTIONS,
        timeout=POOL_WAIT,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    return aioredis.Redis.from_pool(pool)


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


# Seconds a command may take by default (TIDINGS_BROKER_TIMEOUT): a Redis that hangs
# (frozen, or the network to it gone silent) must not hold a committed change's answer or
# a subscribe for ever. The pub/sub reads have none: a quiet channel is not a failure.
DEFAULT_TIMEOUT = 2.0


class RedisBroker:
    """Publishes on a connection pool, each publish bounded by ``timeout`` seconds (the
    caller logs the failure: the event is in the log, subscribers catch up from it)."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._url = url
        self._timeout = timeout
        self._redis: aioredis.Redis | None = None
        self._subscriptions: set[RedisSubscription] = set()

    async def connect(self) -> None:
        self._redis = aioredis.from_url(self._url)
        async with asyncio.timeout(self._timeout):
            await self._redis.ping()

    async def disconnect(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.close()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def publish(self, channel: str, message: bytes) -> None:
        assert self._redis is not None, "connect() first"
        async with asyncio.timeout(self._timeout):
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


# Presence keys, under the deployment's prefix P (its broker channel):
#   P:nodes      sorted set: node -> when its entries expire (ms, Redis' clock)
#   P:p:<proj>   sorted set (score 0, ordered by member): "<user>\0<node>\0<username>"
#   P:n:<node>   set: "<proj>\0<user>\0<username>", the node's entries
# Scripts run atomically, so of racing nodes exactly one sees a user appear or vanish.
_LUA_HELPERS = """
local prefix, sep = ARGV[1], '\\0'
local nodes = prefix .. ':nodes'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function count(pkey, user)
  return redis.call('ZLEXCOUNT', pkey, '[' .. user .. sep, '(' .. user .. '\\1')
end
local function split(s)
  local i = string.find(s, sep, 1, true)
  local j = string.find(s, sep, i + 1, true)
  return string.sub(s, 1, i - 1), string.sub(s, i + 1, j - 1), string.sub(s, j + 1)
end
-- Remove every entry of a node; append who left (project, user, username) to out.
local function drop(node, out)
  local nkey = prefix .. ':n:' .. node
  for _, entry in ipairs(redis.call('SMEMBERS', nkey)) do
    local project, user, name = split(entry)
    local pkey = prefix .. ':p:' .. project
    redis.call('ZREM', pkey, user .. sep .. node .. sep .. name)
    if count(pkey, user) == 0 then
      table.insert(out, project); table.insert(out, user); table.insert(out, name)
    end
  end
  redis.call('DEL', nkey)
end
"""

# ARGV: prefix, node, expiry ms, removes, then (project, user, username) per remove and add.
# Returns {registered, removed-count-of-flags..., added-flags...}: 1 where presence changed.
_UPDATE = (
    _LUA_HELPERS
    + """
local node, ttl, removes = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local registered = redis.call('ZADD', nodes, now_ms() + ttl, node)
local nkey = prefix .. ':n:' .. node
local out = {registered}
local i, k = 5, 0
while i + 2 <= #ARGV do
  local project, user, name = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local pkey = prefix .. ':p:' .. project
  local member = user .. sep .. node .. sep .. name
  local entry = project .. sep .. user .. sep .. name
  local changed = 0
  if k < removes then
    redis.call('SREM', nkey, entry)
    if redis.call('ZREM', pkey, member) == 1 and count(pkey, user) == 0 then changed = 1 end
  else
    redis.call('SADD', nkey, entry)
    if count(pkey, user) == 0 then changed = 1 end
    redis.call('ZADD', pkey, 0, member)
  end
  table.insert(out, changed)
  i, k = i + 3, k + 1
end
return out
"""
)

# ARGV: prefix, node or '' for every node past its expiry. Returns who left, flat.
_DROP = (
    _LUA_HELPERS
    + """
local out = {}
local dead
if ARGV[2] == '' then
  dead = redis.call('ZRANGEBYSCORE', nodes, '-inf', now_ms())
else
  dead = {ARGV[2]}
end
for _, node in ipairs(dead) do
  redis.call('ZREM', nodes, node)
  drop(node, out)
end
return out
"""
)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisPresence:
    """Presence in Redis (``redis://``), shared by every node of the deployment.

    Needs one Redis server (no cluster: the scripts touch keys they compute). Memory in
    Redis: one entry per (project, user, node) held, plus one score per node; a node's
    entries are removed when it forgets them, or by any node once it has not refreshed
    them for the expiry.
    """

    def __init__(
        self, url: str, prefix: str, expiry: float, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self._url = url
        self._timeout = timeout
        self._prefix = f"{prefix}:presence"
        self._expiry_ms = max(1, round(expiry * 1000))
        self._redis: aioredis.Redis | None = None
        self._update: AsyncScript | None = None
        self._drop: AsyncScript | None = None

    async def connect(self) -> None:
        self._redis = _client(self._url, self._timeout)
        await self._redis.ping()
        self._update = self._redis.register_script(_UPDATE)
        self._drop = self._redis.register_script(_DROP)

    async def disconnect(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def update(
        self, node: str, add: Sequence[Viewer], remove: Sequence[Viewer]
    ) -> PresenceChanges:
        args: list[str | int] = [self._prefix, node, self._expiry_ms, len(remove)]
        ops = [*remove, *add]
        for viewer in ops:
            args += [viewer.project_id, viewer.user_id, viewer.username]
        assert self._update is not None, "connect() first"
        flags = await self._update(keys=[], args=args)
        changes = PresenceChanges(registered=bool(int(flags[0])))
        for k, (viewer, flag) in enumerate(zip(ops, flags[1:], strict=True)):
            if int(flag):
                (changes.left if k < len(remove) else changes.joined).append(viewer)
        return changes

    async def viewers(self, project_id: str) -> list[Viewer]:
        assert self._redis is not None, "connect() first"
        members = await self._redis.zrange(f"{self._prefix}:p:{project_id}", 0, -1)
        found: dict[str, Viewer] = {}
        for member in members:
            assert isinstance(member, bytes | str)  # no scores asked for
            user_id, _, username = _text(member).split("\0", 2)
            found.setdefault(user_id, Viewer(project_id, user_id, username))
        return sorted(found.values(), key=lambda v: (v.username, v.user_id))

    async def expire(self) -> PresenceChanges:
        return await self._dropped("")

    async def forget(self, node: str) -> PresenceChanges:
        return await self._dropped(node)

    async def _dropped(self, node: str) -> PresenceChanges:
        assert self._drop is not None, "connect() first"
        dropped = await self._drop(keys=[], args=[self._prefix, node])
        flat = [_text(v) for v in dropped]
        left = [Viewer(*flat[i : i + 3]) for i in range(0, len(flat), 3)]
        return PresenceChanges(left=left)
