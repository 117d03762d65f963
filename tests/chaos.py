"""The chaos suite: exactly-once delivery counted under many faults at once.

It starts everything it breaks itself, on free loopback ports: its own ``redis-server``,
its own PostgreSQL cluster (``initdb`` in a temporary folder, run as the ``postgres``
user when started as root) and two ``tidings serve`` nodes on them. Writers make random
REST changes on many projects (project edits, members added and removed, files uploaded
and deleted, external processes started, reporting progress and completed, durable
custom events); clients (the Python client and raw ``websockets`` clients) subscribe to
several projects on either node and keep reading normally, dropping their TCP connection
without a close frame, stalling until they are closed with 4008, or hopping to the other
node with ``since``. Meanwhile faults come at random times: SIGTERM and SIGKILL of a node
(restarted at once), Redis killed and restarted, PostgreSQL stopped and restarted, a
member removed from a project while subscribed.

After the system settles it compares, for every client and every project it still sees,
the durable events it received across all its reconnects with the log read over REST:
lost, duplicated, out of order; every event a client ever received against the
membership history (leaked); every change answered 2xx against the log. It prints a
table and one JSON line of figures.

``python -m tests.chaos --fast`` is the variant ``make test`` runs (tests/test_chaos.py);
``python -m tests.chaos`` (``make soak``) is the full run. Every loop is bounded in count
and time, and every child process is killed on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from tidings.client import Backoff, SubscriptionError, TidingsClient, TidingsError, decode_frame

PG_BIN = Path(os.environ.get("TIDINGS_PG_BIN", "/usr/lib/postgresql/15/bin"))
TIDINGS = str(Path(sys.executable).with_name("tidings"))
FAULTS = ("sigterm", "sigkill", "redis", "postgres", "member_removed")
# Events committed this long after a fault began (or after it healed) count as "after a
# fault" for the delivery-time figure.
AFTER_FAULT = 10.0


@dataclass(frozen=True)
class Plan:
    """How big one run is; every bound of every loop comes from here."""

    name: str
    projects: int
    owners: int
    guests: int
    events: int  # durable events to commit, at least
    raw_clients: int
    python_clients: int
    writers: int
    fault_gap: tuple[float, float]  # seconds between faults
    # The writers go on past `events` until every kind of fault has struck this often: a
    # quiet machine commits the events in a minute, before the faults have had their turn.
    fault_rounds: int
    max_write_seconds: float  # the writers stop then even below `events`
    settle_seconds: float
    projects_per_client: tuple[int, int]
    episode_seconds: tuple[float, float]
    seed: int


FAST = Plan(
    name="fast",
    projects=20,
    owners=3,
    guests=3,
    events=1000,
    raw_clients=30,
    python_clients=10,
    writers=12,
    fault_gap=(3.0, 5.0),
    fault_rounds=1,
    max_write_seconds=50.0,
    settle_seconds=45.0,  # beyond the clients' longest back-off (30 s) after the last fault
    projects_per_client=(2, 4),
    episode_seconds=(1.0, 4.0),
    seed=1,
)
SOAK = Plan(
    name="soak",
    projects=24,
    owners=4,
    guests=4,
    events=10_000,
    raw_clients=170,
    python_clients=40,
    writers=16,
    fault_gap=(4.0, 9.0),
    fault_rounds=4,
    max_write_seconds=470.0,
    settle_seconds=60.0,
    projects_per_client=(2, 5),
    episode_seconds=(5.0, 20.0),  # 200 clients hopping every few seconds swamp 2 cores
    seed=2,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timestamp(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# -- child processes ---------------------------------------------------------------------


class Child:
    """One process this suite started; its output goes to a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, **kwargs: Any) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.kwargs = kwargs
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                **self.kwargs,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Send ``sig``; SIGKILL if it has not exited within ``timeout``."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.wait_for(proc.wait(), 10)

    def kill_now(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if await check():
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} not ready within {seconds} s")


class Redis:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(root)]
        self.child = Child("redis", argv, root / "redis.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _ping(self) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(b"PING\r\n")
            return (await asyncio.wait_for(reader.readline(), 1)).startswith(b"+PONG")
        finally:
            writer.close()

    async def start(self) -> None:
        await self.child.start()
        await until(self._ping, 15, "redis-server")

    async def crash(self) -> None:
        await self.child.stop(signal.SIGKILL)


class Postgres:
    """A PostgreSQL cluster of our own: initdb'd in ``root``, fsync off, loopback only."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.data = root / "pg"
        self.sockets = root / "pgsock"
        self.user = "postgres" if os.geteuid() == 0 else None  # initdb refuses root
        self.log = root / "postgres.log"
        argv = [str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        argv += ["-k", str(self.sockets), "-c", "listen_addresses=127.0.0.1"]
        for option in ("fsync=off", "synchronous_commit=off", "full_page_writes=off"):
            argv += ["-c", option]
        argv += ["-c", "max_connections=300"]
        self.child = Child("postgres", argv, self.log, user=self.user)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/tidings"

    async def init(self) -> None:
        for folder in (self.data, self.sockets):
            folder.mkdir(mode=0o700)
            if self.user is not None:
                shutil.chown(folder, self.user, self.user)
        initdb = Child(
            "initdb",
            [
                str(PG_BIN / "initdb"),
                *("-D", str(self.data), "-U", "postgres", "-A", "trust"),
                *("--no-sync", "-E", "UTF8"),
            ],
            self.log,
            user=self.user,
        )
        await initdb.start()
        assert initdb.proc is not None
        if await asyncio.wait_for(initdb.proc.wait(), 120) != 0:
            raise RuntimeError(f"initdb failed; see {self.log}")
        await self.start()
        await self._admin("CREATE DATABASE tidings")

    async def _admin(self, sql: str) -> None:
        import asyncpg  # type: ignore[import-untyped]

        conn = await asyncpg.connect(
            host="127.0.0.1", port=self.port, user="postgres", database="postgres"
        )
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def _ready(self) -> bool:
        await self._admin("SELECT 1")
        return True

    async def start(self) -> None:
        await self.child.start()
        await until(self._ready, 30, "postgres")

    async def stop(self) -> None:
        await self.child.stop(signal.SIGINT, 30)  # fast shutdown: clients are cut off


class Node:
    """``tidings serve`` in a subprocess."""

    def __init__(self, name: str, root: Path, env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        argv = [TIDINGS, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--log-level", "warning"]
        self.child = Child(name, argv, root / f"{name}.log", env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def _healthy(self) -> bool:
        async with httpx.AsyncClient(timeout=2) as http:
            return (await http.get(f"{self.url}/healthz")).status_code == 200

    async def start(self) -> None:
        await self.child.start()
        await until(self._healthy, 60, self.name)

    async def restart(self, sig: int) -> None:
        await self.child.stop(sig, 20)
        await self.start()


# -- what happened: the ledger of changes and membership ----------------------------------


@dataclass
class Project:
    id: str
    owner: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    members: set[int] = field(default_factory=set)  # guest user indexes
    files: list[str] = field(default_factory=list)
    processes: dict[str, str] = field(default_factory=dict)  # id -> worker token
    known_seq: int = 0  # the newest seq an answer has told


@dataclass
class User:
    index: int
    id: str
    username: str
    token: str
    guest: bool


@dataclass
class Ledger:
    changes: list[tuple[str, int, str]] = field(default_factory=list)  # project, seq, type
    unknown: int = 0  # requests whose outcome the writer could not learn
    unknown_why: Counter[str] = field(default_factory=Counter)
    retried: int = 0  # 503s and refused connections, retried
    refused: Counter[int] = field(default_factory=Counter)  # 4xx answers by status
    progress: int = 0  # ephemeral process.progress reports answered 204
    # (project, user) -> visible seq intervals [first, last]; last None = still a member
    visible: dict[tuple[str, str], list[list[int | None]]] = field(default_factory=dict)
    faults: Counter[str] = field(default_factory=Counter)
    fault_windows: list[tuple[float, float]] = field(default_factory=list)
    fault_seconds: dict[str, float] = field(default_factory=dict)  # longest, by kind
    ops: Counter[str] = field(default_factory=Counter)  # changes tried, by kind
    op_seconds: dict[str, float] = field(default_factory=dict)  # their total time

    def durable(self) -> int:
        return len(self.changes)

    def can_see(self, owners: dict[str, str], user_id: str, project_id: str, seq: int) -> bool:
        if owners.get(project_id) == user_id:
            return True
        for first, last in self.visible.get((project_id, user_id), []):
            assert first is not None
            if first <= seq and (last is None or seq <= last):
                return True
        return False

    def member_now(self, user_id: str, project_id: str) -> bool:
        """Whether the last member change answered made ``user_id`` a member."""
        intervals = self.visible.get((project_id, user_id))
        return bool(intervals) and intervals[-1][1] is None

    def member_during(
        self,
        user_id: str,
        project_id: str,
        start: float,
        end: float,
        committed: dict[tuple[str, int], float],
    ) -> bool:
        """Whether ``user_id`` was a member at some moment between the wall-clock times
        ``start`` and ``end`` (the commit times of the changes that added and removed them,
        from the log)."""
        for first, last in self.visible.get((project_id, user_id), []):
            assert first is not None
            added = committed.get((project_id, first), 0.0)
            removed = float("inf") if last is None else committed.get((project_id, last), 0.0)
            if added <= end and start <= removed:
                return True
        return False

    def after_fault(self, committed: float) -> bool:
        return any(start <= committed <= end + AFTER_FAULT for start, end in self.fault_windows)


class Unknown(Exception):
    """The request may or may not have been carried out (its connection broke)."""


# -- the writers --------------------------------------------------------------------------


class Writers:
    def __init__(
        self, plan: Plan, nodes: list[Node], users: list[User], ledger: Ledger, rng: random.Random
    ) -> None:
        self.plan = plan
        self.nodes = nodes
        self.users = users
        self.ledger = ledger
        self.rng = rng
        self.projects: list[Project] = []
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=3.0))
        # Set once every kind of fault has struck `plan.fault_rounds` times: the writers go
        # on until then, so that every fault hits a system under writes however fast.
        self.cycled = asyncio.Event()
        self.guests = [u for u in users if u.guest]
        self.committed_at: dict[tuple[str, int], float] = {}  # from the log's timestamps
        self.write_seconds = 0.0

    async def request(
        self, user_token: str, method: str, path: str, **kwargs: Any
    ) -> httpx.Response:
        """Send to either node, retrying what surely did not happen (refused connections,
        503) for up to 60 s; raise :class:`Unknown` when the outcome cannot be known."""
        headers = {"Authorization": f"Bearer {user_token}"} | kwargs.pop("headers", {})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            node = self.rng.choice(self.nodes)
            try:
                response = await self.http.request(
                    method, node.url + path, headers=headers, **kwargs
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
                self.ledger.retried += 1
                await asyncio.sleep(0.1)
                continue
            except httpx.TransportError as exc:
                self.ledger.unknown_why[type(exc).__name__] += 1
                raise Unknown(f"{method} {path}: {exc!r}") from exc
            if response.status_code == 503:
                self.ledger.retried += 1
                await asyncio.sleep(0.2)
                continue
            if response.status_code >= 500:
                self.ledger.unknown_why[str(response.status_code)] += 1
                raise Unknown(f"{method} {path}: {response.status_code} {response.text[:200]}")
            return response
        raise Unknown(f"{method} {path}: no node answered for 60 s")

    def owner(self, project: Project) -> User:
        return self.users[project.owner]

    def record(self, project: Project, response: httpx.Response, kind: str) -> int | None:
        if response.status_code >= 400:
            self.ledger.refused[response.status_code] += 1
            return None
        seq = int(response.headers["Tidings-Seq"])
        self.ledger.changes.append((project.id, seq, kind))
        project.known_seq = max(project.known_seq, seq)
        return seq

    async def create_projects(self) -> None:
        owners = [u for u in self.users if not u.guest]
        for n in range(self.plan.projects):
            owner = owners[n % len(owners)]
            response = await self.request(
                owner.token, "POST", "/api/projects", json={"name": f"chaos {n}"}
            )
            response.raise_for_status()
            project = Project(response.json()["id"], owner.index)
            self.projects.append(project)
            self.record(project, response, "project.created")
            for guest in self.guests:
                if self.rng.random() < 0.6:
                    await self.add_member(project, guest)

    # Each change holds its project's lock: the ledger's view of members, files and
    # processes is then exact, and a fault's member removal joins the queue.

    async def add_member(self, project: Project, guest: User) -> None:
        before = project.known_seq
        try:
            response = await self.request(
                self.owner(project).token,
                "POST",
                f"/api/projects/{project.id}/members",
                json={"username": guest.username},
            )
        except Unknown:
            await self.membership_unknown(project, guest, before)
            return
        seq = self.record(project, response, "project.updated")
        if seq is not None:
            project.members.add(guest.index)
            self.ledger.visible.setdefault((project.id, guest.id), []).append([seq, None])

    async def remove_member(self, project: Project, guest: User) -> None:
        before = project.known_seq
        try:
            response = await self.request(
                self.owner(project).token,
                "DELETE",
                f"/api/projects/{project.id}/members/{guest.username}",
            )
        except Unknown:
            await self.membership_unknown(project, guest, before)
            return
        seq = self.record(project, response, "project.updated")
        if seq is not None:
            project.members.discard(guest.index)
            self.ledger.visible[(project.id, guest.id)][-1][1] = seq

    async def membership_unknown(self, project: Project, guest: User, before: int) -> None:
        """A member change whose answer was lost: learn the outcome from the members list;
        its seq lies after ``before`` and at most at the project's seq read now, so the
        visible interval is widened to both ends (a leak inside it would go unnoticed)."""
        self.ledger.unknown += 1
        path = f"/api/projects/{project.id}"
        token = self.owner(project).token
        members = (await self.request(token, "GET", path + "/members")).json()
        head = int((await self.request(token, "GET", path)).json()["seq"])
        project.known_seq = max(project.known_seq, head)
        now_member = any(m["user_id"] == guest.id for m in members)
        intervals = self.ledger.visible.setdefault((project.id, guest.id), [])
        was_member = guest.index in project.members
        if now_member and not was_member:
            project.members.add(guest.index)
            intervals.append([before + 1, None])
        elif was_member and not now_member:
            project.members.discard(guest.index)
            intervals[-1][1] = head

    async def change(self, project: Project) -> None:
        owner = self.owner(project)
        base = f"/api/projects/{project.id}"
        rng = self.rng
        choices = ["patch", "upload", "custom", "process"]
        if project.files:
            choices.append("delete_file")
        if project.processes:
            choices += ["progress", "progress", "complete"]
        if self.guests:
            choices.append("member")
        op = rng.choice(choices)
        began = time.monotonic()
        try:
            if op == "patch":
                body = {"description": secrets.token_hex(rng.randint(4, 64))}
                self.record(
                    project,
                    await self.request(owner.token, "PATCH", base, json=body),
                    "project.updated",
                )
            elif op == "upload":
                name = f"{secrets.token_hex(6)}.txt"
                content = secrets.token_bytes(rng.randint(1, 2048))
                response = await self.request(
                    owner.token,
                    "POST",
                    base + "/files",
                    files={"file": (name, content, "text/plain")},
                )
                if self.record(project, response, "file.uploaded") is not None:
                    project.files.append(response.json()["id"])
            elif op == "delete_file":
                file_id = project.files.pop(rng.randrange(len(project.files)))
                response = await self.request(owner.token, "DELETE", f"{base}/files/{file_id}")
                self.record(project, response, "file.deleted")
            elif op == "custom":
                key = secrets.token_hex(16)
                event = {"type": "custom.chaos", "data": {"n": rng.randint(0, 10**9)}}
                response = await self.request(
                    owner.token,
                    "POST",
                    base + "/events",
                    json=event,
                    headers={"Idempotency-Key": key},
                )
                self.record(project, response, "custom.chaos")
            elif op == "process":
                if len(project.processes) >= 4:
                    return
                response = await self.request(
                    owner.token,
                    "POST",
                    base + "/processes",
                    json={"kind": "external", "params": {}},
                )
                if self.record(project, response, "process.started") is not None:
                    answer = response.json()
                    project.processes[answer["id"]] = answer["worker_token"]
            elif op == "progress":
                process_id, token = rng.choice(list(project.processes.items()))
                response = await self.request(
                    token,
                    "POST",
                    f"{base}/processes/{process_id}/progress",
                    json={"progress": rng.random()},
                )
                if response.status_code == 204:
                    self.ledger.progress += 1
                else:
                    self.ledger.refused[response.status_code] += 1
            elif op == "complete":
                process_id, token = rng.choice(list(project.processes.items()))
                del project.processes[process_id]
                response = await self.request(
                    token,
                    "POST",
                    f"{base}/processes/{process_id}/complete",
                    json={"status": rng.choice(["succeeded", "failed"]), "result": {"ok": 1}},
                )
                self.record(project, response, "process.completed")
            else:
                guest = rng.choice(self.guests)
                if guest.index in project.members:
                    await self.remove_member(project, guest)
                else:
                    await self.add_member(project, guest)
        except Unknown:
            self.ledger.unknown += 1
        self.ledger.op_seconds[op] = self.ledger.op_seconds.get(op, 0.0) + time.monotonic() - began
        self.ledger.ops[op] += 1

    async def writer(self, stop: asyncio.Event, deadline: float) -> None:
        for _ in range(self.plan.events * 4):  # bounded even if every change is refused
            if stop.is_set() or time.monotonic() > deadline:
                return
            if self.ledger.durable() >= self.plan.events and self.cycled.is_set():
                return
            project = self.rng.choice(self.projects)
            async with project.lock:
                await self.change(project)

    async def remove_a_watched_member(self, watched: set[tuple[str, str]]) -> bool:
        """The fault: a guest removed from a project one of their clients watches."""
        pairs = [
            (p, g)
            for p in self.projects
            for g in self.guests
            if g.index in p.members and (p.id, g.id) in watched
        ]
        if not pairs:
            return False
        project, guest = self.rng.choice(pairs)
        async with project.lock:
            if guest.index in project.members:
                await self.remove_member(project, guest)
        return True

    async def read_log(self) -> dict[str, list[tuple[int, str]]]:
        """Every project's whole log over REST, paged."""
        logs: dict[str, list[tuple[int, str]]] = {}
        for project in self.projects:
            events: list[tuple[int, str]] = []
            after = 0
            for _ in range(10_000):
                response = await self.request(
                    self.owner(project).token,
                    "GET",
                    f"/api/projects/{project.id}/events",
                    params={"after": after, "limit": 1000},
                )
                response.raise_for_status()
                page = response.json()["events"]
                if not page:
                    break
                events += [(e["seq"], e["type"]) for e in page]
                for e in page:
                    self.committed_at[(project.id, e["seq"])] = timestamp(e["timestamp"]) or 0.0
                after = page[-1]["seq"]
            logs[project.id] = events
        return logs


# -- the clients --------------------------------------------------------------------------


@dataclass
class Watch:
    """One client's record of one project."""

    first_since: int | None = None  # the position its first subscription started from
    received: list[int] = field(default_factory=list)  # durable seqs from the stream
    ended: str | None = None  # why the subscription ended (access revoked, not found)
    # When the subscribe now waiting was sent (a resubscribe the Python client makes by
    # itself: after the previous reply), and, for the stream now open, from when it was
    # asked for until it was answered: the node decided the user's access in between.
    asked: float | None = None
    window: tuple[float, float] = (0.0, 0.0)
    windows: dict[int, tuple[float, float]] = field(default_factory=dict)  # by seq received

    @property
    def last(self) -> int | None:
        return max(self.received[-1], self.first_since or 0) if self.received else self.first_since


@dataclass
class Figures:
    max_latency: float = 0.0
    max_latency_after_fault: float = 0.0
    deliveries: int = 0


class Client:
    """A client that subscribes to some projects and changes behaviour every episode."""

    BEHAVIOURS = ("read", "read", "drop", "stall", "hop")

    def __init__(
        self,
        number: int,
        kind: str,
        user: User,
        projects: list[str],
        nodes: list[Node],
        plan: Plan,
        ledger: Ledger,
        figures: Figures,
    ) -> None:
        self.number = number
        self.kind = kind  # "raw" | "python"
        self.user = user
        self.nodes = nodes
        self.plan = plan
        self.ledger = ledger
        self.figures = figures
        self.rng = random.Random(plan.seed * 100_003 + number)
        self.watches = {p: Watch() for p in projects}
        self.past: list[tuple[str, Watch]] = []  # watches that ended, replaced by new ones
        # Every durable event received, any path: when it first arrived.
        self.seen: dict[tuple[str, int], float] = {}
        self.reconnects = 0
        self.behaviours: Counter[str] = Counter()
        self.closes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.node = number % len(nodes)
        self.measure_from = time.time()  # events committed before: delivery time not counted
        self.unrecovered = 0

    # -- accounting --

    def on_message(self, message: dict[str, Any], streaming: set[str], measured: bool) -> None:
        kind = message.get("type")
        project_id = message.get("project_id")
        if not isinstance(project_id, str):
            return
        watch = self.watches.get(project_id)
        if kind == "subscribed":
            if watch is not None and watch.ended is None:
                if watch.first_since is None:
                    watch.first_since = int(message["seq"])
                if message.get("recovered") is False:
                    self.unrecovered += 1
                now = time.time()
                watch.window = (watch.asked or now, now)
                watch.asked = now
                streaming.add(project_id)
            return
        if kind == "unsubscribed" and message.get("reason"):
            if watch is not None:
                watch.ended = str(message["reason"])
            streaming.discard(project_id)
            return
        if kind == "error":
            if watch is not None and message.get("code") in ("not_found", "forbidden"):
                watch.ended = str(message.get("code"))
            streaming.discard(project_id)
            return
        seq = message.get("seq")
        if not isinstance(seq, int):
            return
        self.seen.setdefault((project_id, seq), time.time())
        if watch is None or project_id not in streaming:
            return  # the project list's copy (audience), not the subscription's stream
        watch.received.append(seq)
        watch.windows.setdefault(seq, watch.window)
        committed = timestamp(message.get("timestamp"))
        if measured and committed is not None and committed >= self.measure_from:
            latency = time.time() - committed
            self.figures.deliveries += 1
            self.figures.max_latency = max(self.figures.max_latency, latency)
            if self.ledger.after_fault(committed):
                self.figures.max_latency_after_fault = max(
                    self.figures.max_latency_after_fault, latency
                )

    def rewatch(self) -> None:
        """A guest added again to a project whose subscription ended (removed) watches it
        anew, from its next connection on: so a long run keeps guests to remove while
        they are subscribed."""
        for project_id, watch in self.watches.items():
            if watch.ended is not None and self.ledger.member_now(self.user.id, project_id):
                self.past.append((project_id, watch))
                self.watches[project_id] = Watch()

    def wanted(self) -> list[str]:
        return [p for p, w in self.watches.items() if w.ended is None]

    def ask(self, project_id: str) -> None:
        """About to send a subscribe to the project."""
        self.watches[project_id].asked = time.time()

    def window(self, project_id: str, seq: int) -> tuple[float, float] | None:
        """From the subscribe to its reply, for the stream that carried ``seq`` (None: no
        stream did, e.g. the project list's copy of a ``project.*`` event)."""
        for p, watch in [*self.past, *self.watches.items()]:
            if p == project_id and seq in watch.windows:
                return watch.windows[seq]
        return None

    def since(self, project_id: str) -> int | None:
        return self.watches[project_id].last

    def caught_up(self, heads: dict[str, int]) -> bool:
        return all(self.since(p) == heads[p] for p in self.wanted())

    # -- behaviour --

    async def run(self, stop: asyncio.Event, settle: asyncio.Event, done: asyncio.Event) -> None:
        low, high = self.plan.episode_seconds
        for _ in range(10_000):
            if done.is_set():
                return
            behaviour = "read" if settle.is_set() else self.rng.choice(self.BEHAVIOURS)
            if self.kind == "python" and behaviour == "stall":
                behaviour = "drop"
            self.behaviours[behaviour] += 1
            if not settle.is_set():
                self.rewatch()
            seconds = self.rng.uniform(low, high)
            node = self.nodes[self.node]
            try:
                if self.kind == "raw":
                    voluntary = await self.raw_episode(node, behaviour, seconds, settle, done)
                else:
                    voluntary = await self.python_episode(node, behaviour, seconds, settle, done)
            except (OSError, TimeoutError, websockets.WebSocketException, TidingsError) as exc:
                self.errors[type(exc).__name__] += 1
                voluntary = False
                await asyncio.sleep(self.rng.uniform(0.05, 0.3))
            self.reconnects += 1
            if behaviour != "read" or voluntary:
                self.measure_from = time.time()
            self.node = (self.node + 1) % len(self.nodes)  # the next connection: the other node

    async def _read_until(
        self,
        ws: ClientConnection,
        streaming: set[str],
        seconds: float | None,
        settle: asyncio.Event,
        done: asyncio.Event,
        measured: bool = True,
    ) -> bool:
        """Read for ``seconds`` (None: until ``done``); False if the connection closed."""
        deadline = time.monotonic() + (seconds if seconds is not None else 3600)
        while not done.is_set():
            if seconds is not None and settle.is_set():
                seconds = None
                deadline = time.monotonic() + 3600
            remaining = min(deadline - time.monotonic(), 0.5)
            if remaining <= 0:
                return True
            try:
                raw = await asyncio.wait_for(ws.recv(), remaining)
            except TimeoutError:
                continue
            except websockets.ConnectionClosed:
                self.closes[str(ws.close_code)] += 1
                return False
            for message in decode_frame(raw):
                self.on_message(message, streaming, measured)
        return True

    async def raw_episode(
        self, node: Node, behaviour: str, seconds: float, settle: asyncio.Event, done: asyncio.Event
    ) -> bool:
        sock = None
        if behaviour == "stall":
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(
                    asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", node.port)), 5
                )
            except BaseException:
                sock.close()
                raise
        subprotocols = ["tidings.batch.v1"] if self.number % 2 else None
        try:
            ws = await self._connect(node, sock, subprotocols)
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        return await self._raw_session(ws, behaviour, seconds, settle, done)

    async def _connect(
        self, node: Node, sock: socket.socket | None, subprotocols: list[str] | None
    ) -> ClientConnection:
        return await websockets.connect(
            node.ws_url,
            sock=sock,
            additional_headers={"Authorization": f"Bearer {self.user.token}"},
            subprotocols=subprotocols,  # type: ignore[arg-type]
            open_timeout=5,
            ping_interval=None,
            close_timeout=2,
            max_queue=None,
            max_size=None,
        )

    async def _raw_session(
        self,
        ws: ClientConnection,
        behaviour: str,
        seconds: float,
        settle: asyncio.Event,
        done: asyncio.Event,
    ) -> bool:
        streaming: set[str] = set()
        try:
            for project_id in self.wanted():
                self.ask(project_id)
                message: dict[str, Any] = {"type": "subscribe", "project_id": project_id}
                since = self.since(project_id)
                if since is not None:
                    message["since"] = since
                await ws.send(orjson.dumps(message).decode())
            if behaviour == "stall":
                # Read a little, then stop reading until the server gives up on us.
                if not await self._read_until(ws, streaming, 0.3, settle, done):
                    return False
                ws.transport.pause_reading()
                stall_until = time.monotonic() + seconds * 3
                while time.monotonic() < stall_until and not settle.is_set():
                    await asyncio.sleep(0.2)
                ws.transport.resume_reading()
                await self._read_until(ws, streaming, 3.0, settle, done, measured=False)
                return True
            open_ = await self._read_until(ws, streaming, seconds, settle, done)
            if not open_:
                return False
            if behaviour == "drop":
                ws.transport.abort()  # no close frame: the server finds out by itself
                return True
            await asyncio.wait_for(ws.close(), 5)
            return True
        finally:
            ws.transport.abort()

    async def python_episode(
        self, node: Node, behaviour: str, seconds: float, settle: asyncio.Event, done: asyncio.Event
    ) -> bool:
        client = TidingsClient(
            node.url, token=self.user.token, backoff=Backoff(base=0.1, cap=1.0), open_timeout=5
        )
        streaming: set[str] = set()
        try:
            await asyncio.wait_for(client.connect(), 10)
            for project_id in self.wanted():
                # The reply is also the next `subscribed` the iteration yields, in order:
                # what precedes it of this project is the project list's, not the stream.
                self.ask(project_id)
                with contextlib.suppress(SubscriptionError):
                    await asyncio.wait_for(
                        client.subscribe(project_id, since=self.since(project_id)), 15
                    )
            reconnects = client.reconnects
            deadline = time.monotonic() + seconds
            while not done.is_set():
                if settle.is_set():
                    deadline = time.monotonic() + 3600
                remaining = min(deadline - time.monotonic(), 0.5)
                if remaining <= 0:
                    break
                try:
                    message = await asyncio.wait_for(anext(client), remaining)
                except TimeoutError:
                    continue
                # A project streams from its `subscribed` on (also a resume after the
                # client reconnected by itself), while the client still subscribes to it.
                streaming &= client.state.subscriptions
                self.on_message(message.raw, streaming, True)
            self.reconnects += client.reconnects - reconnects
            return True
        finally:
            await asyncio.wait_for(client.close(), 5)


# -- the run ------------------------------------------------------------------------------


async def create_users(database_url: str, plan: Plan) -> list[User]:
    from tidings.db import Database, create_engine, migrate
    from tidings.models import ApiToken
    from tidings.models import User as UserRow
    from tidings.security import TOKEN_PREFIX, hash_password, hash_secret, new_secret

    users: list[User] = []
    db = Database(create_engine(database_url))
    try:
        await migrate(db.engine)
        for n in range(plan.owners + plan.guests):
            guest = n >= plan.owners
            name = f"{'guest' if guest else 'owner'}{n}"
            token = new_secret(TOKEN_PREFIX)
            async with db.write() as session:
                row = UserRow(username=name, password_hash=hash_password(secrets.token_hex(8)))
                session.add(row)
                await session.flush()
                session.add(ApiToken(secret_hash=hash_secret(token), user_id=row.id, name="chaos"))
            users.append(User(n, row.id, name, token, guest))
    finally:
        await db.dispose()
    return users


async def inject_faults(
    writers: Writers,
    nodes: list[Node],
    redis: Redis,
    postgres: Postgres,
    clients: list[Client],
    stop: asyncio.Event,
    rng: random.Random,
) -> None:
    kinds = list(FAULTS)
    order: list[str] = []
    ledger = writers.ledger
    for _ in range(1000):
        try:
            await asyncio.wait_for(stop.wait(), rng.uniform(*writers.plan.fault_gap))
            return
        except TimeoutError:
            pass
        if not order:
            rng.shuffle(kinds)
            order = list(kinds)
        kind = order.pop()
        start = time.time()
        if kind == "sigterm":
            await rng.choice(nodes).restart(signal.SIGTERM)
        elif kind == "sigkill":
            await rng.choice(nodes).restart(signal.SIGKILL)
        elif kind == "redis":
            await redis.crash()
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            await redis.start()
        elif kind == "postgres":
            await postgres.stop()
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            await postgres.start()
        else:
            watched = {(p, c.user.id) for c in clients if c.user.guest for p in c.wanted()}
            if not await writers.remove_a_watched_member(watched):
                order.insert(0, kind)  # nobody to remove just now: after the others
                continue
        ledger.faults[kind] += 1
        if all(ledger.faults.get(k, 0) >= writers.plan.fault_rounds for k in FAULTS):
            writers.cycled.set()
        ledger.fault_windows.append((start, time.time()))
        ledger.fault_seconds[kind] = max(ledger.fault_seconds.get(kind, 0.0), time.time() - start)


@dataclass
class Report:
    plan: str
    events_committed: int
    log_events: int
    clients: int
    subscriptions_checked: int
    reconnects: int
    faults: dict[str, int]
    lost: int
    duplicated: int
    out_of_order: int
    leaked: int
    history_to_readded: int  # older events resumed by a member added again (not a leak)
    changes_without_event: int
    unexplained_log_events: int
    unknown_outcomes: int
    unrecovered: int
    not_settled: int
    max_latency_after_fault: float
    max_latency: float
    deliveries_timed: int
    write_seconds: float  # writing stops at the plan's events or its time bound
    seconds: float
    details: dict[str, Any]

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.out_of_order == 0
            and self.leaked == 0
            and self.changes_without_event == 0
            and self.not_settled == 0
        )

    def table(self) -> str:
        rows = [
            ("plan", self.plan),
            ("events committed (2xx)", self.events_committed),
            ("events in the log", self.log_events),
            ("clients", self.clients),
            ("subscriptions checked", self.subscriptions_checked),
            ("reconnects", self.reconnects),
            *((f"faults: {k}", self.faults.get(k, 0)) for k in FAULTS),
            ("lost", self.lost),
            ("duplicated", self.duplicated),
            ("out of order", self.out_of_order),
            ("leaked", self.leaked),
            ("older events resumed by re-added members", self.history_to_readded),
            ("2xx changes without their event", self.changes_without_event),
            ("log events from unknown outcomes", self.unexplained_log_events),
            ("requests with unknown outcome", self.unknown_outcomes),
            ("resumes answered recovered: false", self.unrecovered),
            ("clients not caught up at the end", self.not_settled),
            ("max commit→delivery after a fault (s)", f"{self.max_latency_after_fault:.3f}"),
            ("max commit→delivery (s)", f"{self.max_latency:.3f}"),
            ("deliveries timed", self.deliveries_timed),
            ("seconds writing", f"{self.write_seconds:.1f}"),
            ("seconds", f"{self.seconds:.1f}"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

    def json(self) -> str:
        figures = {k: v for k, v in self.__dict__.items() if k != "details"}
        return orjson.dumps(figures | {"ok": self.ok}).decode()


def audit(
    plan: Plan,
    writers: Writers,
    clients: list[Client],
    logs: dict[str, list[tuple[int, str]]],
    figures: Figures,
    seconds: float,
) -> Report:
    ledger = writers.ledger
    owners = {p.id: writers.users[p.owner].id for p in writers.projects}
    lost = duplicated = out_of_order = leaked = checked = not_settled = history = 0
    crossed = 0  # history received after the member's next removal had committed
    examples: list[str] = []
    heads = {p: (events[-1][0] if events else 0) for p, events in logs.items()}
    for client in clients:
        for project_id, watch in [*client.past, *client.watches.items()]:
            seqs = watch.received
            seen: set[int] = set()
            newest = 0
            for seq in seqs:
                if seq in seen:
                    duplicated += 1
                    if len(examples) < 20:
                        examples.append(
                            f"duplicate: client {client.number} ({client.kind}) project "
                            f"{project_id} seq {seq} in {seqs[-30:]}, since {watch.first_since}"
                        )
                elif seq < newest:
                    out_of_order += 1
                seen.add(seq)
                newest = max(newest, seq)
            if watch.ended is not None or watch.first_since is None:
                continue
            checked += 1
            expected = {seq for seq, _ in logs[project_id] if seq > watch.first_since}
            missing = expected - seen
            extra = seen - {seq for seq, _ in logs[project_id]}
            lost += len(missing) + len(extra)
            if watch.last != heads[project_id]:
                not_settled += 1
            if missing and len(examples) < 10:
                examples.append(
                    f"client {client.number} ({client.kind}, {client.user.username}) project "
                    f"{project_id}: since {watch.first_since}, missing {sorted(missing)[:10]}"
                )
        for (project_id, seq), at in client.seen.items():
            if project_id not in owners or ledger.can_see(owners, client.user.id, project_id, seq):
                continue
            window = client.window(project_id, seq)
            if window is not None and ledger.member_during(
                client.user.id, project_id, *window, writers.committed_at
            ):
                # Resumed by a member: the project's history from while they were not one
                # (REST shows a member the same), on a subscription the node answered
                # while they were a member. It may still arrive after their next removal:
                # what a node queued before it heard of a removal is sent.
                history += 1
                if not ledger.member_during(
                    client.user.id, project_id, at, at, writers.committed_at
                ):
                    crossed += 1
            else:
                leaked += 1
                if len(examples) < 20:
                    examples.append(
                        f"leak: {client.user.username} got {project_id} seq {seq} at {at:.3f}, "
                        f"asked for and answered {window}; visible "
                        f"{ledger.visible.get((project_id, client.user.id))}"
                    )
    logged = {(p, seq): kind for p, events in logs.items() for seq, kind in events}
    without = [c for c in ledger.changes if logged.get((c[0], c[1])) != c[2]]
    answered = {(p, seq) for p, seq, _ in ledger.changes}
    unexplained = len(set(logged) - answered)
    return Report(
        plan=plan.name,
        events_committed=ledger.durable(),
        log_events=len(logged),
        clients=len(clients),
        subscriptions_checked=checked,
        reconnects=sum(c.reconnects for c in clients),
        faults=dict(ledger.faults),
        lost=lost,
        duplicated=duplicated,
        out_of_order=out_of_order,
        leaked=leaked,
        history_to_readded=history,
        changes_without_event=len(without),
        unexplained_log_events=unexplained,
        unknown_outcomes=ledger.unknown,
        unrecovered=sum(c.unrecovered for c in clients),
        not_settled=not_settled,
        max_latency_after_fault=figures.max_latency_after_fault,
        max_latency=figures.max_latency,
        deliveries_timed=figures.deliveries,
        write_seconds=writers.write_seconds,
        seconds=seconds,
        details={
            "examples": examples,
            "history_after_removal": crossed,
            "without_event": without[:10],
            "retried": ledger.retried,
            "fault_seconds": {k: round(v, 2) for k, v in ledger.fault_seconds.items()},
            "mean_op_seconds": {
                k: round(v / ledger.ops[k], 3) for k, v in ledger.op_seconds.items()
            },
            "unknown_why": dict(ledger.unknown_why),
            "refused": dict(ledger.refused),
            "progress_reports": ledger.progress,
            "behaviours": dict(sum((c.behaviours for c in clients), Counter())),
            "closes": dict(sum((c.closes for c in clients), Counter())),
            "errors": dict(sum((c.errors for c in clients), Counter())),
        },
    )


def node_env(root: Path, postgres: Postgres, redis: Redis) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(
        {
            "TIDINGS_DATA_DIR": str(root / "data"),  # shared storage, as in a real cluster
            "TIDINGS_DATABASE_URL": postgres.url,
            "TIDINGS_BROKER_URL": redis.url,
            "TIDINGS_BROKER_CHANNEL": "chaos",
            "TIDINGS_CREATE_ADMIN": "false",
            "TIDINGS_DOCS": "false",
            "TIDINGS_HEARTBEAT_INTERVAL": "2",
            "TIDINGS_HEAD_SYNC_INTERVAL": "1",
            "TIDINGS_WS_MAX_QUEUE_MESSAGES": "200",
            "TIDINGS_WS_MAX_QUEUE_BYTES": str(128 * 1024),
            "TIDINGS_WS_CLOSE_TIMEOUT": "2",
            "TIDINGS_WS_RECONNECT_SPREAD": "0.5",
            "TIDINGS_WS_MAX_CONNECTIONS_PER_USER": "1000",
            "TIDINGS_MAX_ACTIVE_PROCESSES": "10",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def make_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="tidings-chaos-"))
    root.chmod(0o755)  # the postgres user reaches its folders inside
    return root


async def run(plan: Plan, keep: bool = False) -> Report:
    began = time.monotonic()
    rng = random.Random(plan.seed)
    root = make_root()
    redis = Redis(root)
    postgres = Postgres(root)
    nodes: list[Node] = []
    children: list[Child] = [redis.child, postgres.child]
    tasks: list[asyncio.Task[Any]] = []
    writers: Writers | None = None
    try:
        await redis.start()
        await postgres.init()
        users = await create_users(postgres.url, plan)
        env = node_env(root, postgres, redis)
        nodes = [Node("node-a", root, env), Node("node-b", root, env)]
        children += [n.child for n in nodes]
        await asyncio.gather(*(n.start() for n in nodes))
        ledger = Ledger()
        writers = Writers(plan, nodes, users, ledger, rng)
        await writers.create_projects()

        figures = Figures()
        clients: list[Client] = []
        total = plan.raw_clients + plan.python_clients
        for n in range(total):
            user = users[n % len(users)]
            visible = [
                p.id for p in writers.projects if p.owner == user.index or user.index in p.members
            ]
            count = min(len(visible), rng.randint(*plan.projects_per_client))
            kind = "python" if n < plan.python_clients else "raw"
            clients.append(
                Client(n, kind, user, rng.sample(visible, count), nodes, plan, ledger, figures)
            )
        stop, settle, done = asyncio.Event(), asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(c.run(stop, settle, done)) for c in clients]
        await asyncio.sleep(1.0)  # let the clients subscribe before the first change
        faults = asyncio.create_task(
            inject_faults(writers, nodes, redis, postgres, clients, stop, rng)
        )
        tasks.append(faults)
        deadline = time.monotonic() + plan.max_write_seconds
        writing = time.monotonic()
        await asyncio.gather(*(writers.writer(stop, deadline) for _ in range(plan.writers)))
        writers.write_seconds = time.monotonic() - writing
        stop.set()
        await asyncio.wait_for(faults, 120)  # a fault under way finishes, healed
        # Everything is up again: every client reads normally until it has caught up.
        settle.set()
        logs = await writers.read_log()
        heads = {p: (events[-1][0] if events else 0) for p, events in logs.items()}
        settle_by = time.monotonic() + plan.settle_seconds
        while time.monotonic() < settle_by and not all(c.caught_up(heads) for c in clients):
            await asyncio.sleep(0.25)
        done.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        logs = await writers.read_log()
        return audit(plan, writers, clients, logs, figures, time.monotonic() - began)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if writers is not None:
            await writers.http.aclose()
        for child in reversed(children):
            child.kill_now()
        for child in children:
            if child.proc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(child.proc.wait(), 10)
        if keep:
            print(f"chaos: logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="the variant make test runs")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the logs and data folder")
    args = parser.parse_args(argv)
    plan = FAST if args.fast else SOAK
    if args.seed is not None:
        plan = Plan(**(plan.__dict__ | {"seed": args.seed}))
    report = asyncio.run(run(plan, keep=args.keep))
    print(report.table())
    for line in report.details["examples"]:
        print(line)
    print(orjson.dumps(report.details).decode())
    print(report.json())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
