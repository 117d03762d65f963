"""Who is calling: session cookies, bearer API tokens, the Origin check, login throttling."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import select, update

from tidings.db import Database
from tidings.models import ApiToken, AuthSession, User
from tidings.security import hash_secret

COOKIE_NAME = "tidings_session"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    username: str
    credential: str  # "session:<id>" or "token:<id>"; what a revocation closes
    via: str  # "cookie" or "bearer"


LAST_USED_PRECISION = timedelta(minutes=1)


async def authenticate(
    db: Database, cookie: str | None, authorization: str | None
) -> Principal | None:
    """The caller behind a bearer token (preferred when given) or a session cookie."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return await _bearer(db, token.strip())
    if cookie:
        return await _session(db, cookie)
    return None


async def _bearer(db: Database, token: str) -> Principal | None:
    now = datetime.now(UTC)
    async with db.read() as session:
        row = (
            await session.execute(
                select(ApiToken.id, User.id, User.username, ApiToken.last_used_at)
                .join(User, User.id == ApiToken.user_id)
                .where(ApiToken.secret_hash == hash_secret(token), ApiToken.revoked_at.is_(None))
            )
        ).first()
    if row is None:
        return None
    token_id, user_id, username, last_used = row
    if last_used is None or now - last_used >= LAST_USED_PRECISION:
        # Recorded at most once a minute per token: not a write per request.
        async with db.write() as session:
            await session.execute(
                update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now)
            )
    return Principal(user_id, username, f"token:{token_id}", "bearer")


async def _session(db: Database, cookie: str) -> Principal | None:
    async with db.read() as session:
        row = (
            await session.execute(
                select(AuthSession.id, AuthSession.expires_at, User.id, User.username)
                .join(User, User.id == AuthSession.user_id)
                .where(
                    AuthSession.secret_hash == hash_secret(cookie),
                    AuthSession.revoked_at.is_(None),
                )
            )
        ).first()
    if row is None or row[1] <= datetime.now(UTC):
        return None
    return Principal(row[2], row[3], f"session:{row[0]}", "cookie")


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """An Origin is fine if absent (not a browser), same host as the request, or listed."""
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin in allowed or "*" in allowed:
        return True
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


class LoginThrottle:
    """Failed logins per username and per client address within a sliding window."""

    def __init__(self, max_failures: int, window: float) -> None:
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, *keys: str) -> float:
        """Seconds until a login may be tried again (0 if it may now)."""
        now = time.monotonic()
        wait = 0.0
        for key in keys:
            failures = self._prune(key, now)
            if failures is not None and len(failures) >= self.max_failures:
                wait = max(wait, failures[0] + self.window - now)
        return wait

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        for key in keys:
            self._failures.setdefault(key, deque()).append(now)
            self._prune(key, now)
        if len(self._failures) > 100_000:  # bound memory under a credential-stuffing storm
            for key in list(self._failures)[:50_000]:
                del self._failures[key]

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)

    def _prune(self, key: str, now: float) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] + self.window <= now:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures
