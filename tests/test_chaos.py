"""The chaos suite's fast variant: faults of every kind at once, nothing lost.

tests/chaos.py starts its own redis-server, its own PostgreSQL cluster and two
``tidings serve`` nodes, writes at least 1,000 durable events under SIGTERM, SIGKILL,
Redis and PostgreSQL restarts and member removals, and counts, per client and project,
what was lost, doubled, reordered or leaked. ``make soak`` runs the full variant.
"""

from __future__ import annotations

import shutil

import pytest

from tests import chaos
from tests.conftest import IN_CI


def _require_engines() -> None:
    missing = [
        name
        for name, found in (
            ("redis-server", shutil.which("redis-server")),
            ("initdb", (chaos.PG_BIN / "initdb").exists() or None),
        )
        if not found
    ]
    if missing:
        message = f"the chaos suite needs {', '.join(missing)} (TIDINGS_PG_BIN: {chaos.PG_BIN})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.timeout(240)
async def test_under_chaos_every_event_arrives_once_in_order_and_nowhere_else() -> None:
    _require_engines()
    report = await chaos.run(chaos.FAST)
    print(report.table())
    print(report.json())
    assert report.duplicated == 0, report.details["examples"]
    assert report.out_of_order == 0, report.details["examples"]
    assert report.changes_without_event == 0, report.details["without_event"]
    # The writers stop at the plan's 1,000 events, or at its time bound on a machine too
    # busy to commit them in time (the figures say which); a run that barely wrote proves
    # nothing.
    assert report.events_committed >= chaos.FAST.events or (
        report.write_seconds >= chaos.FAST.max_write_seconds
        and report.events_committed >= chaos.FAST.events // 4
    ), report.json()
    assert report.unexplained_log_events <= report.unknown_outcomes
    assert all(report.faults.get(kind, 0) >= 1 for kind in chaos.FAULTS), report.faults
    assert report.reconnects > report.clients
    assert report.lost == 0, report.details["examples"]
    assert report.not_settled == 0, report.details["examples"]
    assert report.leaked == 0, report.details["examples"]
