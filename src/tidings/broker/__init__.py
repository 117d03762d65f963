"""Brokers by URL scheme: ``memory://`` (built in) and ``redis://`` (extra ``tidings[redis]``)."""

from __future__ import annotations

from urllib.parse import urlsplit

from tidings.broker.base import Broker

__all__ = ["Broker", "create_broker"]


def create_broker(url: str) -> Broker:
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
        return RedisBroker(url)
    raise ValueError(f"unsupported broker URL scheme {scheme!r}; use memory:// or redis://")
