"""Secrets: argon2 password hashes, and random session/API-token secrets stored as SHA-256."""

from __future__ import annotations

import functools
import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()

TOKEN_PREFIX = "tdg_"


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


def new_secret(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """Session ids and API tokens are high-entropy, so a plain SHA-256 is the right hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_password() -> str:
    return secrets.token_urlsafe(12)
