"""Load held, nothing leaking: connections held under heartbeats and a trickle of events.

One real ``tidings serve`` node (SQLite, the memory broker, a short heartbeat and ping
interval) in a temporary folder. Its baseline is read once a first wave of clients has
come and gone (so the lazily made parts — the database pool, the executor's threads,
caches — exist already): resident memory and threads from ``/proc``, open file
descriptors from ``/proc/PID/fd`` (by kind), and from ``/metrics`` the event loop's tasks
and the hub's connections, subscriptions, channels and queued frames; presence (who views
each project) over REST. Then many clients connect, each subscribed to a few projects,
and are held for a bounded time while the node sends heartbeats and pings and a writer
makes one REST change after another; resident memory is sampled every second. Every
client must get every event of its projects, in order. Then every client leaves — a third
with a closing handshake, a third by closing TCP without a close frame, a third by a TCP
reset — and every figure of the baseline must come back (file descriptors of the SQLite
pool within a stated tolerance, see :data:`POOL_FILE_TOLERANCE`).

Reported: KiB per connection (mean resident memory over the held window after its
warm-up, less the baseline, per client) and the memory growth per hour, extrapolated from
a least-squares slope over that window, with its noise (the 95 % interval, or one page
over the window if wider). The warm-up is long (300 s of 420): the resident memory of a
node under a steady load climbs a few MiB for minutes before it levels off (see
docs/reliability.md), and a slope over that climb extrapolates it to tens of MiB per hour
that never come. It prints a table and one JSON line.

``python -m tests.held`` (``make hold``) is the full run: 5,000 clients held for 420 s,
the node pinned to CPU 0 and this process (the clients) to CPU 1, as ``make bench`` does.
``python -m tests.held --fast`` is the variant ``make test`` runs (tests/test_held.py):
300 clients for a few seconds, no memory slope worth the name. Loopback only; every wait
is bounded; the node is killed on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import orjson
from bench.wsclient import WSClient, connect

from tests.chaos import TIDINGS, Child, free_port, until

SERVER_CPU, CLIENT_CPU = 0, 1
# The SQLite pool (SQLAlchemy's default for aiosqlite: 5 kept connections) may keep a
# connection the baseline did not have yet: each holds the database, its WAL and its
# shared-memory index open. Nothing else may differ.
POOL_SIZE, FILES_PER_SQLITE_CONNECTION = 5, 3
POOL_FILE_TOLERANCE = POOL_SIZE * FILES_PER_SQLITE_CONNECTION
RETURN_SECONDS = 30.0  # how long the node may take to get back to its baseline
CATCH_UP_SECONDS = 30.0
CONNECT_CONCURRENCY = 64
MIN_SLOPE_SAMPLES = 30  # one a second: fewer say nothing about a growth per hour
VERDICTS = {True: "yes", False: "no", None: "too few samples"}
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
# Figures that must come back exactly (the scrape's own request is in both readings).
EXACT = (
    "tasks",
    "connections",
    "subscriptions",
    "channels",
    "queued_frames",
    "viewers",
    "fd_socket",
    "fd_pipe",
    "fd_other",
)


@dataclass(frozen=True)
class Plan:
    """How big one run is; every bound of every loop comes from here."""

    name: str
    clients: int
    users: int
    projects: int
    projects_per_client: int
    hold_seconds: float
    rss_warmup_seconds: float  # the first part of the hold, left out of the memory slope
    heartbeat: float
    ping_interval: float
    event_interval: float  # one REST change every this many seconds while held
    first_wave: int  # clients that come and go before the baseline
    pin: bool  # node and clients on separate cores
    env: tuple[tuple[str, str], ...] = ()  # more settings for the node


FULL = Plan(
    name="full",
    clients=5000,
    users=10,
    projects=20,
    projects_per_client=2,
    hold_seconds=420.0,
    rss_warmup_seconds=300.0,
    heartbeat=1.0,
    ping_interval=5.0,
    event_interval=0.5,
    first_wave=200,
    pin=True,
    # The memory tail at a bound it reaches before the warm-up ends (about 280 of the
    # trickle's events, 140 s): its default, 16 MiB, takes the trickle hours to fill, and
    # a slope over its filling measures the cache, not a leak (docs/reliability.md).
    env=(("TIDINGS_RESUME_TAIL_BYTES", str(128 * 1024)),),
)
FAST = Plan(
    name="fast",
    clients=300,
    users=3,
    projects=6,
    projects_per_client=2,
    hold_seconds=4.0,
    rss_warmup_seconds=1.0,
    heartbeat=0.5,
    ping_interval=1.0,
    event_interval=0.2,
    first_wave=30,
    pin=False,
)


# -- the node and what it holds -----------------------------------------------------------


@dataclass
class User:
    username: str
    token: str


async def create_users(database_url: str, count: int) -> list[User]:
    """Users with an API token each, written before the node starts (nobody logs in)."""
    from tidings.db import Database, create_engine, migrate
    from tidings.models import ApiToken
    from tidings.models import User as UserRow
    from tidings.security import TOKEN_PREFIX, hash_secret, new_secret

    users: list[User] = []
    db = Database(create_engine(database_url))
    try:
        await migrate(db.engine)
        for n in range(count):
            token = new_secret(TOKEN_PREFIX)
            async with db.write() as session:
                row = UserRow(username=f"held{n}", password_hash="!")
                session.add(row)
                await session.flush()
                session.add(ApiToken(secret_hash=hash_secret(token), user_id=row.id, name="held"))
            users.append(User(row.username, token))
    finally:
        await db.dispose()
    return users


def node_env(root: Path, plan: Plan) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(
        {
            "TIDINGS_DATA_DIR": str(root / "data"),
            "TIDINGS_CREATE_ADMIN": "false",
            "TIDINGS_DOCS": "false",
            "TIDINGS_HEARTBEAT_INTERVAL": str(plan.heartbeat),
            "TIDINGS_WS_PING_INTERVAL": str(plan.ping_interval),
            "TIDINGS_WS_CLOSE_TIMEOUT": "2",
            "TIDINGS_WS_MAX_CONNECTIONS_PER_USER": str(plan.clients + plan.first_wave),
            "PYTHONUNBUFFERED": "1",
            **dict(plan.env),
        }
    )
    return env


@dataclass
class Reading:
    """What the node holds at one moment."""

    at: float
    rss_kib: int
    threads: int
    figures: dict[str, int]  # tasks, connections, …, fd_* (see EXACT), fd_file

    def differences(self, baseline: Reading) -> dict[str, tuple[int, int]]:
        """Figures not back at ``baseline``'s: name → (baseline, now)."""
        off = {
            name: (baseline.figures[name], self.figures[name])
            for name in EXACT
            if self.figures[name] != baseline.figures[name]
        }
        if self.figures["fd_file"] > baseline.figures["fd_file"] + POOL_FILE_TOLERANCE:
            off["fd_file"] = (baseline.figures["fd_file"], self.figures["fd_file"])
        return off


class Node:
    """The ``tidings serve`` process and the readings taken of it."""

    def __init__(self, root: Path, plan: Plan) -> None:
        self.port = free_port()
        argv = [TIDINGS, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--log-level", "warning"]
        if plan.pin:
            argv = ["taskset", "-c", str(SERVER_CPU), *argv]
        self.child = Child("node", argv, root / "node.log", env=node_env(root, plan))
        # One request a connection: no keep-alive socket of ours lingers in a reading.
        self.http = httpx.AsyncClient(
            base_url=self.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.child.proc is not None
        return self.child.proc.pid

    async def _healthy(self) -> bool:
        return (await self.http.get("/healthz")).status_code == 200

    async def start(self) -> None:
        await self.child.start()
        await until(self._healthy, 60, "tidings serve")

    def status(self) -> tuple[int, int]:
        """Resident memory (KiB) and threads, from ``/proc/PID/status``."""
        rss = threads = 0
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
        return rss, threads

    def open_files(self) -> dict[str, int]:
        """Open file descriptors by kind: sockets, pipes, files, others (epoll, eventfd)."""
        kinds = {"fd_socket": 0, "fd_pipe": 0, "fd_file": 0, "fd_other": 0}
        folder = f"/proc/{self.pid}/fd"
        for fd in os.listdir(folder):
            try:
                target = os.readlink(f"{folder}/{fd}")
            except FileNotFoundError:  # closed meanwhile
                continue
            if target.startswith("socket:"):
                kinds["fd_socket"] += 1
            elif target.startswith("pipe:"):
                kinds["fd_pipe"] += 1
            elif target.startswith("/"):
                kinds["fd_file"] += 1
            else:
                kinds["fd_other"] += 1
        return kinds

    async def metrics(self) -> dict[str, float]:
        response = await self.http.get("/metrics")
        response.raise_for_status()
        samples: dict[str, float] = {}
        for line in response.text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    async def viewers(self, token: str, projects: list[str]) -> int:
        """Everybody presence lists as viewing any of ``projects`` (read over REST)."""
        total = 0
        for project_id in projects:
            response = await self.http.get(
                f"/api/projects/{project_id}/presence",
                headers={"Authorization": f"Bearer {token}"},
            )
            response.raise_for_status()
            total += len(response.json())
        return total

    async def reading(self, token: str, projects: list[str]) -> Reading:
        """Everything :data:`EXACT` names, the files and the memory. The files are listed
        before the scrape, whose own connection is then not among them."""
        files = self.open_files()
        rss, threads = self.status()
        samples = await self.metrics()
        figures = {
            "tasks": int(samples["tidings_asyncio_tasks"]),
            "connections": int(samples["tidings_ws_connections"]),
            "subscriptions": int(samples["tidings_ws_subscriptions"]),
            "channels": int(samples["tidings_ws_channels"]),
            "queued_frames": int(samples["tidings_ws_queue_depth"]),
            "viewers": await self.viewers(token, projects),
            **files,
        }
        return Reading(time.monotonic(), rss, threads, figures)

    async def settled(self, token: str, projects: list[str], seconds: float) -> Reading:
        """A reading equal to the one before it (the node is idle), within ``seconds``."""
        deadline = time.monotonic() + seconds
        last = await self.reading(token, projects)
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            now = await self.reading(token, projects)
            if now.figures == last.figures:
                return now
            last = now
        return last

    async def stop(self) -> None:
        await self.http.aclose()
        await self.child.stop(signal.SIGTERM, 20)


# -- the clients --------------------------------------------------------------------------


class Watcher:
    """One client's bookkeeping: the last seq of each project, gaps, heartbeats."""

    __slots__ = ("events", "gaps", "heartbeats", "listed", "pending", "ready", "seqs")

    def __init__(self, projects: list[str]) -> None:
        self.seqs: dict[str, int] = dict.fromkeys(projects, -1)  # -1: not subscribed yet
        self.pending = len(projects)
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.events = 0  # of the subscribed projects
        self.listed = 0  # of the user's other projects (the project list's updates)
        self.gaps = 0
        self.heartbeats = 0

    def on_messages(self, client: WSClient, payloads: list[bytes], now: float) -> None:
        for payload in payloads:
            message = orjson.loads(payload)
            kind = message.get("type")
            if kind == "system.heartbeat":
                self.heartbeats += 1
            elif kind == "subscribed":
                self.seqs[message["project_id"]] = message["seq"]
                self.pending -= 1
                if self.pending == 0 and not self.ready.done():
                    self.ready.set_result(None)
            elif kind == "error" and not self.ready.done():
                self.ready.set_exception(RuntimeError(f"subscribe failed: {message}"))
            elif (seq := message.get("seq")) is not None:
                project_id = message["project_id"]
                if project_id not in self.seqs:  # `project.*` of another project of the
                    self.listed += 1  # user's: the project-list (audience) path
                    continue
                if seq != self.seqs[project_id] + 1:
                    self.gaps += 1
                self.seqs[project_id] = max(seq, self.seqs[project_id])
                self.events += 1

    def caught_up(self, heads: dict[str, int]) -> bool:
        return all(seq >= heads.get(project_id, 0) for project_id, seq in self.seqs.items())


@dataclass
class Held:
    client: WSClient
    watcher: Watcher


async def connect_clients(
    node: Node, users: list[User], projects: list[str], count: int, per_client: int, offset: int
) -> list[Held]:
    """``count`` clients, each subscribed to ``per_client`` projects; return once every
    one has all its ``subscribed`` answers. Half subscribe with one message for all their
    projects, half with one message each."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(n: int) -> Held:
        wanted = [projects[(n + k * 7) % len(projects)] for k in range(per_client)]
        user = users[n % len(users)]
        watcher = Watcher(wanted)
        async with gate:
            client = await connect(
                "127.0.0.1",
                node.port,
                "/ws",
                watcher.on_messages,
                headers=[("Authorization", f"Bearer {user.token}")],
            )
            if n % 2:
                client.send(
                    orjson.dumps(
                        {"type": "subscribe", "projects": [{"project_id": p} for p in wanted]}
                    )
                )
            else:
                for project_id in wanted:
                    client.send(orjson.dumps({"type": "subscribe", "project_id": project_id}))
            await asyncio.wait_for(watcher.ready, 60)
        return Held(client, watcher)

    return list(await asyncio.gather(*(one(offset + n) for n in range(count))))


async def leave(clients: list[Held]) -> dict[str, int]:
    """Every client leaves: by closing handshake, by closing TCP without a close frame,
    or by a TCP reset, in turn. Returns how many left each way."""
    ways = {"close frame": 0, "TCP close": 0, "TCP reset": 0}
    handshakes = []
    for n, held in enumerate(clients):
        client = held.client
        if n % 3 == 0:
            client.begin_close(1000)
            handshakes.append(client)
            ways["close frame"] += 1
        elif n % 3 == 1:
            assert client.transport is not None
            client.transport.close()
            ways["TCP close"] += 1
        else:
            client.reset()
            ways["TCP reset"] += 1
    if handshakes:
        # The server answers the close frame, then closes TCP (a client left hanging
        # here is closed by us after the wait; the check after it would show a leak).
        await asyncio.wait([c.closed for c in handshakes], timeout=30)
    for client in handshakes:
        if client.transport is not None:
            client.transport.close()
    return ways


# -- the writer and the memory sampler ----------------------------------------------------


class Writer:
    """One REST change after another, round the projects, while the clients are held."""

    def __init__(self, node: Node, owner: User, projects: list[str]) -> None:
        self.node = node
        self.owner = owner
        self.projects = projects
        self.heads: dict[str, int] = {}
        self.changes = 0

    async def change(self) -> None:
        project_id = self.projects[self.changes % len(self.projects)]
        response = await self.node.http.patch(
            f"/api/projects/{project_id}",
            json={"description": f"held change {self.changes}"},
            headers={"Authorization": f"Bearer {self.owner.token}"},
        )
        response.raise_for_status()
        self.heads[project_id] = int(response.headers["Tidings-Seq"])
        self.changes += 1

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        started = time.monotonic()
        for tick in range(1_000_000):
            if await stopped(stop, started + tick * interval):
                return
            await self.change()


async def sample_memory(node: Node, stop: asyncio.Event) -> list[tuple[float, int]]:
    """(time, resident KiB) every second until ``stop``."""
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    for tick in range(1_000_000):
        samples.append((time.monotonic(), node.status()[0]))
        if await stopped(stop, started + tick + 1):
            break
    return samples


async def stopped(stop: asyncio.Event, deadline: float) -> bool:
    """Wait for ``stop`` until the monotonic time ``deadline``; whether it was set (also
    when ``deadline`` has passed already: a loop behind its schedule still stops)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, deadline - time.monotonic()))
    return stop.is_set()


def gc_figures(samples: dict[str, float]) -> dict[str, int]:
    """The node's garbage collector: passes and objects collected, by generation."""
    figures: dict[str, int] = {}
    for generation in range(3):
        label = f'{{generation="{generation}"}}'
        figures[f"collections_{generation}"] = int(samples[f"python_gc_collections_total{label}"])
        figures[f"collected_{generation}"] = int(
            samples[f"python_gc_objects_collected_total{label}"]
        )
    return figures


def slope(samples: list[tuple[float, int]]) -> tuple[float, float]:
    """Least-squares slope of KiB over seconds, and its standard error."""
    n = len(samples)
    if n < 3:
        return 0.0, math.inf
    ts = [t for t, _ in samples]
    ys = [float(y) for _, y in samples]
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    sxx = sum((t - mt) ** 2 for t in ts)
    b = sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / sxx
    residuals = sum((y - my - b * (t - mt)) ** 2 for t, y in zip(ts, ys, strict=True))
    return b, math.sqrt(residuals / (n - 2) / sxx)


# -- the run ------------------------------------------------------------------------------


@dataclass
class Report:
    plan: str
    clients: int
    subscriptions: int
    projects: int
    hold_seconds: float
    connect_seconds: float
    changes: int
    events_received: int
    gaps: int
    behind: int
    heartbeats_fewest: int
    baseline_rss_mib: float
    held_rss_mib: float
    hold_rss_mib: tuple[float, float, float]  # first sample, warm-up's end, last sample
    after_rss_mib: float
    kib_per_connection: float
    rss_samples: int
    growth_mib_per_hour: float
    growth_ci95_mib_per_hour: float
    resolution_mib_per_hour: float  # one page over the window, per hour
    # Python's allocated blocks (objects) over the same window: growth per hour, ± its 95 %
    # interval; and their count at the window's start and end.
    blocks_per_hour: float
    blocks_ci95_per_hour: float
    held_blocks: tuple[int, int]
    held_tasks: int
    gc_while_held: dict[str, int]  # collections and objects collected, by generation
    left: dict[str, int]
    returned_seconds: float
    baseline: dict[str, int]
    after: dict[str, int]
    threads: tuple[int, int]
    not_back: dict[str, tuple[int, int]]
    load_average: tuple[float, float]  # 1-minute load average at the start and at the end
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def noise_mib_per_hour(self) -> float:
        """What cannot be told from 0: the slope's 95 % interval, but never less than
        one page over the window (resident memory moves in pages: when it is nearly
        flat, a single page's step makes the interval itself meaninglessly narrow)."""
        return max(self.growth_ci95_mib_per_hour, self.resolution_mib_per_hour)

    @property
    def within_noise(self) -> bool | None:
        """Whether the memory growth per hour cannot be told from 0; None: too few
        samples to say (the fast variant)."""
        if self.rss_samples < MIN_SLOPE_SAMPLES:
            return None
        return abs(self.growth_mib_per_hour) <= self.noise_mib_per_hour

    @property
    def ok(self) -> bool:
        return not self.not_back and self.gaps == 0 and self.behind == 0

    def table(self) -> str:
        back = [
            (f"{name}: baseline → after", f"{self.baseline[name]} → {self.after[name]}")
            for name in (*EXACT, "fd_file")
        ]
        rows = [
            ("plan", self.plan),
            (
                "clients / subscriptions / projects",
                f"{self.clients} / {self.subscriptions} / {self.projects}",
            ),
            ("connect + subscribe (s)", f"{self.connect_seconds:.1f}"),
            ("held (s)", f"{self.hold_seconds:.0f}"),
            ("REST changes / events received", f"{self.changes} / {self.events_received}"),
            ("gaps / clients behind at the end", f"{self.gaps} / {self.behind}"),
            ("heartbeats received (fewest)", self.heartbeats_fewest),
            ("tasks while held", self.held_tasks),
            (
                "GC while held: collections gen 0/1/2; gen 2 collected",
                "{collections_0} / {collections_1} / {collections_2}; {collected_2}".format(
                    **self.gc_while_held
                ),
            ),
            (
                "RSS baseline / held (mean) / after (MiB)",
                f"{self.baseline_rss_mib:.1f} / {self.held_rss_mib:.1f} / {self.after_rss_mib:.1f}",
            ),
            (
                "RSS while held: start / after warm-up / end (MiB)",
                " / ".join(f"{mib:.1f}" for mib in self.hold_rss_mib),
            ),
            ("KiB per connection", f"{self.kib_per_connection:.2f}"),
            (
                "RSS growth per hour (MiB, ± noise)",
                f"{self.growth_mib_per_hour:+.2f} ± {self.noise_mib_per_hour:.2f}"
                f" ({self.rss_samples} samples; 95 % interval ±"
                f"{self.growth_ci95_mib_per_hour:.2f}, one page ±"
                f"{self.resolution_mib_per_hour:.2f}; within noise: "
                f"{VERDICTS[self.within_noise]})",
            ),
            (
                "Python blocks growth per hour (± 95 %); window start → end",
                f"{self.blocks_per_hour:+,.0f} ± {self.blocks_ci95_per_hour:,.0f};"
                f" {self.held_blocks[0]:,} → {self.held_blocks[1]:,}",
            ),
            ("left by", ", ".join(f"{way} {n}" for way, n in self.left.items())),
            ("back to baseline after (s)", f"{self.returned_seconds:.1f}"),
            *back,
            ("threads: baseline → after", f"{self.threads[0]} → {self.threads[1]}"),
            ("not back to baseline", self.not_back or "none"),
            (
                "load average (1 min) at start / end",
                f"{self.load_average[0]:.2f} / {self.load_average[1]:.2f}",
            ),
            ("seconds", f"{self.seconds:.1f}"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)

    def json(self) -> str:
        figures = {k: v for k, v in self.__dict__.items() if k != "details"}
        verdict = {"noise_mib_per_hour": self.noise_mib_per_hour, "within_noise": self.within_noise}
        return orjson.dumps(figures | verdict | {"ok": self.ok}).decode()


async def run(plan: Plan, keep: bool = False) -> Report:
    began = time.monotonic()
    load_start = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="tidings-held-"))
    node = Node(root, plan)
    clients: list[Held] = []
    try:
        data = root / "data"
        data.mkdir()
        # The node's own database: SQLite in its folder unless a setting names another.
        database_url = dict(plan.env).get(
            "TIDINGS_DATABASE_URL", f"sqlite+aiosqlite:///{data / 'tidings.db'}"
        )
        users = await create_users(database_url, plan.users)
        await node.start()
        owner = users[0]
        auth = {"Authorization": f"Bearer {owner.token}"}
        projects: list[str] = []
        for n in range(plan.projects):
            response = await node.http.post(
                "/api/projects", json={"name": f"held {n}"}, headers=auth
            )
            response.raise_for_status()
            projects.append(response.json()["id"])
            for user in users[1:]:
                added = await node.http.post(
                    f"/api/projects/{projects[-1]}/members",
                    json={"username": user.username},
                    headers=auth,
                )
                added.raise_for_status()
        writer = Writer(node, owner, projects)

        # A first wave comes and goes: what the node makes once (pool connections,
        # executor threads, caches) exists before the baseline.
        wave = await connect_clients(
            node, users, projects, plan.first_wave, plan.projects_per_client, 0
        )
        for _ in range(len(projects)):
            await writer.change()
        await leave(wave)
        baseline = await node.settled(owner.token, projects, RETURN_SECONDS)

        started = time.monotonic()
        clients = await connect_clients(
            node, users, projects, plan.clients, plan.projects_per_client, plan.first_wave
        )
        connect_seconds = time.monotonic() - started

        stop = asyncio.Event()
        gc_before = gc_figures(await node.metrics())
        held_at = time.monotonic()
        sampler = asyncio.create_task(sample_memory(node, stop))
        writing = asyncio.create_task(writer.run(plan.event_interval, stop))
        held_tasks = 0
        blocks: list[tuple[float, int]] = []  # Python's allocated blocks, every 5 s
        while time.monotonic() < held_at + plan.hold_seconds:
            await asyncio.sleep(min(5.0, held_at + plan.hold_seconds - time.monotonic()))
            scraped = await node.metrics()
            held_tasks = max(held_tasks, int(scraped["tidings_asyncio_tasks"]))
            blocks.append((time.monotonic(), int(scraped["tidings_python_allocated_blocks"])))
        stop.set()
        samples = await sampler
        await writing
        hold_seconds = time.monotonic() - held_at
        gc_after = gc_figures(await node.metrics())

        deadline = time.monotonic() + CATCH_UP_SECONDS
        while time.monotonic() < deadline and not all(
            h.watcher.caught_up(writer.heads) for h in clients
        ):
            await asyncio.sleep(0.2)
        watchers = [h.watcher for h in clients]
        behind = sum(not w.caught_up(writer.heads) for w in watchers)

        left_at = time.monotonic()
        left = await leave(clients)
        after = await node.reading(owner.token, projects)
        while after.differences(baseline) and time.monotonic() < left_at + RETURN_SECONDS:
            await asyncio.sleep(0.5)
            after = await node.reading(owner.token, projects)
        returned = time.monotonic() - left_at

        window = [(t, rss) for t, rss in samples if t >= held_at + plan.rss_warmup_seconds]
        per_second, error = slope(window)
        span = window[-1][0] - window[0][0] if window else 0.0
        held_rss = statistics.fmean(rss for _, rss in window) if window else 0.0
        counted = [(t, n) for t, n in blocks if t >= held_at + plan.rss_warmup_seconds]
        per_second_blocks, blocks_error = slope(counted)
        return Report(
            plan=plan.name,
            clients=len(clients),
            subscriptions=len(clients) * plan.projects_per_client,
            projects=len(projects),
            hold_seconds=round(hold_seconds, 1),
            connect_seconds=round(connect_seconds, 2),
            changes=writer.changes,
            events_received=sum(w.events for w in watchers),
            gaps=sum(w.gaps for w in watchers),
            behind=behind,
            heartbeats_fewest=min(w.heartbeats for w in watchers),
            baseline_rss_mib=round(baseline.rss_kib / 1024, 1),
            held_rss_mib=round(held_rss / 1024, 1),
            hold_rss_mib=(
                round(samples[0][1] / 1024, 1),
                round((window or samples)[0][1] / 1024, 1),
                round(samples[-1][1] / 1024, 1),
            ),
            after_rss_mib=round(after.rss_kib / 1024, 1),
            kib_per_connection=round((held_rss - baseline.rss_kib) / len(clients), 2),
            rss_samples=len(window),
            growth_mib_per_hour=round(per_second * 3600 / 1024, 3),
            growth_ci95_mib_per_hour=round(1.96 * error * 3600 / 1024, 3),
            resolution_mib_per_hour=round(PAGE_KIB / span * 3600 / 1024, 3) if span else 0.0,
            blocks_per_hour=round(per_second_blocks * 3600),
            blocks_ci95_per_hour=round(min(1.96 * blocks_error * 3600, 1e12)),
            held_blocks=(counted[0][1], counted[-1][1]) if counted else (0, 0),
            held_tasks=held_tasks,
            gc_while_held={k: gc_after[k] - gc_before[k] for k in gc_after},
            left=left,
            returned_seconds=round(returned, 1),
            baseline=baseline.figures,
            after=after.figures,
            threads=(baseline.threads, after.threads),
            not_back=after.differences(baseline),
            load_average=(load_start, os.getloadavg()[0]),
            seconds=round(time.monotonic() - began, 1),
            details={"rss_kib": [(round(t - held_at, 2), rss) for t, rss in samples]},
        )
    finally:
        for held in clients:
            if held.client.transport is not None:
                held.client.transport.abort()
        with contextlib.suppress(Exception):
            await node.stop()
        node.child.kill_now()
        if keep:
            print(f"held: node log kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="the variant make test runs")
    parser.add_argument("--clients", type=int, help="instead of the plan's")
    parser.add_argument(
        "--hold", type=float, help="seconds held, instead of the plan's (slope: last 120 s)"
    )
    parser.add_argument(
        "--window", type=float, help="seconds at the end of the hold the memory slope is over"
    )
    parser.add_argument("--keep", action="store_true", help="keep the node's log and data")
    parser.add_argument("--samples", action="store_true", help="print every RSS sample")
    parser.add_argument(
        "--env", action="append", default=[], metavar="TIDINGS_X=VALUE", help="a node setting"
    )
    args = parser.parse_args(argv)
    plan = FAST if args.fast else FULL
    if args.clients is not None:
        plan = replace(plan, clients=args.clients)
    if args.hold is not None:
        # The slope over the last 120 s as in the plan, or over the second half if shorter.
        warmup = max(args.hold - 120.0, args.hold / 2)
        plan = replace(plan, hold_seconds=args.hold, rss_warmup_seconds=warmup)
    if args.window is not None:
        plan = replace(plan, rss_warmup_seconds=max(0.0, plan.hold_seconds - args.window))
    if args.env:
        settings = dict(plan.env) | dict(e.split("=", 1) for e in args.env)
        plan = replace(plan, env=tuple(settings.items()))
    if plan.pin:
        if (os.cpu_count() or 1) < 2:
            plan = replace(plan, pin=False)
        else:
            os.sched_setaffinity(0, {CLIENT_CPU})
    # One file descriptor a client: up to the hard limit.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < plan.clients + 1000:
        parser.error(f"{plan.clients} clients need `ulimit -n` above {plan.clients + 1000}")
    try:
        import uvloop
    except ImportError:
        report = asyncio.run(run(plan, keep=args.keep))
    else:
        report = uvloop.run(run(plan, keep=args.keep))
    print(report.table())
    if args.samples:
        print(orjson.dumps(report.details).decode())
    print(report.json())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
