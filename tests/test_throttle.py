"""``throttle.py``: the pure login throttle, table by table."""

from __future__ import annotations

import pytest

from tidings.throttle import Attempt, LoginThrottle, login_limits


def test_attempts_are_counted_before_they_are_checked() -> None:
    throttle = LoginThrottle(window=60)
    limits = {"user:alice@a": 3}
    # Three reservations in a row, none resolved yet (all "in flight"): the fourth waits.
    attempts = [throttle.attempt(limits, now=10.0 + i) for i in range(3)]
    assert all(isinstance(a, Attempt) for a in attempts)
    wait = throttle.attempt(limits, now=13.0)
    assert wait == pytest.approx(57.0)  # until the oldest leaves the window
    assert throttle.failures("user:alice@a", now=13.0) == 3  # a refusal counts nothing


def test_success_gives_the_attempt_back_and_forgets_the_user_at_that_address() -> None:
    throttle = LoginThrottle(window=60)
    limits = login_limits("Alice", "10.0.0.1", per_user=3, per_address=10)
    assert list(limits) == ["user:alice@10.0.0.1", "addr:10.0.0.1"]
    for i in range(2):
        assert isinstance(throttle.attempt(limits, now=float(i)), Attempt)  # failed
    ok = throttle.attempt(limits, now=2.0)
    assert isinstance(ok, Attempt)
    throttle.succeeded(ok, forget=ok.keys[:1])
    assert throttle.failures("user:alice@10.0.0.1", now=2.0) == 0  # earlier failures forgotten
    assert throttle.failures("addr:10.0.0.1", now=2.0) == 2  # the address keeps its own


@pytest.mark.parametrize(
    ("attacker", "victim", "victim_refused"),
    [
        ("10.0.0.66", "10.0.0.1", False),  # another address: the user is not locked out
        ("10.0.0.1", "10.0.0.1", True),  # the same address: throttled
    ],
)
def test_failures_from_one_address_never_lock_out_another(
    attacker: str, victim: str, victim_refused: bool
) -> None:
    throttle = LoginThrottle(window=60)
    for i in range(5):
        assert isinstance(throttle.attempt(login_limits("alice", attacker, 5, 50), i), Attempt)
    result = throttle.attempt(login_limits("alice", victim, 5, 50), now=6.0)
    assert (not isinstance(result, Attempt)) is victim_refused


def test_the_address_limit_covers_many_usernames() -> None:
    throttle = LoginThrottle(window=60)
    for i in range(3):
        assert isinstance(throttle.attempt(login_limits(f"u{i}", "10.0.0.9", 5, 3), i), Attempt)
    assert not isinstance(throttle.attempt(login_limits("u9", "10.0.0.9", 5, 3), 3.0), Attempt)


def test_the_window_slides() -> None:
    throttle = LoginThrottle(window=10)
    limits = {"k": 1}
    assert isinstance(throttle.attempt(limits, now=0.0), Attempt)
    assert throttle.attempt(limits, now=9.5) == pytest.approx(0.5)
    assert isinstance(throttle.attempt(limits, now=10.0), Attempt)


def test_a_late_success_after_the_window_is_harmless() -> None:
    throttle = LoginThrottle(window=10)
    first = throttle.attempt({"k": 5}, now=0.0)
    assert isinstance(first, Attempt)
    assert isinstance(throttle.attempt({"k": 5}, now=20.0), Attempt)  # prunes the first
    throttle.succeeded(first)
    assert throttle.failures("k", now=20.0) == 1


def test_memory_is_bounded() -> None:
    throttle = LoginThrottle(window=60, max_keys=100)
    for i in range(1000):
        throttle.attempt({f"addr:{i}": 5}, now=0.0)
    assert throttle.failures("addr:999", now=0.0) == 1
    assert sum(throttle.failures(f"addr:{i}", now=0.0) for i in range(1000)) <= 101
