"""The ``tidings`` command, run as a subprocess the way an operator or a script runs it."""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    REDIS_URL,
    TIDINGS,
    TIMEOUT,
    ServerThread,
    TestUser,
    api,
    browser_session,
    closed_with,
    connected,
    create_project,
    create_user,
    recv_until,
    require_service,
    send,
    serve,
    upload,
    ws_connect,
)
from tidings import Settings
from tidings.cli import main
from tidings.db import Database, create_engine, migrate


def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env["TIDINGS_DATA_DIR"] = str(settings.data_dir)
    env["TIDINGS_DATABASE_URL"] = settings.effective_database_url
    return env


def tidings(settings: Settings, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TIDINGS, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=cli_env(settings),
        timeout=TIMEOUT * 6,
        check=False,
    )


async def test_users_and_tokens(
    settings: Settings, make_server: Callable[..., ServerThread]
) -> None:
    created = tidings(settings, "users", "create", "dana", "--password-stdin", stdin="s3cret pw\n")
    assert created.returncode == 0, created.stderr
    assert "dana" in created.stdout

    listed = tidings(settings, "users", "list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["dana"]

    minted = tidings(settings, "tokens", "create", "dana")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.split()[-1]
    assert token.startswith("tdg_")

    server = make_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        me = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200
        assert me.json()["username"] == "dana"
        login = await client.post(
            "/api/auth/login", json={"username": "dana", "password": "s3cret pw"}
        )
        assert login.status_code == 200


# In-process from here on: the same code path, without an interpreter start per command.


def run(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
    stdin: str = "",
) -> tuple[int, str, str]:
    for key, value in cli_env(settings).items():
        if key.startswith("TIDINGS_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_refusals(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
        return run(settings, monkeypatch, capsys, *args, stdin=stdin)

    assert cli("users", "create", "dana", "--password-stdin", stdin="pw\n")[0] == 0
    code, _, err = cli("users", "create", "dana", "--password-stdin", stdin="other\n")
    assert code == 1 and "already exists" in err
    assert cli("users", "create", "erin", "--password-stdin", stdin="\n")[0] != 0
    assert cli("users", "create", "erin", "--password-stdin", stdin="")[0] != 0
    assert cli("tokens", "create", "nobody")[0] == 1
    assert cli("users", "passwd", "nobody", "--password-stdin", stdin="x\n")[0] == 1
    code, out, _ = cli("users", "list")
    assert code == 0 and [line.split("\t")[0] for line in out.splitlines()] == ["dana"]
    for usage in ((), ("users",), ("frobnicate",), ("tokens", "create")):
        assert cli(*usage)[0] == 2, usage


async def test_users_passwd(
    settings: Settings,
    make_server: Callable[..., ServerThread],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def cli(*args: str, stdin: str = "") -> int:
        return run(settings, monkeypatch, capsys, *args, stdin=stdin)[0]

    assert (
        await asyncio.to_thread(cli, "users", "create", "dana", "--password-stdin", stdin="old\n")
        == 0
    )
    assert (
        await asyncio.to_thread(cli, "users", "passwd", "dana", "--password-stdin", stdin="new\n")
        == 0
    )
    server = make_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
        for password, status in (("old", 401), ("new", 200)):
            response = await client.post(
                "/api/auth/login", json={"username": "dana", "password": password}
            )
            assert response.status_code == status


@pytest.mark.redis
async def test_users_passwd_revokes_sessions_on_every_node(
    settings: Settings,
    make_server: Callable[..., ServerThread],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The CLI is not a node: it tells the running nodes through the broker, as a logout
    does, and their sockets opened with the revoked sessions close with 4401."""
    require_service("Redis", "127.0.0.1", 6379)
    channel = f"tidings-test-{secrets.token_hex(4)}"
    server = make_server(broker_url=REDIS_URL, broker_channel=channel)
    monkeypatch.setenv("TIDINGS_BROKER_URL", REDIS_URL)
    monkeypatch.setenv("TIDINGS_BROKER_CHANNEL", channel)
    dana = await create_user(settings, "dana")

    def cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
        return run(settings, monkeypatch, capsys, *args, stdin=stdin)

    async with browser_session(server, dana) as browser:
        cookie = browser.cookies["tidings_session"]
        session_ws = await ws_connect(
            server, additional_headers={"Cookie": f"tidings_session={cookie}"}
        )
        token_ws = await connected(server, dana)
        code, out, _ = await asyncio.to_thread(
            cli, "users", "passwd", "dana", "--password-stdin", stdin="brand new pw\n"
        )
        assert code == 0 and "revoked 1 session" in out
        assert await closed_with(session_ws) == 4401
        assert (await browser.get("/api/auth/me")).status_code == 401
        await send(token_ws, {"type": "ping"})  # tokens stay without --revoke-tokens
        await recv_until(token_ws, lambda m: m["type"] == "pong")

        code, out, _ = await asyncio.to_thread(
            cli, "users", "passwd", "dana", "--password-stdin", "--revoke-tokens", stdin="x\n"
        )
        assert code == 0 and "1 API token" in out
        assert await closed_with(token_ws) == 4401


async def test_tokens_create_expires_in(
    settings: Settings,
    make_server: Callable[..., ServerThread],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = make_server()
    await create_user(settings, "dana")
    for bad in ("0", "-1", "soon", str(366 * 24 * 3600 + 1)):
        assert (
            run(settings, monkeypatch, capsys, "tokens", "create", "dana", "--expires-in", bad)[0]
            == 2
        ), bad
    code, out, _ = await asyncio.to_thread(
        run, settings, monkeypatch, capsys, "tokens", "create", "dana", "--expires-in", "1"
    )
    assert code == 0 and "expires" in out
    holder = TestUser("", "dana", "", out.split()[-1])
    async with httpx.AsyncClient(
        base_url=server.url,
        timeout=TIMEOUT,
        headers={"Authorization": f"Bearer {holder.token}"},
    ) as client:
        assert (await client.get("/api/auth/me")).status_code == 200
        async with asyncio.timeout(TIMEOUT):
            while (await client.get("/api/auth/me")).status_code != 401:
                await asyncio.sleep(0.05)


@pytest.mark.timeout(120)
async def test_first_start_creates_admin_and_prints_its_password(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    first = await serve(data_dir)
    try:
        line = await first.read_until("password:")
        password = line.split("password:", 1)[1].strip()
        assert len(password) >= 12
        await first.read_until("Uvicorn running on")
        async with httpx.AsyncClient(base_url=first.url, timeout=TIMEOUT) as client:
            login = await client.post(
                "/api/auth/login", json={"username": "admin", "password": password}
            )
            assert login.status_code == 200, login.text
            assert (await client.get("/api/auth/me")).json()["username"] == "admin"
            project = await client.post(
                "/api/projects", json={"name": "first"}, headers={"Origin": first.url}
            )
            assert project.status_code == 201
    finally:
        await first.stop()
    assert (data_dir / "tidings.db").is_file()

    # A second start finds the user and prints no new password.
    second = await serve(data_dir)
    try:
        await second.read_until("Uvicorn running on")
        async with httpx.AsyncClient(base_url=second.url, timeout=TIMEOUT) as client:
            login = await client.post(
                "/api/auth/login", json={"username": "admin", "password": password}
            )
            assert login.status_code == 200
    finally:
        output = await second.stop()
    assert "password:" not in output


@pytest.mark.timeout(120)
async def test_serve_does_not_believe_forwarded_headers_by_default(tmp_path: Path) -> None:
    """``tidings serve`` leaves forwarding headers to tidings (uvicorn would believe any
    X-Forwarded-For from 127.0.0.1): a client on this machine cannot pass for many
    addresses to dodge the per-address login limit."""
    node = await serve(tmp_path / "data", create_admin="false", login_max_address_failures="5")
    try:
        await node.read_until("Uvicorn running on")
        async with httpx.AsyncClient(base_url=node.url, timeout=TIMEOUT) as client:
            statuses = []
            for i in range(6):
                response = await client.post(
                    "/api/auth/login",
                    json={"username": f"user{i}", "password": "wrong"},
                    headers={"X-Forwarded-For": f"198.51.100.{i}"},
                )
                statuses.append(response.status_code)
        assert statuses == [401] * 5 + [429]
    finally:
        await node.stop()


def _interruptible() -> None:
    """In the child: Ctrl-C as a shell's foreground job gets it. A test run started in the
    background without job control ignores SIGINT, its children inherit that, and a Python
    started with SIGINT ignored never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.timeout(180)
async def test_listen_prints_events_across_a_server_restart(tmp_path: Path) -> None:
    """``tidings listen --json`` (URL and token from the environment) follows a project
    while its server restarts and another node takes an upload meanwhile: every event is
    printed once, in order."""
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, create_admin=False)
    db = Database(create_engine(settings.effective_database_url))
    await migrate(db.engine)  # the node starts after the user is made
    await db.dispose()
    dana = await create_user(settings, "dana")
    node = await serve(data_dir, create_admin="false")
    await node.read_until("Uvicorn running on")
    async with httpx.AsyncClient(
        base_url=node.url, headers={"Authorization": f"Bearer {dana.token}"}, timeout=TIMEOUT
    ) as http:
        pid = (await create_project(http))["id"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env |= {"TIDINGS_URL": node.url, "TIDINGS_TOKEN": dana.token, "PYTHONUNBUFFERED": "1"}
    listener = await asyncio.create_subprocess_exec(
        TIDINGS, "listen", "--project", pid, "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        preexec_fn=_interruptible,
    )  # fmt: skip
    assert listener.stdout is not None and listener.stderr is not None
    printed: list[dict[str, Any]] = []

    async def line_with(**fields: Any) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT * 3):
            while True:
                raw = await listener.stdout.readline()  # type: ignore[union-attr]
                assert raw, await listener.stderr.read()  # type: ignore[union-attr]
                printed.append(json.loads(raw))
                if all(printed[-1].get(k) == v for k, v in fields.items()):
                    return printed[-1]

    try:
        await line_with(type="subscribed", seq=1)
        async with api(node, dana) as http:
            assert (await upload(http, pid, "before.txt")).status_code == 201
        await line_with(type="file.uploaded", seq=2)

        await node.stop()
        other = ServerThread(settings)  # another node on the same database
        other.start()
        try:
            async with api(other, dana) as http:
                assert (await upload(http, pid, "during.txt")).status_code == 201
        finally:
            await other.stop_async()
        node = await serve(data_dir, int(node.url.rsplit(":", 1)[1]), create_admin="false")
        await node.read_until("Uvicorn running on")

        assert (await line_with(type="subscribed"))["recovered"] is True
        await line_with(type="file.uploaded", seq=3)
        async with api(node, dana) as http:
            assert (await upload(http, pid, "after.txt")).status_code == 201
        await line_with(type="file.uploaded", seq=4)
        listener.send_signal(signal.SIGINT)
        # Its close handshake and exit, on a machine that may be busy with other work.
        assert await asyncio.wait_for(listener.wait(), TIMEOUT * 3) == 130
        assert b"Traceback" not in await listener.stderr.read()
    finally:
        if listener.returncode is None:
            listener.kill()
            await listener.wait()
        await node.stop()
    uploads = [(m["file"]["name"], m["seq"]) for m in printed if m["type"] == "file.uploaded"]
    assert uploads == [("before.txt", 2), ("during.txt", 3), ("after.txt", 4)]
    assert [m["type"] for m in printed].count("connection.established") == 2


def test_listen_needs_a_url_a_token_and_a_project_id(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TIDINGS_URL", raising=False)
    monkeypatch.delenv("TIDINGS_TOKEN", raising=False)
    for args, complaint in (
        (["--project", "p"], "--url or TIDINGS_URL"),
        (["--url", "http://h", "--project", "p"], "--token or TIDINGS_TOKEN"),
        (["--url", "http://h", "--token", "t", "--project", "a/b"], "project_id must be"),
        (["--url", "http://h", "--token", "t", "--project", "p", "--since", "-1"], "0 or more"),
        (["--url", "http://h", "--token", "t"], "--project"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["listen", *args])
        assert exit_.value.code == 2
        assert complaint in capsys.readouterr().err
