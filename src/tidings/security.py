"""Secrets: argon2 password hashes, and random session/API-token secrets stored as SHA-256."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()

TOKEN_PREFIX = "tdg_"
WORKER_TOKEN_PREFIX = "tdw_"  # a credential for one external process's reports


def hash_password(password: str) -> str:
    return _hasher.hash(password)


@functools.cache
def _dummy_hash() -> str:
    """Verifying against this keeps an unknown username as slow as a wrong password.

    Made on first use, not at import: one argon2 hash costs every CLI command and every
    worker start most of a second otherwise.
    """
    return _hasher.hash("tidings-timing-equaliser")


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant-effort check; ``password_hash=None`` (no such user) always fails."""
    try:
        matched = _hasher.verify(password_hash or _dummy_hash(), password)
        return matched and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


class Passwords:
    """argon2 off the event loop: each hash or check runs in a worker thread, at most
    ``concurrency`` at once.

    One argon2 computation is tens of milliseconds of CPU and memory by design; on the
    event loop, a burst of logins would stall every socket and ``/healthz`` with it. The
    semaphore keeps a burst from taking every core and the thread pool as well. Build one
    per application (the semaphore binds to the loop that first waits on it).
    """

    def __init__(self, concurrency: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(hash_password, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """As :func:`verify_password`, in a worker thread."""
        async with self._slots:
            return await asyncio.to_thread(verify_password, password_hash, password)


def new_secret(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """Session ids and API tokens are high-entropy, so a plain SHA-256 is the right hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_password() -> str:
    return secrets.token_urlsafe(12)
