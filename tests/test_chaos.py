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


def test_history_is_judged_by_when_its_subscription_was_answered() -> None:
    """Defect 11 of docs/reliability.md, the check's own: a guest added again at 23 and
    removed again at 24 resumes in between with the `since` of their first membership; the
    older events 21 and 22 arrive after the second removal. They were answered while the
    guest was a member: history, not a leak. A subscription answered while they were not
    a member at all is a leak, whenever its events arrive."""
    ledger = chaos.Ledger()
    ledger.visible[("p", "guest")] = [[4, 20], [23, 24]]
    committed = {("p", 20): 100.0, ("p", 23): 110.0, ("p", 24): 110.126}
    assert not ledger.can_see({"p": "owner"}, "guest", "p", 21)
    answered = (110.05, 110.08)  # asked for and answered while a member again
    assert ledger.member_during("guest", "p", *answered, committed)
    arrived = 110.2  # after the second removal
    assert not ledger.member_during("guest", "p", arrived, arrived, committed)
    in_the_gap = (105.0, 105.1)  # answered while not a member: a leak
    assert not ledger.member_during("guest", "p", *in_the_gap, committed)
