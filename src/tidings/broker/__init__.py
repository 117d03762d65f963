"""Brokers and presence stores by URL scheme: ``memory://`` (built in) and ``redis://``
(extra ``tidings[redis]``)."""

from __future__ import annotations

from urllib.parse import urlsplit

from tidings.broker.base import Broker, PresenceChanges, PresenceStore, Viewer, unreachable

__all__ = [
    "Broker",
    "PresenceChanges",
    "PresenceStore",
    "Viewer",
    "create_broker",
    "create_presence_store",
    "unreachable",
]


def create_broker(url: str, timeout: float = 2.0) -> Broker:
    """The broker of ``url``; with Redis, each command (publish) is bounded by ``timeout``
    seconds."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from tidings.broker.memory import MemoryBroker

        return MemoryBroker(url)
    if scheme in ("redis", "rediss", "unix"):
        try:
            from tidings.broker.redis import RedisBroker
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "redis:// needs the redis extra: pip install 'tidings[redis]'"
            ) from exc
        return RedisBroker(url, timeout)
    raise ValueError(f"unsupported broker URL scheme {scheme!r}; use memory:// or redis://")


def create_presence_store(
    url: str, prefix: str, expiry: float, timeout: float = 2.0
) -> PresenceStore:
    """The presence store beside the broker of ``url``: in memory for ``memory://``, in
    Redis (keys under ``prefix``, each command bounded by ``timeout`` seconds) for
    ``redis://``; entries expire ``expiry`` seconds after their node last refreshed them."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from tidings.broker.memory import MemoryPresence

        return MemoryPresence(expiry)
    if scheme in ("redis", "rediss", "unix"):
        from tidings.broker.redis import RedisPresence

        return RedisPresence(url, prefix, expiry, timeout)
    raise ValueError(f"unsupported broker URL scheme {scheme!r}; use memory:// or redis://")
