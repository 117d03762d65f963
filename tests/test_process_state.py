"""The pure core of processes: status transitions, progress, the progress gate."""

from __future__ import annotations

import math

import pytest

from tidings.processes.state import (
    ACTIVE,
    FINISHED,
    Cancelled,
    Gate,
    Progress,
    Status,
    valid_fraction,
)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (Status.QUEUED, Status.RUNNING),
        (Status.QUEUED, Status.CANCELLED),
        (Status.QUEUED, Status.FAILED),
        (Status.RUNNING, Status.SUCCEEDED),
        (Status.RUNNING, Status.FAILED),
        (Status.RUNNING, Status.CANCELLED),
    ],
)
def test_legal_transitions(old: Status, new: Status) -> None:
    assert old.to(new) is new


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (Status.QUEUED, Status.SUCCEEDED),
        (Status.QUEUED, Status.QUEUED),
        (Status.RUNNING, Status.QUEUED),
        (Status.RUNNING, Status.RUNNING),
        *[(done, other) for done in FINISHED for other in Status],
    ],
)
def test_illegal_transitions_raise(old: Status, new: Status) -> None:
    with pytest.raises(RuntimeError, match="illegal process transition"):
        old.to(new)


def test_finished_and_active_partition_the_statuses() -> None:
    assert set(Status) == FINISHED | ACTIVE and not FINISHED & ACTIVE
    assert all(s.finished for s in FINISHED) and not any(s.finished for s in ACTIVE)


def test_progress_fraction_stays_below_one_until_success() -> None:
    progress = Progress(total=200)
    assert progress.fraction == 0.0
    progress.advance(50, "a quarter")
    assert progress.fraction == 0.25 and progress.message == "a quarter"
    progress.advance(150)
    assert progress.fraction == 0.999 and progress.message == "a quarter"
    progress.advance(10)  # a file grew since its row was written
    assert progress.fraction == 0.999
    assert Progress(total=0).fraction == 0.0


def test_progress_check_raises_once_stopped() -> None:
    progress = Progress(total=10)
    progress.check()
    progress.stop.set()
    with pytest.raises(Cancelled):
        progress.check()
    with pytest.raises(Cancelled):
        progress.advance(1)
    assert progress.done == 1  # counted, then noticed


def test_gate_allows_one_emission_per_interval() -> None:
    gate = Gate(0.25)
    assert gate.delay(100.0) == 0.0
    gate.sent(100.0)
    assert gate.delay(100.0) == 0.25
    assert gate.delay(100.1) == pytest.approx(0.15)
    assert gate.delay(100.25) == 0.0
    assert gate.delay(101.0) == 0.0
    assert Gate(0.0, last=5.0).delay(5.0) == 0.0


@pytest.mark.parametrize(
    ("value", "ok"),
    [(0.0, True), (1.0, True), (0.5, True), (-0.01, False), (1.01, False), (math.nan, False)],
)
def test_valid_fraction(value: float, ok: bool) -> None:
    assert valid_fraction(value) is ok
    assert valid_fraction(math.inf) is False
