"""Prometheus metrics of one tidings node, served at ``GET /metrics``.

Each app has its own :class:`Metrics` and registry (built by ``create_app``), so two apps
in one process — tests, an embedding service — never share or clash. The registry also
carries prometheus_client's standard ``process_*`` metrics (resident memory, open file
descriptors, CPU time) and ``python_gc_*`` (collections by generation, objects
collected), and the event loop's task count: with the connection and
subscription gauges, what an operator needs to see a node leak over days.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        # The process's own figures (Linux /proc; absent elsewhere) and its garbage
        # collector's passes: per process, so two apps in one process report the same.
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        self.tasks = Gauge(
            "tidings_asyncio_tasks",
            "Tasks not yet done in the event loop serving this app (background tasks, "
            "requests in flight, replays, connections finishing); back to its idle value "
            "when the clients leave",
            registry=registry,
        )
        # Objects alive (or awaiting the collector) by count, not by the allocator's pages:
        # what the held-load suite tells a growing structure from resident-memory steps by.
        Gauge(
            "tidings_python_allocated_blocks",
            "Memory blocks the Python interpreter has allocated and not freed "
            "(sys.getallocatedblocks)",
            registry=registry,
        ).set_function(sys.getallocatedblocks)
        self.connections = Gauge(
            "tidings_ws_connections", "Open WebSocket connections", registry=registry
        )
        self.subscriptions = Gauge(
            "tidings_ws_subscriptions", "Active project subscriptions", registry=registry
        )
        self.channels = Gauge(
            "tidings_ws_channels",
            "Projects with at least one subscriber on this node",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "tidings_ws_queue_depth", "Frames waiting in all outbound queues", registry=registry
        )
        self.queue_bytes = Gauge(
            "tidings_ws_queue_bytes", "Bytes waiting in all outbound queues", registry=registry
        )
        self.events_published = Counter(
            "tidings_events_published_total",
            "Events received from the broker by this node",
            ["type"],
            registry=registry,
        )
        self.events_delivered = Counter(
            "tidings_events_delivered_total",
            "Event frames offered to connections (one per subscribed or audience connection)",
            ["type"],
            registry=registry,
        )
        self.subscribes_from_memory = Counter(
            "tidings_ws_subscribes_from_memory_total",
            "Subscribes answered from the node's memory (access and log bounds) without "
            "reading the database",
            registry=registry,
        )
        self.replay_pages_from_memory = Counter(
            "tidings_ws_replay_pages_from_memory_total",
            "Replay pages (resumes) read from the node's in-memory tail of recent events "
            "instead of the event log",
            registry=registry,
        )
        self.slow_consumers = Counter(
            "tidings_ws_slow_consumer_closes_total",
            "Connections closed with 4008 (slow consumer)",
            registry=registry,
        )
        self.delivery_latency = Histogram(
            "tidings_ws_delivery_latency_seconds",
            "From the event reaching this node to its frame being written to a socket",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )

    def watch_queues(self, depth: Callable[[], float], nbytes: Callable[[], float]) -> None:
        """Sample the outbound queues' totals when scraped."""
        self.queue_depth.set_function(depth)
        self.queue_bytes.set_function(nbytes)

    def watch_tasks(self, count: Callable[[], float]) -> None:
        """Count the event loop's tasks when scraped."""
        self.tasks.set_function(count)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
