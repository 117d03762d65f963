"""Prometheus metrics, served at ``GET /metrics``. Process-wide, like prometheus-client."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("tidings_ws_connections", "Open WebSocket connections")
SUBSCRIPTIONS = Gauge("tidings_ws_subscriptions", "Active project subscriptions")
CHANNELS = Gauge("tidings_ws_channels", "Projects with at least one subscriber on this node")
QUEUE_DEPTH = Gauge("tidings_ws_queue_depth", "Frames waiting in all outbound queues")
QUEUE_BYTES = Gauge("tidings_ws_queue_bytes", "Bytes waiting in all outbound queues")
EVENTS_PUBLISHED = Counter(
    "tidings_events_published_total", "Events received from the broker by this node", ["type"]
)
EVENTS_DELIVERED = Counter(
    "tidings_events_delivered_total",
    "Event frames handed to connection queues (one per receiving connection)",
    ["type"],
)
SLOW_CONSUMERS = Counter(
    "tidings_ws_slow_consumer_closes_total", "Connections closed with 4008 (slow consumer)"
)
DELIVERY_LATENCY = Histogram(
    "tidings_ws_delivery_latency_seconds",
    "From the event reaching this node to its frame being written to a socket",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
