"""The servers under test: how each starts (pinned to its core), and what it costs.

Every run gets a fresh server process on a fresh port, so no run inherits another's
memory or connections. CPU time and memory are read from ``/proc``: the same instrument
for Python and Node.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
TIDINGS_CLI = str(Path(PYTHON).with_name("tidings"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REDIS_URL = os.environ.get("TIDINGS_BENCH_REDIS", "redis://127.0.0.1:6379/0")
# PostgreSQL for the `tidings-pg` variant: an admin DSN of a server where databases may be
# created (each run gets a copy of a template database holding the bench user).
PG_ADMIN = os.environ.get("TIDINGS_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True)
class Variant:
    """A server and the way its clients talk to it."""

    name: str
    label: str
    server: str  # "tidings" (with the bench hooks), "tidings-serve", "naive" or "node"
    args: tuple[str, ...] = ()
    subprotocols: tuple[str, ...] = ()
    postgres: bool = False  # tidings on PostgreSQL rather than SQLite


VARIANTS = {
    v.name: v
    for v in (
        Variant("tidings", "tidings", "tidings"),
        Variant("tidings-pg", "tidings, PostgreSQL", "tidings", postgres=True),
        Variant(
            "tidings-batch",
            "tidings, batch subprotocol",
            "tidings",
            subprotocols=("tidings.batch.v1",),
        ),
        Variant("tidings-asgi", "tidings, plain ASGI sends", "tidings", args=("--plain-asgi",)),
        Variant("tidings-pg", "tidings, PostgreSQL", "tidings", postgres=True),
        Variant("tidings-2w", "tidings serve --workers 2, Redis", "tidings-serve"),
        Variant("naive", "naive (story)", "naive"),
        Variant("naive-queued", "naive + per-client queues", "naive", args=("--queued",)),
        Variant("node", "Node ws", "node"),
    )
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TidingsAccount:
    """One data directory with user ``bench`` and an API token, made once with the real CLI
    and copied for every tidings server (an argon2 hash and a migration cost seconds)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
        self.template = self.root / "template"
        env = {**os.environ, "TIDINGS_DATA_DIR": str(self.template)}
        self.password = "bench-password"
        self.token = _bench_user(env, self.password)
        self._copies = 0
        self._pg_template: str | None = None
        self.pg_token = ""
        self._pg_databases: list[str] = []

    def data_dir(self) -> Path:
        self._copies += 1
        copy = self.root / f"run{self._copies}"
        shutil.copytree(self.template, copy)
        return copy

    def postgres_url(self) -> str:
        """A fresh PostgreSQL database holding the bench user and its token
        (:attr:`pg_token`): a copy of a template database made with the real CLI on first
        use."""
        if self._pg_template is None:
            name = f"tidings_bench_tpl_{os.getpid()}"
            _pg_admin(f'CREATE DATABASE "{name}"')
            self._pg_databases.append(name)
            env = {
                **os.environ,
                "TIDINGS_DATA_DIR": str(self.root / "pg-template"),
                "TIDINGS_DATABASE_URL": _pg_url(name),
            }
            self.pg_token = _bench_user(env, self.password)
            self._pg_template = name
        self._copies += 1
        name = f"tidings_bench_{os.getpid()}_{self._copies}"
        _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{self._pg_template}"')
        self._pg_databases.append(name)
        return _pg_url(name)

    def drop(self, database_url: str) -> None:
        name = database_url.rsplit("/", 1)[1]
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self._pg_databases:
            self._pg_databases.remove(name)

    def cleanup(self) -> None:
        for name in reversed(self._pg_databases):
            _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(self.root, ignore_errors=True)


def _bench_user(env: dict[str, str], password: str) -> str:
    """Make user ``bench`` with the real CLI in the database ``env`` names; its API token."""
    subprocess.run(
        [TIDINGS_CLI, "users", "create", "bench", "--password-stdin"],
        input=password + "\n",
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    out = subprocess.run(
        [TIDINGS_CLI, "tokens", "create", "bench"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[-1]


def _pg_url(name: str) -> str:
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{name}"


def _pg_admin(sql: str) -> None:
    import asyncio

    import asyncpg  # type: ignore[import-untyped]

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@dataclass
class Server:
    variant: Variant
    process: subprocess.Popen[bytes]
    port: int
    project_id: str = "bench"
    token: str | None = None
    data_dir: Path | None = None
    database_url: str | None = None
    account: TidingsAccount | None = None
    argv: list[str] = field(default_factory=list)  # how it was started: to start it again
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    _cpu_mark: float = field(default=0.0, init=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def processes(self) -> list[int]:
        """The server's process and its descendants (uvicorn's workers)."""
        pids = [self.pid]
        for pid in pids:
            for task in Path(f"/proc/{pid}/task").iterdir():
                pids.extend(int(child) for child in (task / "children").read_text().split())
        return pids

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.processes())

    def _status_kib(self, key: str) -> int:
        total = 0
        for pid in self.processes():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        return total

    def rss_kib(self) -> int:
        return self._status_kib("VmRSS")

    def peak_rss_kib(self) -> int:
        """Peak RSS since :meth:`reset_peak` (summed over processes: an upper bound)."""
        return self._status_kib("VmHWM")

    def reset_peak(self) -> None:
        for pid in self.processes():
            Path(f"/proc/{pid}/clear_refs").write_text("5")

    def target(self) -> dict[str, object]:
        """What the load generator needs to reach this server."""
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "project_id": self.project_id,
            "token": self.token,
            "subprotocols": list(self.variant.subprotocols),
        }

    def halt(self, timeout: float = 5.0) -> None:
        """SIGTERM, as a deploy stops a node; killed if it is not gone within ``timeout``
        s (a server stuck on a stalled client may not stop). Its data stays."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def relaunch(self) -> None:
        """Start the server again as it was started (same port, same data), after
        :meth:`halt`, and wait until it answers."""
        assert self.process.poll() is not None, "halt() it first"
        assert self.log is not None
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, cwd=BENCH, env=self.env
            )
        _wait_healthy(self)

    def stop(self) -> None:
        self.halt()
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.database_url is not None and self.account is not None:
            self.account.drop(self.database_url)

    def login(self, password: str) -> str:
        """A session cookie of the bench user (one argon2 check)."""
        response = httpx.post(
            f"http://127.0.0.1:{self.port}/api/auth/login",
            json={"username": "bench", "password": password},
        )
        response.raise_for_status()
        return response.cookies["tidings_session"]


def start(variant: Variant, account: TidingsAccount, cpu: str, heartbeat: float = 30.0) -> Server:
    """Start ``variant`` pinned to ``cpu`` and wait until it answers; tidings also gets a
    project, created over REST by the bench user."""
    port = free_port()
    data_dir: Path | None = None
    database_url: str | None = None
    # Every bench client is the one bench user: lift the per-user cap on connections.
    env = {**os.environ, "TIDINGS_WS_MAX_CONNECTIONS_PER_USER": "1000000"}
    if variant.server == "tidings":
        data_dir = account.data_dir()
        argv = [PYTHON, str(BENCH / "tidings_app.py"), str(port), "--data-dir", str(data_dir)]
        argv += ["--heartbeat", str(heartbeat)]
        if variant.postgres:
            database_url = account.postgres_url()
            env["TIDINGS_DATABASE_URL"] = database_url
    elif variant.server == "tidings-serve":  # the real command, as a node is deployed
        data_dir = account.data_dir()
        argv = [TIDINGS_CLI, "serve", "--port", str(port), "--workers", "2"]
        argv += ["--data-dir", str(data_dir), "--broker-url", REDIS_URL, "--log-level", "warning"]
        env |= {
            "TIDINGS_HEARTBEAT_INTERVAL": str(heartbeat),
            "TIDINGS_BROKER_CHANNEL": f"tidings-bench-{port}",
        }
    elif variant.server == "naive":
        argv = [PYTHON, str(BENCH / "naive_app.py"), str(port), "--heartbeat", str(heartbeat)]
    else:
        argv = ["node", str(BENCH / "node" / "server.js"), str(port), str(heartbeat)]
    log = account.root / f"{variant.name}-{port}.log"  # the server's own output, if needed
    argv = ["taskset", "-c", cpu, *argv, *variant.args]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=BENCH, env=env)
    server = Server(
        variant,
        process,
        port,
        data_dir=data_dir,
        database_url=database_url,
        account=account,
        argv=argv,
        env=env,
        log=log,
    )
    try:
        _wait_healthy(server)
    except RuntimeError:
        server.stop()
        raise
    base = f"http://127.0.0.1:{port}"
    if variant.server.startswith("tidings"):
        server.token = account.pg_token if variant.postgres else account.token
        response = httpx.post(
            f"{base}/api/projects",
            json={"name": "bench"},
            headers={"Authorization": f"Bearer {server.token}"},
        )
        response.raise_for_status()
        server.project_id = response.json()["id"]
    return server


def _wait_healthy(server: Server) -> None:
    """Until ``/healthz`` answers 200; raises if the process exits or a minute passes."""
    process, name = server.process, server.variant.name
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            tail = server.log.read_text(errors="replace")[-2000:] if server.log else ""
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")
        try:
            if httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.05)
    if server.variant.server == "tidings-serve":
        time.sleep(2)  # /healthz answered from one worker: let the other finish starting


def cpu_seconds(pids: Iterable[int]) -> float:
    """The CPU time (user + system) the processes ``pids`` have used so far."""
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
    return total
