"""Who is calling: session cookies, bearer API tokens, worker tokens, the Origin checks,
and revoking credentials."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Executable, Select, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.authcache import CredentialCache
from tidings.batches import Batches
from tidings.db import Database, after_commit, listed
from tidings.events import SESSION_REVOKED, EventLog
from tidings.models import ApiToken, AuthSession, User
from tidings.outages import log_failure
from tidings.security import hash_secret
from tidings.stopping import cancel_and_wait

logger = logging.getLogger(__name__)

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
# A cached credential is believed this long at most without asking the database again:
# the bound on a revocation whose broker notice this node missed.
CACHE_TTL = 10.0
CACHE_ENTRIES = 10_000
RECHECK_BATCH = 500  # credentials per query of revoked_among()
LAST_USED_FLUSH = 1.0  # seconds between writes of the tokens' last use

# Which of a batch of sessions or tokens are not revoked (see db.listed).
_LIVE = {
    kind: select(model.id).where(model.id.in_(listed("ids")), model.revoked_at.is_(None))
    for kind, model in (("session", AuthSession), ("token", ApiToken))
}


async def authenticate(
    db: Database, cookie: str | None, authorization: str | None
) -> Principal | None:
    """The caller behind a bearer API token (preferred when given) or a session cookie,
    straight from the database (no cache; see :class:`Authenticator`).

    Revoked or expired credentials are None. So is a process's worker token: it is a
    credential for that process's reports only (see ``api/processes.py``).
    """
    if authorization:
        token = bearer_token(authorization)
        if token is None:
            return None
        found = (await _find_tokens(db, [hash_secret(token)]))[0]
        if found is None:
            return None
        principal, last_used = found
        now = datetime.now(UTC)
        if last_used is None or now - last_used >= LAST_USED_PRECISION:
            await _record_use(db, {principal.credential: now})
        return principal
    if cookie:
        return (await _find_sessions(db, [hash_secret(cookie)]))[0]
    return None


class Authenticator:
    """:func:`authenticate` for every request and connect, mostly without the database.

    Accepted credentials are cached (``authcache.py``) for :data:`CACHE_TTL` seconds;
    :meth:`forget` drops one at once (a revocation notice from the broker, on every node;
    :meth:`forget_user` after a password change on this one). Expiry is checked on every
    use, to the second. An API token's last use is written in batches, by a task, at most
    once a :data:`LAST_USED_PRECISION` per token: no write on the request path.

    Misses of one credential at the same time (every client of one service or user coming
    back at once after a restart, when the cache is empty) share one database read, as
    long as nothing was forgotten since it began: a caller never gets an answer older
    than the last revocation this node heard of. Misses of different credentials at the
    same time (every user coming back) are read in batches (``batches.py``): one query
    for those that wait together, not one each.
    """

    def __init__(
        self,
        db: Database,
        *,
        ttl: float = CACHE_TTL,
        max_entries: int = CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.cache: CredentialCache[Principal] = CredentialCache(ttl=ttl, max_entries=max_entries)
        self._clock = clock
        # Token credential → its last use as stored (or queued to be): pruned to the
        # last LAST_USED_PRECISION at every flush, so bounded by the tokens in use.
        self._recorded: dict[str, datetime] = {}
        self._pending: dict[str, datetime] = {}
        self._task: asyncio.Task[None] | None = None
        # Credential key → (cache generation when its read began, the read).
        self._reads: dict[str, tuple[int, asyncio.Future[Principal | None]]] = {}
        # Reads of different credentials at the same time go to the database together.
        self._tokens: Batches[str, tuple[Principal, datetime | None] | None] = Batches(
            lambda hashes: _find_tokens(self.db, hashes), READ_BATCH
        )
        self._sessions: Batches[str, Principal | None] = Batches(
            lambda hashes: _find_sessions(self.db, hashes), READ_BATCH
        )

    async def authenticate(self, cookie: str | None, authorization: str | None) -> Principal | None:
        if authorization:
            token = bearer_token(authorization)
            if token is None:
                return None
            key = "t" + hash_secret(token)
        elif cookie:
            key = "s" + hash_secret(cookie)
        else:
            return None
        now = datetime.now(UTC)
        principal = self.cache.get(key, self._clock())
        if principal is None:
            principal = await self._read(key)
            if principal is None:
                return None
        if principal.expires_at is not None and principal.expires_at <= now:
            return None
        if principal.via == "bearer":
            last = self._recorded.get(principal.credential)
            if last is None or now - last >= LAST_USED_PRECISION:
                self._recorded[principal.credential] = self._pending[principal.credential] = now
        return principal

    async def _read(self, key: str) -> Principal | None:
        """The database's answer for a credential key, put in the cache; joins a read of
        the same key begun at the current cache generation. The read runs as a task of
        its own, so a caller that gives up does not cancel it for the others."""
        generation = self.cache.generation
        pending = self._reads.get(key)
        if pending is None or pending[0] != generation:
            read = asyncio.ensure_future(self._lookup(key, generation))
            pending = self._reads[key] = (generation, read)
            read.add_done_callback(lambda done: self._read_done(key, done))
        return await asyncio.shield(pending[1])

    def _read_done(self, key: str, read: asyncio.Future[Principal | None]) -> None:
        pending = self._reads.get(key)
        if pending is not None and pending[1] is read:
            del self._reads[key]
        if not read.cancelled():
            read.exception()  # retrieved here too: every waiter may have given up

    async def _lookup(self, key: str, generation: int) -> Principal | None:
        principal: Principal | None
        if key[0] == "t":
            found = await self._tokens.ask(key[1:])
            if found is None:
                return None
            principal, last_used = found
            if last_used is not None:
                self._recorded.setdefault(principal.credential, last_used)
        else:
            principal = await self._sessions.ask(key[1:])
            if principal is None:
                return None
        self.cache.put(key, principal, self._clock(), generation)
        return principal

    def forget(self, credential: str) -> None:
        self.cache.forget(credential)

    async def revoked_among(self, credentials: Sequence[str]) -> set[str]:
        """Which of ``credentials`` (``session:<id>``, ``token:<id>``) are revoked or gone,
        read from the database in a few batched queries: for the hub, which closes
        their sockets if the broker lost the revocation (expiry it checks by itself)."""
        live: set[str] = set()
        async with self.db.read() as session:
            for kind, statement in _LIVE.items():
                idents = [c.partition(":")[2] for c in credentials if c.startswith(kind + ":")]
                for start in range(0, len(idents), RECHECK_BATCH):
                    batch = idents[start : start + RECHECK_BATCH]
                    rows = await session.scalars(statement, {"ids": batch})
                    live.update(f"{kind}:{ident}" for ident in rows)
        return set(credentials) - live

    def forget_user(self, user_id: str) -> None:
        self.cache.forget_user(user_id)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flush_every(LAST_USED_FLUSH))

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        """Write the queued last uses (one statement for all of them)."""
        pending, self._pending = self._pending, {}
        cutoff = datetime.now(UTC) - LAST_USED_PRECISION
        self._recorded = {c: t for c, t in self._recorded.items() if t > cutoff}
        if pending:
            await _record_use(self.db, pending)

    async def _flush_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush()
            except Exception as exc:
                # Bookkeeping only: a token's last use may be a little older than it was.
                log_failure(logger, exc, "recording API tokens' last use failed")


def _not_revoked_among(
    credential: type[ApiToken] | type[AuthSession], id_label: str, *more: Any
) -> Select[Any]:
    """The credentials of a kind not revoked among a batch of secret hashes (bound as
    ``hashes``, see db.listed), with their users: the secret hash, the credential's id as
    ``id_label``, ``user_id``, ``username``, ``expires_at`` and ``more``."""
    return (
        select(
            credential.secret_hash,
            credential.id.label(id_label),
            User.id.label("user_id"),
            User.username,
            credential.expires_at,
            *more,
        )
        .join(User, User.id == credential.user_id)
        .where(credential.secret_hash.in_(listed("hashes")), credential.revoked_at.is_(None))
    )


# Built once.
_TOKENS = _not_revoked_among(ApiToken, "token_id", ApiToken.last_used_at)
_SESSIONS = _not_revoked_among(AuthSession, "session_id")
READ_BATCH = 500  # credentials per query when many clients come back at once


async def _find_live(db: Database, statement: Executable, hashes: list[str]) -> list[Any]:
    """For each secret hash, the row of ``statement`` of its live credential; None for an
    unknown, revoked or expired one. One query."""
    async with db.read() as session:
        rows = await session.execute(statement, {"hashes": hashes})
        found = {row.secret_hash: row for row in rows}
    now = datetime.now(UTC)
    live = []
    for secret_hash in hashes:
        row = found.get(secret_hash)
        expired = row is not None and row.expires_at is not None and row.expires_at <= now
        live.append(None if expired else row)
    return live


async def _find_tokens(
    db: Database, hashes: list[str]
) -> list[tuple[Principal, datetime | None] | None]:
    """For each secret hash, the principal of the live token that has it and its stored
    last use; None for an unknown, revoked or expired one. One query."""
    return [
        None
        if r is None
        else (
            Principal(r.user_id, r.username, f"token:{r.token_id}", "bearer", r.expires_at),
            r.last_used_at,
        )
        for r in await _find_live(db, _TOKENS, hashes)
    ]


async def _find_sessions(db: Database, hashes: list[str]) -> list[Principal | None]:
    """:func:`_find_tokens` for session cookies."""
    return [
        None
        if r is None
        else Principal(r.user_id, r.username, f"session:{r.session_id}", "cookie", r.expires_at)
        for r in await _find_live(db, _SESSIONS, hashes)
    ]


async def _record_use(db: Database, uses: dict[str, datetime]) -> None:
    async with db.write() as session:
        # Core, not the ORM's bulk update: a token deleted meanwhile (its user removed)
        # is no error, its row is just not there to update.
        tokens = ApiToken.metadata.tables[ApiToken.__tablename__]
        await session.execute(
            update(tokens)
            .where(tokens.c.id == bindparam("token_id"))
            .values(last_used_at=bindparam("used_at")),
            [{"token_id": c.partition(":")[2], "used_at": at} for c, at in uses.items()],
        )


async def _find_session(db: Database, secret_hash: str) -> Principal | None:
    async with db.read() as session:
        row = (
            await session.execute(
                select(AuthSession.id, AuthSession.expires_at, User.id, User.username)
                .join(User, User.id == AuthSession.user_id)
                .where(
                    AuthSession.secret_hash == secret_hash,
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
