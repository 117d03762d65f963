"""The ``tidings`` command: serve, manage users, mint API tokens, listen to a project."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from tidings.api.schemas import MAX_TOKEN_LIFETIME
from tidings.auth import set_password
from tidings.broker import create_broker
from tidings.db import Database, create_engine, migrate
from tidings.events import EventLog
from tidings.messages import PROJECT_ID, PROJECT_ID_RULE
from tidings.models import ApiToken, User
from tidings.security import TOKEN_PREFIX, hash_password, hash_secret, new_secret
from tidings.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidings", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP and WebSocket server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--data-dir", help="TIDINGS_DATA_DIR")
    serve.add_argument("--database-url", help="TIDINGS_DATABASE_URL")
    serve.add_argument("--broker-url", help="TIDINGS_BROKER_URL")
    serve.add_argument("--log-level", default="info")

    users = commands.add_parser("users", help="manage users").add_subparsers(
        dest="action", required=True
    )
    create = users.add_parser("create", help="create a user")
    create.add_argument("username")
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    passwd = users.add_parser("passwd", help="set a user's password and revoke all their sessions")
    passwd.add_argument("username")
    passwd.add_argument("--password-stdin", action="store_true")
    passwd.add_argument(
        "--revoke-tokens", action="store_true", help="revoke the user's API tokens too"
    )
    users.add_parser("list", help="list users")

    tokens = commands.add_parser("tokens", help="API tokens").add_subparsers(
        dest="action", required=True
    )
    mint = tokens.add_parser("create", help="create an API token (printed once)")
    mint.add_argument("username")
    mint.add_argument("--name", default="cli")
    mint.add_argument(
        "--expires-in",
        type=_lifetime,
        metavar="SECONDS",
        help=f"expire the token after this many seconds (1-{MAX_TOKEN_LIFETIME})",
    )

    follow = commands.add_parser(
        "listen",
        help="print a project's events live (reconnects and resumes by itself)",
        description="Print a project's events live, one a line, until Ctrl-C; the "
        "connection's news go to stderr. Reconnects and resumes by itself.",
    )
    follow.add_argument(
        "--url",
        default=os.environ.get("TIDINGS_URL"),
        help="the server, http(s)://host:port or ws(s)://host:port/ws (TIDINGS_URL)",
    )
    follow.add_argument(
        "--token", default=os.environ.get("TIDINGS_TOKEN"), help="an API token (TIDINGS_TOKEN)"
    )
    follow.add_argument("--project", required=True, metavar="ID", help="the project's id")
    follow.add_argument(
        "--since", type=_seq, metavar="N", help="first print every event after seq N"
    )
    follow.add_argument(
        "--json", action="store_true", help="print each message as one JSON object a line"
    )

    args = parser.parse_args(argv)
    if args.command == "listen":
        return _listen(parser, args)
    overrides = {
        key: value
        for key in ("data_dir", "database_url", "broker_url")
        if (value := getattr(args, key, None)) is not None
    }
    settings = Settings(**overrides)
    args.settings = settings
    if args.command == "serve":
        return _serve(settings, args)
    handlers: dict[tuple[str, str], Callable[[Database, argparse.Namespace], Awaitable[int]]] = {
        ("users", "create"): _users_create,
        ("users", "passwd"): _users_passwd,
        ("users", "list"): _users_list,
        ("tokens", "create"): _tokens_create,
    }
    return asyncio.run(_with_db(settings, args, handlers[(args.command, args.action)]))


def _lifetime(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {value!r}") from None
    if not 0 < seconds <= MAX_TOKEN_LIFETIME:
        raise argparse.ArgumentTypeError(f"must be within 1-{MAX_TOKEN_LIFETIME} seconds")
    return seconds


def _seq(value: str) -> int:
    try:
        seq = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if not 0 <= seq < 2**63:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return seq


def _listen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from tidings.listen import listen

    for name, variable in (("url", "TIDINGS_URL"), ("token", "TIDINGS_TOKEN")):
        if not getattr(args, name):
            parser.error(f"listen needs --{name} or {variable}")
    if not PROJECT_ID.fullmatch(args.project):
        parser.error(f"--project: {PROJECT_ID_RULE}")
    try:
        return asyncio.run(
            listen(args.url, args.token, args.project, args.since, as_json=args.json)
        )
    except KeyboardInterrupt:
        return 130  # stopped with Ctrl-C, as a shell reports SIGINT


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from tidings.server import serve

    # Workers re-read the settings from the environment: pass the flags on that way.
    for key in ("data_dir", "database_url", "broker_url"):
        value = getattr(args, key, None)
        if value is not None:
            os.environ[f"TIDINGS_{key.upper()}"] = str(value)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    serve(settings, args.host, args.port, args.workers, args.log_level)
    return 0


async def _with_db(
    settings: Settings,
    args: argparse.Namespace,
    handler: Callable[[Database, argparse.Namespace], Awaitable[int]],
) -> int:
    db = Database(create_engine(settings.effective_database_url))
    try:
        await migrate(db.engine)
        return await handler(db, args)
    finally:
        await db.dispose()


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
    if not password:
        raise SystemExit("tidings: the password must not be empty")
    return password


async def _users_create(db: Database, args: argparse.Namespace) -> int:
    password = _read_password(args)
    async with db.write() as session:
        if await session.scalar(select(User.id).where(User.username == args.username)):
            print(f"tidings: user {args.username!r} already exists", file=sys.stderr)
            return 1
        user = User(username=args.username, password_hash=hash_password(password))
        session.add(user)
        await session.flush()
    print(f"created user {args.username} ({user.id})")
    return 0


async def _users_passwd(db: Database, args: argparse.Namespace) -> int:
    """New password; every session (and with ``--revoke-tokens`` every token) of the user
    is revoked, and the broker tells every node to close their sockets with 4401."""
    password = _read_password(args)
    async with db.read() as session:
        user_id = await session.scalar(select(User.id).where(User.username == args.username))
    if user_id is None:
        print(f"tidings: no user {args.username!r}", file=sys.stderr)
        return 1
    settings = args.settings
    broker = create_broker(settings.broker_url, settings.broker_timeout)
    await broker.connect()
    try:
        eventlog = EventLog(db, broker, settings.event_history, settings.broker_channel)
        sessions, tokens = await set_password(
            db,
            eventlog,
            user_id,
            hash_password(password),
            keep=None,
            revoke_tokens=args.revoke_tokens,
        )
    finally:
        await broker.disconnect()
    print(
        f"password of {args.username} changed; revoked {sessions} session(s)"
        + (f" and {tokens} API token(s)" if args.revoke_tokens else "")
    )
    return 0


async def _users_list(db: Database, args: argparse.Namespace) -> int:
    async with db.read() as session:
        for user in await session.scalars(select(User).order_by(User.username)):
            print(f"{user.username}\t{user.id}\t{user.created_at.isoformat()}")
    return 0


async def _tokens_create(db: Database, args: argparse.Namespace) -> int:
    secret = new_secret(TOKEN_PREFIX)
    async with db.write() as session:
        user = await session.scalar(select(User).where(User.username == args.username))
        if user is None:
            print(f"tidings: no user {args.username!r}", file=sys.stderr)
            return 1
        expires_at = None
        if args.expires_in is not None:
            expires_at = datetime.now(UTC) + timedelta(seconds=args.expires_in)
        session.add(
            ApiToken(
                secret_hash=hash_secret(secret),
                user_id=user.id,
                name=args.name,
                expires_at=expires_at,
            )
        )
    until = f", expires {expires_at.isoformat(timespec='seconds')}" if expires_at else ""
    print(f"API token for {args.username} (shown once{until}): {secret}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
