"""``/api/auth``: log in and out, who am I, API tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from sqlalchemy import select, update

from tidings.api.deps import App, CurrentUser, origin_allowed
from tidings.api.schemas import LoginIn, NewTokenOut, TokenIn, TokenOut, UserOut
from tidings.api.validation import Id
from tidings.auth import COOKIE_NAME
from tidings.db import after_commit
from tidings.events import SESSION_REVOKED
from tidings.models import ApiToken, AuthSession, User
from tidings.security import TOKEN_PREFIX, hash_secret, new_secret, verify_password

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post("/login", response_model=UserOut)
async def login(body: LoginIn, request: Request, response: Response, app: App) -> Any:
    if not origin_allowed(request, app):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-origin request refused")
    client = request.client.host if request.client else "unknown"
    keys = (f"user:{body.username.lower()}", f"addr:{client}")
    wait = app.throttle.retry_after(*keys)
    if wait > 0:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            "too many failed logins; try again later",
            headers={"Retry-After": str(int(wait) + 1)},
        )
    async with app.db.read() as session:
        user = await session.scalar(select(User).where(User.username == body.username))
    if not verify_password(user.password_hash if user else None, body.password):
        app.throttle.failed(*keys)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid username or password")
    assert user is not None
    app.throttle.succeeded(keys[0])
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
    await revoke(app, user.credential)
    response.delete_cookie(COOKIE_NAME, path="/")


@router.get("/me", response_model=UserOut)
async def me(user: CurrentUser) -> Any:
    return UserOut(id=user.user_id, username=user.username)


@router.post("/tokens", response_model=NewTokenOut, status_code=status.HTTP_201_CREATED)
async def create_token(body: TokenIn, user: CurrentUser, app: App) -> Any:
    """A new API token. Its secret is in this response only; store it now."""
    secret = new_secret(TOKEN_PREFIX)
    async with app.db.write() as session:
        token = ApiToken(secret_hash=hash_secret(secret), user_id=user.user_id, name=body.name)
        session.add(token)
        await session.flush()
    return NewTokenOut(id=token.id, name=token.name, created_at=token.created_at, token=secret)


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
    await revoke(app, f"token:{token_id}")


async def revoke(app: App, credential: str) -> None:
    """Revoke a session or token and close its open sockets on every node."""
    kind, _, ident = credential.partition(":")
    model = AuthSession if kind == "session" else ApiToken
    async with app.db.write() as session:
        await session.execute(
            update(model)
            .where(model.id == ident, model.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
        notice = {"credential": credential}
        after_commit(session, lambda: app.eventlog.publish_control(SESSION_REVOKED, notice))
