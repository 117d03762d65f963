from __future__ import annotations

import pytest

from tidings.resume import Resume, decide


def test_no_since_starts_at_latest() -> None:
    assert decide(None, oldest=1, latest=7) == Resume(recovered=None, cursor=7)


@pytest.mark.parametrize("since", [0, 3, 6, 7])
def test_since_within_history_recovers(since: int) -> None:
    assert decide(since, oldest=1, latest=7) == Resume(recovered=True, cursor=since)


def test_since_just_before_oldest_retained_recovers() -> None:
    # Events 5..10 retained: a client that saw 4 misses nothing.
    assert decide(4, oldest=5, latest=10) == Resume(recovered=True, cursor=4)


def test_since_older_than_history_is_not_recovered() -> None:
    assert decide(3, oldest=5, latest=10) == Resume(recovered=False, cursor=10)


def test_since_ahead_of_server_is_not_recovered() -> None:
    assert decide(11, oldest=1, latest=10) == Resume(recovered=False, cursor=10)


def test_empty_log() -> None:
    # A project whose log holds nothing (oldest = latest + 1) recovers only an up-to-date client.
    assert decide(4, oldest=5, latest=4) == Resume(recovered=True, cursor=4)
    assert decide(3, oldest=5, latest=4) == Resume(recovered=False, cursor=4)
