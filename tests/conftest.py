"""Shared fixtures: a real uvicorn server on a loopback port, real databases, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection

from tidings import Settings, create_app
from tidings.db import Database, create_engine, migrate
from tidings.models import ApiToken, Project, User
from tidings.security import TOKEN_PREFIX, hash_password, hash_secret, new_secret
from tidings.server import uvicorn_options

T = TypeVar("T")

# One time unit for timing-sensitive waits; raise TIDINGS_TEST_TIME_FACTOR on slow machines.
MS = 0.001 * float(os.environ.get("TIDINGS_TEST_TIME_FACTOR", "1"))
TIMEOUT = 10_000 * MS  # generous: a slow machine must never fail a test by being slow

PG_ADMIN_DSN = os.environ.get("TIDINGS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TIDINGS_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip when a server is absent, except under CI=true where that is a failure."""
    if _reachable(host, port):
        return
    if IN_CI:
        pytest.fail(f"{name} is not running on {host}:{port} (CI=true requires it)")
    pytest.skip(f"{name} is not running on {host}:{port}")


# -- databases ---------------------------------------------------------------------------


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class PrivateRedis:
    """A throw-away ``redis-server`` on a free loopback port (never the machine's own)."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert self.proc.poll() is None, "redis-server exited"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT).close()
                return
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(10 * MS)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung server)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # a crash, not a shutdown: clients see their connections drop
            self.proc.wait(TIMEOUT)
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        if IN_CI:
            pytest.fail("redis-server is not installed (CI=true requires it)")
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(binary, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


# -- the backend matrix ------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    """The database and broker one run of a test uses."""

    database: str  # "sqlite" | "postgres"
    broker: str  # "memory" | "redis"

    @property
    def id(self) -> str:
        return f"{self.database}-{self.broker}"


SQLITE_MEMORY = Stack("sqlite", "memory")
POSTGRES_REDIS = Stack("postgres", "redis")
STACKS = [
    pytest.param(SQLITE_MEMORY, id=SQLITE_MEMORY.id),
    pytest.param(
        POSTGRES_REDIS, id=POSTGRES_REDIS.id, marks=[pytest.mark.postgres, pytest.mark.redis]
    ),
]


@pytest.fixture(params=STACKS)
def stack(request: pytest.FixtureRequest) -> Stack:
    """The backend matrix: every test that reaches a database or a server runs once per stack.

    ``database_url``, ``settings``, ``server``, ``make_server`` (and so ``alice``,
    ``alice_api`` …) depend on it, so a test gets the matrix by using any of them; it never
    names ``stack`` unless it must know which one it runs on. Restrict a test that only
    makes sense on some stacks with :func:`on_stacks`.
    """
    current: Stack = request.param
    if current.database == "postgres":
        require_service("PostgreSQL", "127.0.0.1", 5432)
    if current.broker == "redis":
        require_service("Redis", "127.0.0.1", 6379)
    return current


def on_stacks(*ids: str) -> pytest.MarkDecorator:
    """Run a test (or, as ``pytestmark``, a module) on the named stacks only.

    ``@on_stacks("postgres-redis")`` for what needs PostgreSQL or Redis itself;
    ``@on_stacks("sqlite-memory")`` for a server test that touches neither storage nor
    broker (static files, request validation), which would only run twice for nothing.
    """
    chosen = [param for param in STACKS if param.id in ids]
    assert len(chosen) == len(ids), f"unknown stack in {ids}"
    return pytest.mark.parametrize("stack", chosen, indirect=True)


def _pg_url(name: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"


async def _migrated(url: str) -> None:
    db = Database(create_engine(url))
    try:
        await migrate(db.engine)
    finally:
        await db.dispose()


class Templates:
    """Databases with the newest schema, made once per test run on first use: a test's
    database is a copy (a file copy for SQLite, ``CREATE DATABASE … TEMPLATE`` for
    PostgreSQL), which costs far less than running every migration again for each test."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._sqlite: Path | None = None
        self._postgres: str | None = None

    def sqlite(self) -> Path:
        if self._sqlite is None:
            path = self.folder / "template.db"
            asyncio.run(_migrated(f"sqlite+aiosqlite:///{path}"))
            self._sqlite = path
        return self._sqlite

    def postgres(self) -> str:
        if self._postgres is None:
            name = f"tidings_t_template_{secrets.token_hex(6)}"
            asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
            asyncio.run(_migrated(_pg_url(name)))
            self._postgres = name
        return self._postgres

    def drop(self) -> None:
        if self._postgres is not None:
            asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{self._postgres}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Templates]:
    made = Templates(tmp_path_factory.mktemp("templates"))
    try:
        yield made
    finally:
        made.drop()


@contextlib.contextmanager
def _pg_database(template: str | None = None) -> Iterator[str]:
    """A database of the test's own, dropped after it."""
    name = f"tidings_t_{secrets.token_hex(6)}"
    copy = f' TEMPLATE "{template}"' if template else ""
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"{copy}'))
    try:
        yield _pg_url(name)
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def database_url(stack: Stack, tmp_path: Path, templates: Templates) -> Iterator[str]:
    """A fresh database of the stack's kind with the newest schema and no rows
    (PostgreSQL: one per test, dropped after)."""
    if stack.database == "sqlite":
        path = tmp_path / "tidings.db"
        shutil.copyfile(templates.sqlite(), path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    with _pg_database(templates.postgres()) as url:
        yield url


@pytest.fixture
def empty_database_url(stack: Stack, tmp_path: Path) -> Iterator[str]:
    """A fresh database of the stack's kind without any table: for the migrations' own tests."""
    if stack.database == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    with _pg_database() as url:
        yield url


@pytest.fixture
def settings(tmp_path: Path, stack: Stack, database_url: str) -> Settings:
    """A server's settings on the test's stack; with Redis, a channel of the test's own
    (the machine's Redis is shared), which every server of the test shares."""
    broker: dict[str, str] = {}
    if stack.broker == "redis":
        broker = {
            "broker_url": REDIS_URL,
            "broker_channel": f"tidings-test-{secrets.token_hex(6)}",
        }
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        create_admin=False,
        heartbeat_interval=30,
        login_max_failures=5,
        **broker,
    )


# -- the server --------------------------------------------------------------------------


class ServerThread:
    """uvicorn serving ``create_app(settings)`` in a thread; stop and start it at will."""

    def __init__(self, settings: Settings, **uvicorn_changes: Any) -> None:
        self.settings = settings
        self.uvicorn_changes = uvicorn_changes  # e.g. ws=... for another WebSocket protocol
        self.port = 0  # chosen by the kernel at the first start, kept across restarts
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> None:
        # Bind here, not in uvicorn: no window in which another process can take the port.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            **(uvicorn_options(self.settings) | self.uvicorn_changes),
        )
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._run, args=(config, sock), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(10 * MS)

    def _run(self, config: uvicorn.Config, sock: socket.socket) -> None:
        assert self._server is not None
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            self._loop = runner.get_loop()
            runner.run(self._server.serve(sockets=[sock]))

    async def run_in_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's own event loop (the server runs in a thread)."""
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(TIMEOUT)
            assert not self._thread.is_alive(), "server did not stop"
        self._server = None
        self._thread = None

    async def stop_async(self) -> None:
        """:meth:`stop` from a test's event loop: the test's own clients keep running
        meanwhile, so they answer the server's closing handshake (a shutdown waits for it,
        up to the close timeout)."""
        await asyncio.to_thread(self.stop)

    @property
    def asgi_tasks(self) -> set[Any]:
        """uvicorn's running ASGI tasks: one per request or attached WebSocket."""
        assert self._server is not None
        return self._server.server_state.tasks

    @property
    def services(self) -> Any:
        """The running app's services (hub, event log …), for white-box assertions."""
        app = self._server.config.app if self._server else None
        return app.state.services  # type: ignore[union-attr]


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[ServerThread]:
    srv = ServerThread(settings)
    srv.start()
    try:
        yield srv
    finally:
        await srv.stop_async()


@pytest.fixture
async def make_server(settings: Settings) -> AsyncIterator[Callable[..., ServerThread]]:
    """Build servers with changed settings: ``make_server(heartbeat_interval=1)``."""
    started: list[ServerThread] = []

    def make(**changes: Any) -> ServerThread:
        srv = ServerThread(settings.model_copy(update=changes))
        srv.start()
        started.append(srv)
        return srv

    try:
        yield make
    finally:
        for srv in started:
            await srv.stop_async()


# -- users and clients -------------------------------------------------------------------


@dataclass
class TestUser:
    __test__ = False
    id: str
    username: str
    password: str
    token: str


# Every test user of a run has this password: one argon2 hash (a tenth of a second or
# more of CPU by design) for the whole run instead of one per user.
PASSWORD = secrets.token_urlsafe(12)


@functools.cache
def _password_hash() -> str:
    return hash_password(PASSWORD)


async def create_user(settings: Settings, username: str | None = None) -> TestUser:
    username = username or f"user_{secrets.token_hex(4)}"
    password = PASSWORD
    token = new_secret(TOKEN_PREFIX)
    db = Database(create_engine(settings.effective_database_url))
    try:
        async with db.write() as session:  # the schema is there: see `database_url`
            user = User(username=username, password_hash=_password_hash())
            session.add(user)
            await session.flush()
            session.add(ApiToken(secret_hash=hash_secret(token), user_id=user.id, name="test"))
    finally:
        await db.dispose()
    return TestUser(user.id, username, password, token)


@pytest.fixture
async def alice(server: ServerThread) -> TestUser:
    return await create_user(server.settings, "alice")


@pytest.fixture
async def bob(server: ServerThread) -> TestUser:
    return await create_user(server.settings, "bob")


def api(server: ServerThread, user: TestUser | None = None, **kwargs: Any) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {user.token}"} if user else {}
    return httpx.AsyncClient(base_url=server.url, headers=headers, timeout=TIMEOUT, **kwargs)


@pytest.fixture
async def alice_api(server: ServerThread, alice: TestUser) -> AsyncIterator[httpx.AsyncClient]:
    async with api(server, alice) as client:
        yield client


@pytest.fixture
async def bob_api(server: ServerThread, bob: TestUser) -> AsyncIterator[httpx.AsyncClient]:
    async with api(server, bob) as client:
        yield client


@contextlib.asynccontextmanager
async def browser_session(
    server: ServerThread, user: TestUser, **kwargs: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client logged in with a session cookie, sending the server's own ``Origin`` as a
    browser on the dashboard does (cookie requests that change state need it)."""
    headers = {"Origin": server.url} | kwargs.pop("headers", {})
    async with httpx.AsyncClient(
        base_url=server.url, headers=headers, timeout=TIMEOUT, **kwargs
    ) as client:
        response = await client.post(
            "/api/auth/login", json={"username": user.username, "password": user.password}
        )
        assert response.status_code == 200, response.text
        yield client


async def create_project(client: httpx.AsyncClient, name: str = "demo") -> dict[str, Any]:
    response = await client.post("/api/projects", json={"name": name})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def upload(
    client: httpx.AsyncClient,
    project_id: str,
    name: str = "a.txt",
    content: bytes = b"hello",
    path: str | None = None,
    content_type: str = "text/plain",
) -> httpx.Response:
    data = {"path": path} if path is not None else None
    return await client.post(
        f"/api/projects/{project_id}/files",
        files={"file": (name, content, content_type)},
        data=data,
    )


# -- WebSocket helpers -------------------------------------------------------------------


_open_sockets: list[ClientConnection] = []


@pytest.fixture(autouse=True)
async def _close_client_sockets() -> AsyncIterator[None]:
    """Close every client WebSocket a test opened, even when it failed half-way."""
    yield
    while _open_sockets:
        ws = _open_sockets.pop()
        with contextlib.suppress(Exception):
            if not ws.transport.is_reading():
                ws.transport.resume_reading()
            await asyncio.wait_for(ws.close(), 1.0)
        ws.transport.abort()


async def ws_connect(
    server: ServerThread, user: TestUser | None = None, **kwargs: Any
) -> ClientConnection:
    headers = kwargs.pop("additional_headers", {})
    if user is not None:
        headers["Authorization"] = f"Bearer {user.token}"
    # Unbounded client-side queue: a test that leaves messages unread must still be able
    # to complete a closing handshake quickly.
    kwargs.setdefault("max_queue", None)
    ws = await websockets.connect(
        server.ws_url, additional_headers=headers, open_timeout=TIMEOUT, **kwargs
    )
    _open_sockets.append(ws)
    return ws


async def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    message = orjson.loads(raw)
    assert isinstance(message, dict), message
    return message


async def recv_until(
    ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
) -> dict[str, Any]:
    """Read until a message matches (skipping heartbeats and others); fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        message = await recv(ws, max(0.0, deadline - time.monotonic()))
        if predicate(message):
            return message


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(message).decode())


async def connected(server: ServerThread, user: TestUser, **kwargs: Any) -> ClientConnection:
    ws = await ws_connect(server, user, **kwargs)
    hello = await recv(ws)
    assert hello["type"] == "connection.established"
    return ws


async def subscribe(
    ws: ClientConnection, project_id: str, since: int | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "subscribe", "project_id": project_id}
    if since is not None:
        message["since"] = since
    await send(ws, message)
    return await recv_until(ws, lambda m: m["type"] in ("subscribed", "error"))


async def closed_with(ws: ClientConnection, timeout: float = TIMEOUT) -> int | None:
    """Wait for the server to close ``ws``; return its close code."""
    try:
        async with asyncio.timeout(timeout):
            async for _ in ws:
                pass
    except websockets.ConnectionClosed:
        pass
    await asyncio.wait_for(ws.wait_closed(), timeout)
    return ws.close_code


async def eventually(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll server-side state that no message announces (a connection being released)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(20 * MS)


# -- REST helpers: look behind the API at the database and the disk ----------------------


@pytest.fixture
async def log_db(database_url: str) -> AsyncIterator[tuple[Database, str, str]]:
    """A migrated database of the matrix with one user and their project, for tests
    of the event log and what reads it: ``(db, project_id, owner_id)``."""
    db = Database(create_engine(database_url))
    await migrate(db.engine)
    async with db.write() as session:
        user = User(username="owner", password_hash="x")
        session.add(user)
        await session.flush()
        project = Project(name="p", owner_id=user.id, last_seq=0)
        session.add(project)
    try:
        yield db, project.id, user.id
    finally:
        await db.dispose()


async def db_scalars(settings: Settings, statement: Any) -> list[Any]:
    """Run one SELECT against the server's database from the test's own event loop."""
    db = Database(create_engine(settings.effective_database_url))
    try:
        async with db.read() as session:
            return list(await session.scalars(statement))
    finally:
        await db.dispose()


def stored_files(settings: Settings) -> list[Path]:
    """Every regular file under the storage root, the temp dir included."""
    root = settings.files_dir
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# -- `tidings serve` in a subprocess ----------------------------------------------------

TIDINGS = str(Path(sys.executable).with_name("tidings"))


class Serve:
    """``tidings serve`` in a subprocess; its output collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url
        self.lines: list[str] = []

    async def read_until(self, needle: str) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(TIMEOUT * 3):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"{needle!r} never printed:\n" + "".join(self.lines))
                line = raw.decode()
                self.lines.append(line)
                if needle in line:
                    return line

    async def stop(self) -> str:
        if self.proc.returncode is None:
            self.proc.terminate()
        out, _ = await asyncio.wait_for(self.proc.communicate(), TIMEOUT * 3)
        return "".join(self.lines) + out.decode()


def free_port() -> int:
    """A port for a server in another process (which cannot take a bound socket from us)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(data_dir: Path, port: int | None = None, **settings: str) -> Serve:
    """Start ``tidings serve`` (on ``port``, else a free one) with ``TIDINGS_*`` settings
    from keywords."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env["TIDINGS_DATA_DIR"] = str(data_dir)
    env.update({f"TIDINGS_{key.upper()}": value for key, value in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    proc = await asyncio.create_subprocess_exec(
        TIDINGS,
        "serve",
        "--port",
        str(port),
        "--log-level",
        "info",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    return Serve(proc, f"http://127.0.0.1:{port}")


def credential_headers(token: str | None = None, cookie: str | None = None) -> dict[str, str]:
    """The headers of a request with this bearer token or session cookie."""
    if token is not None:
        return {"Authorization": f"Bearer {token}"}
    assert cookie is not None
    return {"Cookie": f"tidings_session={cookie}"}


async def accepted(
    server: ServerThread, *, token: str | None = None, cookie: str | None = None
) -> None:
    """A request and a /ws connect with the credential are let in (and so it is cached)."""
    headers = credential_headers(token, cookie)
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=TIMEOUT) as client:
        response = await client.get("/api/auth/me")
        assert response.status_code == 200, response.text
    ws = await ws_connect(server, additional_headers=headers)
    assert (await recv(ws))["type"] == "connection.established"
    await ws.close()


async def refused(
    server: ServerThread, *, token: str | None = None, cookie: str | None = None
) -> None:
    """The next request and the next /ws connect with the credential are refused."""
    headers = credential_headers(token, cookie)
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=TIMEOUT) as client:
        assert (await client.get("/api/auth/me")).status_code == 401
    ws = await ws_connect(server, additional_headers=headers)
    assert await closed_with(ws) == 4401
