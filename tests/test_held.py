"""Load held, nothing leaking — the fast variant: 300 clients held for a few seconds.

tests/held.py starts a real ``tidings serve`` node, holds clients subscribed under
heartbeats, pings and REST changes, lets them all leave (closing handshake, TCP close,
TCP reset) and compares what the node holds with its baseline: event-loop tasks, hub
connections, subscriptions, channels, queued frames, presence, open file descriptors.
``make hold`` runs the full variant (5,000 clients, memory per connection and per hour).
"""

from __future__ import annotations

import pytest

from tests import held


@pytest.mark.timeout(120)
async def test_after_every_client_leaves_the_node_holds_what_it_held_before() -> None:
    report = await held.run(held.FAST)
    print(report.table())
    print(report.json())
    assert report.not_back == {}, report.table()
    # The load was real: every client got every event of its projects and its heartbeats.
    assert report.gaps == 0
    assert report.behind == 0
    assert report.changes > 0
    assert report.heartbeats_fewest > 0
    assert report.after["connections"] == report.baseline["connections"] == 0
    assert report.after["subscriptions"] == report.baseline["subscriptions"] == 0
