"""Who is calling: session cookies, bearer API tokens, worker tokens, the Origin checks,
and revoking credentials."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db import Database, after_commit
from tidings.events import SESSION_REVOKED, EventLog
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
    # When the credential stops working (session expiry, token expiry); None: never.
    expires_at: datetime | None = None


LAST_USED_PRECISION = timedelta(minutes=1)


async def authenticate(
    db: Database, cookie: str | None, authorization: str | None
) -> Principal | None:
    """The caller behind a bearer API token (preferred when given) or a session cookie.

    Revoked or expired credentials are None. So is a process's worker token: it is a
    credential for that process's reports only (see ``api/processes.py``).
    """
    if authorization:
        token = bearer_token(authorization)
        return None if token is None else await _bearer(db, token)
    if cookie:
        return await _session(db, cookie)
    return None


async def _bearer(db: Database, token: str) -> Principal | None:
    now = datetime.now(UTC)
    async with db.read() as session:
        row = (
            await session.execute(
                select(
                    ApiToken.id,
                    User.id,
                    User.username,
                    ApiToken.last_used_at,
                    ApiToken.expires_at,
                )
                .join(User, User.id == ApiToken.user_id)
                .where(ApiToken.secret_hash == hash_secret(token), ApiToken.revoked_at.is_(None))
            )
        ).first()
    if row is None:
        return None
    token_id, user_id, username, last_used, expires_at = row
    if expires_at is not None and expires_at <= now:
        return None
    if last_used is None or now - last_used >= LAST_USED_PRECISION:
        # Recorded at most once a minute per token: not a write per request.
        async with db.write() as session:
            await session.execute(
                update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now)
            )
    return Principal(user_id, username, f"token:{token_id}", "bearer", expires_at)


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
    return Principal(row[2], row[3], f"session:{row[0]}", "cookie", row[1])


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """An Origin is fine if absent (not a browser), same host as the request, or listed.

    The WebSocket handshake's check; REST requests use :func:`request_source_allowed`.
    """
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin in allowed or "*" in allowed:
        return True
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


def request_source(origin: str | None, referer: str | None) -> str | None:
    """``scheme://host[:port]`` a browser says a request comes from: its ``Origin``, or
    failing that the origin of its ``Referer``; None if it says neither."""
    if origin:
        return origin.strip().rstrip("/").lower()
    if referer:
        parts = urlsplit(referer.strip())
        if parts.scheme and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}".lower()
    return None


def request_source_allowed(
    source: str | None, own: str | None, allowed: list[str], *, required: bool
) -> bool:
    """Cross-site request forgery check of a state-changing request.

    ``source`` is :func:`request_source`; ``own`` this server's ``scheme://host`` as the
    client addressed it. It passes if it is our own origin (scheme included) or listed in
    ``allowed``. Without any source it passes only when not ``required`` (a client that
    sends no cookie is no browser being abused).
    """
    if source is None:
        return not required
    if "*" in allowed or source in (o.lower() for o in allowed):
        return True
    return own is not None and source == own


# -- worker tokens -----------------------------------------------------------------------


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


# -- revocation --------------------------------------------------------------------------


async def revoke(db: Database, eventlog: EventLog, credentials: Iterable[str]) -> None:
    """Revoke sessions and tokens (``session:<id>``, ``token:<id>``) and close their open
    sockets with 4401 on every node."""
    now = datetime.now(UTC)
    async with db.write() as session:
        for credential in credentials:
            kind, _, ident = credential.partition(":")
            model = AuthSession if kind == "session" else ApiToken
            await session.execute(
                update(model)
                .where(model.id == ident, model.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            _publish_revoked(session, eventlog, credential)


async def set_password(
    db: Database,
    eventlog: EventLog,
    user_id: str,
    password_hash: str,
    *,
    keep: str | None,
    revoke_tokens: bool,
) -> tuple[int, int]:
    """Store a new password hash and revoke every session of the user but ``keep`` (and
    every API token if ``revoke_tokens``), in one transaction; their sockets close with
    4401 on every node. Returns ``(sessions revoked, tokens revoked)``."""
    now = datetime.now(UTC)
    keep_session = keep.partition(":")[2] if keep and keep.startswith("session:") else None
    async with db.write() as session:
        await session.execute(
            update(User).where(User.id == user_id).values(password_hash=password_hash)
        )
        where = [AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None)]
        if keep_session is not None:
            where.append(AuthSession.id != keep_session)
        sessions = list(
            await session.scalars(
                update(AuthSession).where(*where).values(revoked_at=now).returning(AuthSession.id)
            )
        )
        tokens: list[str] = []
        if revoke_tokens:
            tokens = list(
                await session.scalars(
                    update(ApiToken)
                    .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
                    .values(revoked_at=now)
                    .returning(ApiToken.id)
                )
            )
        for ident in sessions:
            _publish_revoked(session, eventlog, f"session:{ident}")
        for ident in tokens:
            _publish_revoked(session, eventlog, f"token:{ident}")
    return len(sessions), len(tokens)


def _publish_revoked(session: AsyncSession, eventlog: EventLog, credential: str) -> None:
    notice = {"credential": credential}
    after_commit(session, lambda: eventlog.publish_control(SESSION_REVOKED, notice))
