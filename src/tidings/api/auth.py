"""``/api/auth``: log in and out, who am I, change the password, API tokens."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from sqlalchemy import select

from tidings.api.deps import CROSS_ORIGIN, App, CurrentUser, same_site
from tidings.api.schemas import (
    LoginIn,
    NewTokenOut,
    PasswordChanged,
    PasswordIn,
    TokenIn,
    TokenOut,
    UserOut,
)
from tidings.api.validation import Id
from tidings.auth import COOKIE_NAME, revoke, set_password
from tidings.models import ApiToken, AuthSession, User
from tidings.proxies import client_address
from tidings.security import TOKEN_PREFIX, hash_secret, new_secret
from tidings.throttle import Attempt, login_limits

router = APIRouter(prefix="/api/auth", tags=["auth"])
logger = logging.getLogger("tidings.auth")


def _attempt(app: App, request: Request, username: str) -> tuple[Attempt, str]:
    """Reserve a password check for ``username`` from this client, or raise 429.

    Reserved before the check, atomically (see ``throttle.py``): of a burst of concurrent
    guesses, at most ``login_max_failures`` are ever verified.
    """
    client = client_address(request)
    limits = login_limits(
        username,
        client,
        app.settings.login_max_failures,
        app.settings.login_max_address_failures,
    )
    attempt = app.throttle.attempt(limits, time.monotonic())
    if not isinstance(attempt, Attempt):
        logger.warning("login throttled user=%r client=%s", username, client)
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            "too many failed logins; try again later",
            headers={"Retry-After": str(int(attempt) + 1)},
        )
    return attempt, client


@router.post("/login", response_model=UserOut)
async def login(body: LoginIn, request: Request, response: Response, app: App) -> Any:
    # A login request that carries cookies comes from a browser: it must come from us.
    if not same_site(request, app, required="cookie" in request.headers):
        raise HTTPException(status.HTTP_403_FORBIDDEN, CROSS_ORIGIN)
    attempt, client = _attempt(app, request, body.username)
    async with app.db.read() as session:
        user = await session.scalar(select(User).where(User.username == body.username))
    if not await app.passwords.verify(user.password_hash if user else None, body.password):
        logger.info("login failed user=%r client=%s", body.username, client)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid username or password")
    assert user is not None
    app.throttle.succeeded(attempt, forget=attempt.keys[:1])
    secret = new_secret()
    max_age = app.settings.session_max_age
    async with app.db.write() as session:
        session.add(
            AuthSession(
                secret_hash=hash_secret(secret),
                user_id=user.id,
                expires_at=datetime.now(UTC) + timedelta(seconds=max_age),
            )
        )
    logger.info("login user=%s client=%s", user.username, client)
    response.set_cookie(
        COOKIE_NAME,
        secret,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=app.settings.session_cookie_secure,
        path="/",
    )
    return UserOut(id=user.id, username=user.username)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(user: CurrentUser, response: Response, app: App) -> None:
    """Revoke the current session (or token) server side; its sockets close with 4401."""
    await revoke(app.db, app.eventlog, [user.credential])
    # This node at once; the others (and this one again) by the broker's notice.
    app.auth.forget(user.credential)
    response.delete_cookie(COOKIE_NAME, path="/")


@router.get("/me", response_model=UserOut)
async def me(user: CurrentUser) -> Any:
    return UserOut(id=user.user_id, username=user.username)


@router.post("/password", response_model=PasswordChanged)
async def change_password(body: PasswordIn, request: Request, user: CurrentUser, app: App) -> Any:
    """Change one's own password (session cookie only). Every other session of the user
    is revoked and its sockets close with 4401; API tokens too if ``revoke_tokens``.
    A wrong ``current_password`` is 400 and counts as a failed login."""
    if user.via != "cookie":
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "changing the password needs a session, not an API token"
        )
    attempt, client = _attempt(app, request, user.username)
    async with app.db.read() as session:
        current = await session.scalar(select(User.password_hash).where(User.id == user.user_id))
    if not await app.passwords.verify(current, body.current_password):
        logger.info("password change refused user=%s client=%s", user.username, client)
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the current password is not correct")
    app.throttle.succeeded(attempt, forget=attempt.keys[:1])
    sessions, tokens = await set_password(
        app.db,
        app.eventlog,
        user.user_id,
        await app.passwords.hash(body.new_password),
        keep=user.credential,
        revoke_tokens=body.revoke_tokens,
    )
    app.auth.forget_user(user.user_id)
    logger.info(
        "password changed user=%s client=%s revoked_sessions=%d revoked_tokens=%d",
        user.username,
        client,
        sessions,
        tokens,
    )
    return PasswordChanged(revoked_sessions=sessions, revoked_tokens=tokens)


@router.post("/tokens", response_model=NewTokenOut, status_code=status.HTTP_201_CREATED)
async def create_token(body: TokenIn, user: CurrentUser, app: App) -> Any:
    """A new API token. Its secret is in this response only; store it now.

    Needs a session cookie: a token cannot mint tokens (a leaked token must not be able
    to outlive its own revocation or expiry)."""
    if user.via != "cookie":
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "API tokens are created with a session, not a token"
        )
    secret = new_secret(TOKEN_PREFIX)
    now = datetime.now(UTC)
    expires_at = now + timedelta(seconds=body.expires_in) if body.expires_in else None
    async with app.db.write() as session:
        token = ApiToken(
            secret_hash=hash_secret(secret),
            user_id=user.user_id,
            name=body.name,
            created_at=now,
            expires_at=expires_at,
        )
        session.add(token)
        await session.flush()
    return NewTokenOut(
        id=token.id,
        name=token.name,
        created_at=token.created_at,
        expires_at=token.expires_at,
        token=secret,
    )


@router.get("/tokens", response_model=list[TokenOut])
async def list_tokens(user: CurrentUser, app: App) -> Any:
    async with app.db.read() as session:
        tokens = await session.scalars(
            select(ApiToken)
            .where(ApiToken.user_id == user.user_id, ApiToken.revoked_at.is_(None))
            .order_by(ApiToken.created_at)
        )
        return [TokenOut.model_validate(t, from_attributes=True) for t in tokens]


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_token(token_id: Id, user: CurrentUser, app: App) -> None:
    async with app.db.read() as session:
        found = await session.scalar(
            select(ApiToken.id).where(
                ApiToken.id == token_id,
                ApiToken.user_id == user.user_id,
                ApiToken.revoked_at.is_(None),
            )
        )
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "token not found")
    await revoke(app.db, app.eventlog, [f"token:{token_id}"])
    app.auth.forget(f"token:{token_id}")
