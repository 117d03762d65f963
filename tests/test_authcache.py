"""The credential cache on its own: TTL, bound, forgetting, and the race with a lookup."""

from __future__ import annotations

import pytest

from tidings.auth import Principal
from tidings.authcache import CredentialCache


def principal(n: int, user: str = "u") -> Principal:
    return Principal(user, user, f"token:{n}", "bearer")


def test_an_entry_lives_for_the_ttl_only() -> None:
    cache: CredentialCache[Principal] = CredentialCache(ttl=10, max_entries=10)
    cache.put("k", principal(1), now=100.0, generation=cache.generation)
    assert cache.get("k", 109.9) == principal(1)
    assert cache.get("k", 110.0) is None
    assert len(cache) == 0


def test_the_least_recently_used_entry_goes_first() -> None:
    cache: CredentialCache[Principal] = CredentialCache(ttl=10, max_entries=2)
    for n in (1, 2):
        cache.put(f"k{n}", principal(n), now=0, generation=cache.generation)
    assert cache.get("k1", 1) is not None  # k2 is now the least recently used
    cache.put("k3", principal(3), now=1, generation=cache.generation)
    assert len(cache) == 2
    assert cache.get("k2", 1) is None
    assert cache.get("k1", 1) is not None and cache.get("k3", 1) is not None
    cache.forget("token:2")  # long gone: nothing to drop, and no error


def test_forget_drops_a_credential_and_forget_user_all_of_a_user() -> None:
    cache: CredentialCache[Principal] = CredentialCache(ttl=10, max_entries=10)
    cache.put("a", principal(1, "alice"), now=0, generation=cache.generation)
    cache.put("b", principal(2, "alice"), now=0, generation=cache.generation)
    cache.put("c", principal(3, "bob"), now=0, generation=cache.generation)
    cache.forget("token:1")
    assert cache.get("a", 1) is None and cache.get("b", 1) is not None
    cache.forget_user("alice")
    assert cache.get("b", 1) is None and cache.get("c", 1) is not None
    # Kept again under the same key: replaces, does not duplicate.
    cache.put("c", principal(3, "bob"), now=2, generation=cache.generation)
    assert len(cache) == 1


def test_an_answer_read_before_a_revocation_is_not_kept() -> None:
    """A lookup reads the database, a revocation lands meanwhile: its answer may be stale."""
    cache: CredentialCache[Principal] = CredentialCache(ttl=10, max_entries=10)
    before = cache.generation
    cache.forget("token:1")
    cache.put("k", principal(1), now=0, generation=before)
    assert cache.get("k", 0) is None


@pytest.mark.parametrize("ttl", [0, -1, 30.5])
def test_the_ttl_is_at_most_thirty_seconds(ttl: float) -> None:
    with pytest.raises(ValueError):
        CredentialCache[Principal](ttl=ttl, max_entries=1)
