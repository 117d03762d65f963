"""``make bench``: tidings against the naive pattern and Node's ``ws``, side by side.

Servers run pinned to CPU 0; the load generator (and this script) to CPU 1. Each scenario
runs in rounds, and in every round each server runs once, in turn (A B C A B C …). Ratios
are taken within a round, then the median over rounds, so a drift in the machine's speed
cancels. Prints one JSON line per run as it ends, then a markdown table per scenario and
the targets. Everything is on loopback, bounded in count and in time.

    python bench/run.py [--rounds N]
                        [--only write,write-kinds,fanout,e2e,e2e-writers,stalled,resume,
                                connect,restart,restart-node,idle,idle-node]
                        [--servers tidings,tidings-pg,…] [--cases NAME,…]
                        [--ablation] [--quick] [--out FILE] [--profile FILE]

``make bench BENCH_ARGS="--only write"`` runs one phase alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servers import BENCH, PYTHON, VARIANTS, Server, TidingsAccount, cpu_seconds, start

SERVER_CPU, LOAD_CPU = "0", "1"
QUEUE_BYTES = 4 * 1024 * 1024  # tidings' default TIDINGS_WS_MAX_QUEUE_BYTES


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    digits: int = 0


@dataclass
class Scenario:
    name: str
    title: str
    variants: tuple[str, ...]
    cases: dict[str, dict[str, Any]]  # case name → load generator config
    figures: tuple[Figure, ...]
    rounds: int | None = None  # None: the --rounds option
    heartbeat: float = 30.0
    results: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)

    def values(self, case: str, variant: str, key: str) -> list[float]:
        return [r[key] for r in self.results.get((case, variant), []) if r.get(key) is not None]

    def median(self, case: str, variant: str, key: str) -> float | None:
        values = self.values(case, variant, key)
        return statistics.median(values) if values else None

    def ratio(self, case: str, key: str, a: str, b: str) -> float | None:
        """Median over rounds of a's figure divided by b's in the same round."""
        pairs = zip(self.results.get((case, a), []), self.results.get((case, b), []), strict=False)
        ratios = [x[key] / y[key] for x, y in pairs if x.get(key) and y.get(key)]
        return statistics.median(ratios) if ratios else None


FANOUT = (
    Figure("events_per_s", "events/s"),
    Figure("p50_ms", "latency p50 (ms)", 1),
    Figure("p99_ms", "latency p99 (ms)", 1),
    Figure("server_cpu", "server CPU (share of its core)", 2),
    Figure("server_peak_rss_mib", "server peak RSS (MiB)", 1),
    Figure("loadgen_cpu", "load generator CPU", 2),
)


IDLE = (
    Figure("kib_per_connection", "KiB per connection", 1),
    Figure("server_rss_mib", "server RSS, all its processes (MiB)", 1),
    Figure("open", "connections open at the end"),
    Figure("heartbeats_min", "heartbeats received (fewest)"),
    Figure("connects_per_s", "connections + subscriptions per second"),
)


WRITE = (
    Figure("changes_per_s", "changes/s"),
    Figure("p50_ms", "latency p50 (ms)", 1),
    Figure("p99_ms", "latency p99 (ms)", 1),
    Figure("max_ms", "latency max (ms)", 1),
    Figure("server_cpu", "server CPU (share of its core)", 2),
    Figure("errors", "failed changes"),
)
WRITE_CHANGES = 3200  # per case: PATCH, upload, member add, custom event in turn


def write_cases(scale: int) -> dict[str, dict[str, Any]]:
    return {
        f"{writers} writers, {projects} project{'s' if projects > 1 else ''}": {
            "scenario": "write",
            "writers": writers,
            "projects": projects,
            "changes": WRITE_CHANGES // scale,
        }
        for projects in (1, 32)
        for writers in (8, 32)
    }


# One kind of change at a time (writes.py's KINDS), 8 writers on one project.
WRITE_KINDS = {
    "project PATCH": "patch",
    "custom event": "event",
    "file upload": "upload",
    "member add": "member",
    "project create": "create",
    "file delete": "delete",
}


def write_kind_cases(scale: int) -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = {
        name: {
            "scenario": "write",
            "writers": 8,
            "projects": 1,
            "changes": WRITE_CHANGES // scale,
            "kinds": [kind],
        }
        for name, kind in WRITE_KINDS.items()
    }
    # A project that has lived a while: its log holds as many events as it keeps, so
    # every change also trims it (as most changes to a busy project do).
    cases["project PATCH, a full log"] = {**cases["project PATCH"], "full_log": True}
    return cases


EVENT_HISTORY = 10_000  # TIDINGS_EVENT_HISTORY's default, which the servers run with


E2E_WRITER_CHANGES = 800
# The cases whose every client is a user of its own with a token of its own (none in the
# server's caches yet), as when a node's users come back, spread over RESTART_PROJECTS
# projects; the others share one user and one credential, cached after the first connect.
ONE_USER_EACH = "bearer token, one user per client"
WARM_CLIENTS = 100  # loadgen.py's connect_rate warms up with this many first

RESTART = (
    Figure("catch_up_p50_s", "release → every missed event, p50 (s)", 3),
    Figure("catch_up_p99_s", "release → every missed event, p99 (s)", 3),
    Figure("catch_up_max_s", "release → every missed event, max (s)", 3),
    Figure("caught_up", "clients with every event, once, in order"),
    Figure("failures", "connects refused, reset or timed out; HTTP errors; `error`s"),
    Figure("closed_1012", "clients closed with 1012 at the stop"),
    Figure("stop_s", "SIGTERM → process gone (s)", 2),
    Figure("start_s", "start → /healthz answers (s)", 2),
    Figure("server_cpu", "server CPU during the catch-up (share of its core)", 2),
    Figure("loadgen_cpu", "load generators' CPU during the catch-up (share of their core)", 2),
    Figure("server_log_errors", "tracebacks in the server's log"),
)
RESTART_PROJECTS = 100
RESTART_EVENTS = 1000
RESTART_PER_LOADGEN = 5000
PROFILE: Path | None = None  # --profile: where the restart scenario writes its cProfile


def scenarios(quick: bool, ablation: bool) -> list[Scenario]:
    scale = 10 if quick else 1
    restart_clients = 10_000 // scale
    burst = f"1,000 subscribers of one project, {200 // scale} events of ~256 B published at once"
    fanout = {"scenario": "fanout", "clients": 1000, "events": 200 // scale, "size": 256}
    if ablation:
        return [
            Scenario(
                "ablation",
                f"Ablation, fan-out: {burst}",
                ("tidings-batch", "tidings", "tidings-asgi", "naive-queued", "naive", "node"),
                {"fan-out": fanout},
                FANOUT,
            )
        ]
    return [
        Scenario(
            "write",
            "Writes: concurrent REST writers (project PATCH, small file upload, member add, "
            "custom event, in turn), no subscribers",
            ("tidings", "tidings-pg"),
            write_cases(scale),
            WRITE,
        ),
        Scenario(
            "write-kinds",
            "Writes, one kind of change at a time: 8 writers on one project, no subscribers "
            "(member adds: the project gains a member with each)",
            ("tidings", "tidings-pg"),
            write_kind_cases(scale),
            WRITE,
        ),
        Scenario(
            "fanout",
            f"Fan-out: {burst}",
            ("tidings", "tidings-batch", "naive", "node"),
            {"fan-out": fanout},
            FANOUT,
        ),
        Scenario(
            "e2e",
            "End-to-end: REST change (PATCH /api/projects/{id}) → event at 1,000 subscribers",
            ("tidings", "naive", "node"),
            {"rest": {"scenario": "e2e", "clients": 1000, "changes": 30 // scale}},
            (
                Figure("p50_ms", "latency p50 (ms)", 1),
                Figure("p99_ms", "latency p99 (ms)", 1),
                Figure("server_cpu", "server CPU (share of its core)", 2),
                Figure("loadgen_cpu", "load generator CPU", 2),
            ),
        ),
        Scenario(
            "e2e-writers",
            "End-to-end under concurrent writers: 8 writers, "
            f"{E2E_WRITER_CHANGES // scale:,} changes in all (tidings and naive: "
            "`PATCH /api/projects/{id}` on keep-alive connections, each writer's next change "
            "once the last is answered; Node ws: 8 publisher sockets sending their share at "
            "once) → 1,000 subscribers of the project",
            ("tidings", "naive", "node"),
            {
                "8 writers": {
                    "scenario": "e2e-writers",
                    "clients": 1000,
                    "writers": 8,
                    "changes": E2E_WRITER_CHANGES // scale,
                }
            },
            (
                Figure("events_per_s", "events delivered/s"),
                Figure("changes_per_s", "changes/s", 1),
                Figure("p50_ms", "change → last receipt p50 (ms)", 1),
                Figure("p99_ms", "change → last receipt p99 (ms)", 1),
                Figure("max_ms", "change → last receipt max (ms)", 1),
                Figure("request_p99_ms", "REST round trip p99 (ms)", 1),
                Figure("server_cpu", "server CPU (share of its core)", 2),
                Figure("loadgen_cpu", "load generator CPU", 2),
                Figure("lost", "events missing, duplicated or out of order"),
            ),
        ),
        Scenario(
            "stalled",
            "Stalled clients: 50 fast subscribers, plus 5 that never read in the stalled "
            f"case; {320 // scale} events of 64 KiB at 128/s",
            ("tidings", "naive", "node"),
            {
                case: {
                    "scenario": "stalled",
                    "clients": 50,
                    "stalled": stalled,
                    "events": 320 // scale,
                    "size": 65536,
                    "rate": 128,
                    "timeout": 5,
                }
                for case, stalled in (("control", 0), ("stalled", 5))
            },
            (
                Figure("delivery_ratio", "fast clients' delivery ratio", 3),
                Figure("p50_ms", "fast clients' latency p50 (ms)", 1),
                Figure("p99_ms", "fast clients' latency p99 (ms)", 1),
                Figure("rss_growth_mib", "server RSS growth (MiB)", 1),
                Figure("server_cpu", "server CPU (share of its core)", 2),
            ),
        ),
        Scenario(
            "resume",
            "Resume: one client subscribing 10,000 events behind (real event log, SQLite)",
            ("tidings",),
            {"10,000 behind": {"scenario": "resume", "since": 1}},
            (
                Figure("catch_up_s", "time to catch up (s)", 3),
                Figure("events", "events received"),
                Figure("server_cpu", "server CPU (share of its core)", 2),
            ),
        ),
        Scenario(
            "connect",
            f"Connect rate: {3000 // scale:,} clients, 64 at a time, each connecting, "
            "authenticating and subscribing with `since` until `subscribed` (naive and "
            "Node ws: their bare connect + subscribe)",
            ("tidings", "tidings-pg", "naive", "node"),
            {
                f"{auth}": {
                    "scenario": "connect",
                    "clients": 3000 // scale,
                    "since": 1,
                    "auth": auth,
                    "servers": ["tidings", "tidings-pg"] + (["naive", "node"] if bare else []),
                }
                for auth, bare in (
                    ("bearer token", True),
                    ("session cookie", False),
                    (ONE_USER_EACH, False),
                )
            },
            (
                Figure("connects_per_s", "connections + subscriptions per second"),
                Figure("server_cpu", "server CPU (share of its core)", 2),
                Figure("loadgen_cpu", "load generator CPU", 2),
            ),
        ),
        Scenario(
            "restart",
            f"Restart: {restart_clients:,} clients subscribed to {RESTART_PROJECTS} projects; the "
            f"server stopped with SIGTERM, {RESTART_EVENTS:,} events committed while it is down, "
            "the server started again, then every client reconnecting at once (no jitter) "
            "and resuming with `since`",
            ("tidings",),
            {
                f"{restart_clients:,} clients": {
                    "scenario": "restart",
                    "clients": restart_clients,
                    "projects": RESTART_PROJECTS,
                    "events": RESTART_EVENTS,
                },
                f"{restart_clients:,} clients, one user each": {
                    "scenario": "restart",
                    "clients": restart_clients,
                    "projects": RESTART_PROJECTS,
                    "events": RESTART_EVENTS,
                    "auth": ONE_USER_EACH,
                },
            },
            RESTART,
            rounds=1,
        ),
        Scenario(
            "restart-node",
            f"Restart on one node: `tidings serve --workers 2` with the Redis broker, "
            f"{2 * restart_clients:,} clients, otherwise as above",
            ("tidings-2w",),
            {
                f"{2 * restart_clients:,} clients": {
                    "scenario": "restart",
                    "clients": 2 * restart_clients,
                    "projects": RESTART_PROJECTS,
                    "events": RESTART_EVENTS,
                }
            },
            RESTART,
            rounds=1,
        ),
        Scenario(
            "idle",
            "Idle memory: connected, subscribed clients with a heartbeat every second",
            ("tidings", "naive", "node"),
            {
                f"{5000 // scale:,}": {"scenario": "idle", "clients": 5000 // scale},
                # tidings' own large case is the next scenario: 20,000 on one node.
                f"{19900 // scale:,}": {
                    "scenario": "idle",
                    "clients": 19900 // scale,
                    "servers": ["naive", "node"],
                },
            },
            IDLE,
            rounds=1,
            heartbeat=1.0,
        ),
        Scenario(
            "idle-node",
            "Idle memory on one node: `tidings serve --workers 2` with the Redis broker",
            ("tidings-2w",),
            {
                f"{n:,}": {"scenario": "idle", "clients": n}
                for n in ((2000,) if quick else (20000,))
            },
            IDLE,
            rounds=1,
            heartbeat=1.0,
        ),
    ]


# -- running ------------------------------------------------------------------------------


MAX_CLIENTS_PER_LOADGEN = 10_000  # one process may open 20,000 files here (ulimit -Hn)


def spawn(
    server: Server, config: dict[str, Any], script: str = "loadgen.py"
) -> subprocess.Popen[str]:
    """A load generator against ``server``, pinned to its core."""
    argv = ["taskset", "-c", LOAD_CPU, PYTHON, str(BENCH / script)]
    argv.append(json.dumps({**server.target(), **config}))
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def until(proc: subprocess.Popen[str], phase: str) -> dict[str, Any]:
    """Read the load generator's lines up to ``phase``; return that line."""
    assert proc.stdout is not None
    for line in proc.stdout:
        message: dict[str, Any] = json.loads(line)
        if message.pop("phase") == phase:
            return message
    raise RuntimeError(f"load generator exited ({proc.wait()}) before {phase!r}")


def loadgen(
    server: Server, config: dict[str, Any], script: str = "loadgen.py", profile: bool = False
) -> dict[str, Any]:
    """Run one load generator; sample the server's CPU and memory around its window
    (``profile``: and cProfile it there, into ``--profile``'s file)."""
    proc = spawn(server, config, script)
    until(proc, "ready")
    server.reset_peak()
    rss = server.rss_kib() / 1024
    profiling = profile and PROFILE is not None and server.variant.server == "tidings"
    if profiling:
        profile_server(server, None)
    until(proc, "start")
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    until(proc, "end")
    cpu = (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)
    if profiling:
        profile_server(server, PROFILE)
    peak = server.peak_rss_kib() / 1024
    result = until(proc, "done")
    if proc.wait() != 0:
        raise RuntimeError(f"load generator failed against {server.variant.name}")
    return {
        "server_rss_mib": round(rss, 1),
        "server_cpu": round(cpu, 3),
        "server_peak_rss_mib": round(peak, 1),
        "rss_growth_mib": round(peak - rss, 1),
        **result,
    }


def run_case(
    scenario: Scenario, case: str, variant_name: str, account: TidingsAccount
) -> dict[str, Any]:
    variant = VARIANTS[variant_name]
    config = scenario.cases[case]
    server = start(variant, account, SERVER_CPU, heartbeat=scenario.heartbeat)
    try:
        if config["scenario"] == "idle":
            return idle(server, config, scenario.heartbeat)
        if config["scenario"] == "resume":
            seed(server, 10_000)
        if config["scenario"] == "write":
            if config.get("full_log"):
                seed(server, EVENT_HISTORY)
            return loadgen(server, write_setup(server, config), "writes.py", profile=True)
        if config["scenario"] == "restart":
            return restart(server, account, config)
        if config["scenario"] == "e2e-writers":
            publish = variant.server == "node"
            result = loadgen(server, {**config, "publish": publish}, profile=True)
            lost = result["expected"] - result["delivered"] + result["out_of_order"]
            return {**result, "lost": lost + result["partial_changes"]}
        if config.get("auth") == "session cookie":
            config = {**config, "cookie": server.login(account.password)}
        if config.get("auth") == ONE_USER_EACH:
            projects = make_projects(server, RESTART_PROJECTS)
            clients = make_clients(server, account, config["clients"] + WARM_CLIENTS, projects)
            config = {**config, "tokens_file": clients, "projects": projects}
        return loadgen(server, config)
    finally:
        server.stop()


def idle(server: Server, config: dict[str, Any], heartbeat: float) -> dict[str, Any]:
    """Memory held per idle connection: RSS with the clients minus RSS before them.

    Clients are spread over as many load generators as the open-file limit needs."""
    time.sleep(1)
    before = server.rss_kib()
    total = config["clients"]
    shares = [
        min(MAX_CLIENTS_PER_LOADGEN, total - i) for i in range(0, total, MAX_CLIENTS_PER_LOADGEN)
    ]
    procs = [spawn(server, {**config, "clients": share}) for share in shares]
    for proc in procs:
        until(proc, "ready")
    time.sleep(2.5 * heartbeat)  # heartbeats reach every client first
    rss = server.rss_kib()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("stop\n")
        proc.stdin.flush()
    results = [until(proc, "done") for proc in procs]
    if any(proc.wait() != 0 for proc in procs):
        raise RuntimeError(f"load generator failed against {server.variant.name}")
    return {
        "clients": sum(r["clients"] for r in results),
        "open": sum(r["open"] for r in results),
        "heartbeats_min": min(r["heartbeats_min"] for r in results),
        "connects_per_s": round(total / max(r["connect_s"] for r in results)),
        "server_rss_mib": round(rss / 1024, 1),
        "kib_per_connection": round((rss - before) / total, 2),
    }


def restart(server: Server, account: TidingsAccount, config: dict[str, Any]) -> dict[str, Any]:
    """The restart scenario: clients held by load generators (at most
    ``RESTART_PER_LOADGEN`` each) while the server stops, events are committed with it down
    (``bench/seed.py``, a process of its own on the same database), and it starts again
    on the same port; then one line releases every client at once."""
    projects = make_projects(server, config["projects"])
    total = config["clients"]
    if config.get("auth") == ONE_USER_EACH:
        config = {**config, "tokens_file": make_clients(server, account, total, projects)}
    procs = [
        spawn(
            server,
            {
                **config,
                "clients": min(RESTART_PER_LOADGEN, total - i),
                "offset": i,
                "projects": projects,
            },
        )
        for i in range(0, total, RESTART_PER_LOADGEN)
    ]
    for proc in procs:
        until(proc, "ready")
    began = time.monotonic()
    server.halt(timeout=60)
    stop_s = time.monotonic() - began
    assert server.data_dir is not None
    seeded = subprocess.run(
        [PYTHON, str(BENCH / "seed.py"), str(server.data_dir), str(config["events"]), *projects],
        env=server.env,
        check=True,
        capture_output=True,
        text=True,
    )
    heads = json.loads(seeded.stdout)
    began = time.monotonic()
    server.relaunch()
    start_s = time.monotonic() - began
    profiling = PROFILE is not None and server.variant.server == "tidings"  # the bench hooks
    if profiling:  # cProfile of the server's event loop over the catch-up
        profile_server(server, None)
    cpu0, release = server.cpu_seconds(), time.time()
    loadgen_cpu0 = cpu_seconds(proc.pid for proc in procs)
    line = json.dumps({"heads": heads, "release": release}) + "\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(line)
        proc.stdin.flush()
    for proc in procs:
        until(proc, "end")
    wall = time.time() - release
    cpu = (server.cpu_seconds() - cpu0) / wall
    loadgen_cpu = (cpu_seconds(proc.pid for proc in procs) - loadgen_cpu0) / wall
    if profiling:
        profile_server(server, PROFILE)
    results = [until(proc, "done") for proc in procs]
    if any(proc.wait() != 0 for proc in procs):
        raise RuntimeError(f"load generator failed against {server.variant.name}")
    times = sorted(t for r in results for t in r["caught_up"])
    errors: dict[str, int] = {}
    closes: dict[str, int] = {}
    for r in results:
        for key, n in r["errors"].items():
            errors[key] = errors.get(key, 0) + n
        for key, n in r["closes"].items():
            closes[key] = closes.get(key, 0) + n
    assert server.log is not None
    log = server.log.read_text(errors="replace")

    def pct(q: float) -> float | None:
        return round(times[min(len(times) - 1, int(q * len(times)))], 3) if times else None

    missing = sum(r["missing"] for r in results)
    out_of_order = sum(r["out_of_order"] for r in results)
    return {
        "clients": total,
        "caught_up": total - missing if out_of_order == 0 else None,
        "missing": missing,
        "out_of_order": out_of_order,
        "events": sum(r["events"] for r in results),
        "catch_up_p50_s": pct(0.5),
        "catch_up_p99_s": pct(0.99),
        "catch_up_max_s": times[-1] if times else None,
        "failures": sum(errors.values()),
        "errors": errors,
        "closes": closes,
        "closed_1012": closes.get("1012", 0),
        "stop_s": round(stop_s, 2),
        "start_s": round(start_s, 2),
        "server_cpu": round(cpu, 3),
        "loadgen_cpu": round(loadgen_cpu, 3),
        "server_log_errors": log.count("Traceback"),
        "first_log_error": log[log.find("Traceback") :][:1500] if "Traceback" in log else None,
    }


def profile_server(server: Server, out: Path | None) -> None:
    """Start cProfile in the tidings server (``out`` None), or stop it and write to ``out``."""
    import httpx

    body = {} if out is None else {"file": str(out.resolve())}
    response = httpx.post(f"http://127.0.0.1:{server.port}/bench/profile", json=body)
    response.raise_for_status()


def seed(server: Server, count: int) -> None:
    """Put ``count`` events of ~256 B in the project's log through ``EventLog.record``."""
    import httpx

    response = httpx.post(
        f"http://127.0.0.1:{server.port}/bench/seed",
        json={"project_id": server.project_id, "count": count, "size": 120},
        timeout=300,
    )
    response.raise_for_status()


def make_projects(server: Server, count: int) -> list[str]:
    """The server's project and ``count - 1`` more, made over REST."""
    import httpx

    projects = [server.project_id]
    auth = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", headers=auth) as client:
        while len(projects) < count:
            response = client.post("/api/projects", json={"name": f"bench {len(projects)}"})
            response.raise_for_status()
            projects.append(response.json()["id"])
    return projects


def make_clients(server: Server, account: TidingsAccount, count: int, projects: list[str]) -> str:
    """``count`` users, each with a token and a member of one of ``projects`` (client
    ``k`` of ``projects[k mod len(projects)]``, as the load generators assign them): the
    path of a file of their tokens, one a line (too many for a command line)."""
    import httpx

    response = httpx.post(
        f"http://127.0.0.1:{server.port}/bench/clients",
        json={"count": count, "projects": projects},
        timeout=300,
    )
    response.raise_for_status()
    path = account.root / f"tokens-{server.port}.txt"
    path.write_text("\n".join(response.json()["tokens"]))
    return str(path)


def write_setup(server: Server, config: dict[str, Any]) -> dict[str, Any]:
    """The write case's projects (the server's own and more, made over REST), a user for
    every member add and, for file deletes, the files to delete."""
    import httpx

    base = f"http://127.0.0.1:{server.port}"
    auth = {"Authorization": f"Bearer {server.token}"}
    projects = [server.project_id]
    with httpx.Client(base_url=base, headers=auth, timeout=60) as client:
        while len(projects) < config["projects"]:
            response = client.post("/api/projects", json={"name": f"bench {len(projects)}"})
            response.raise_for_status()
            projects.append(response.json()["id"])
        response = client.post("/bench/users", json={"prefix": "m", "count": config["changes"]})
        response.raise_for_status()
        files = []
        if "delete" in config.get("kinds", ()):  # the files to delete, in the first project
            for n in range(config["changes"]):
                body = {"file": (f"delete-me-{n}.txt", b"to be deleted", "text/plain")}
                response = client.post(f"/api/projects/{projects[0]}/files", files=body)
                response.raise_for_status()
                files.append(response.json()["id"])
    return {**config, "projects": projects, "users": "m", "files": files}


def run(selected: list[Scenario], rounds: int, out: Path | None) -> None:
    account = TidingsAccount()
    lines: list[dict[str, Any]] = []  # one per run, as printed
    try:
        for scenario in selected:
            began = time.monotonic()
            for round_ in range(scenario.rounds or rounds):
                for variant in scenario.variants:
                    for case, config in scenario.cases.items():
                        if variant not in config.get("servers", scenario.variants):
                            continue
                        result = run_case(scenario, case, variant, account)
                        scenario.results.setdefault((case, variant), []).append(result)
                        line: dict[str, Any] = {"scenario": scenario.name, "case": case}
                        line["server"] = variant
                        line |= {"round": round_ + 1, **result}
                        line["load_average"] = Path("/proc/loadavg").read_text().split()[:3]
                        lines.append(line)
                        print(json.dumps(line), flush=True)
            took = time.monotonic() - began
            print(f"{scenario.name}: {took:.0f} s", file=sys.stderr, flush=True)
    finally:
        account.cleanup()
    report = "\n".join([machine(), *(table(s) for s in selected), targets(selected)])
    print("\n" + report)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report + "\n\n" + "\n".join(json.dumps(line) for line in lines) + "\n")


# -- reporting ----------------------------------------------------------------------------


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return (
        f"Machine: {os.cpu_count()} × {cpu}, Linux {platform.release()}, "
        f"Python {platform.python_version()}, Node {node}. "
        f"Servers on CPU {SERVER_CPU}, load generator on CPU {LOAD_CPU}.\n"
    )


def fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def table(scenario: Scenario) -> str:
    subject, others = scenario.variants[0], scenario.variants[1:]
    head = ["", "figure", *(VARIANTS[v].label for v in scenario.variants)]
    head += [f"{VARIANTS[subject].label} ÷ {VARIANTS[o].label}" for o in others]
    rows = [head, ["---"] * len(head)]
    for case in scenario.cases:
        for figure in scenario.figures:
            row = [case, figure.label]
            row += [
                fmt(scenario.median(case, v, figure.key), figure.digits) for v in scenario.variants
            ]
            for other in others:
                ratio = scenario.ratio(case, figure.key, subject, other)
                row.append("–" if ratio is None else f"{ratio:.2f}×")
            rows.append(row)
    runs = len(scenario.results.get((next(iter(scenario.cases)), subject), []))
    body = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    return f"### {scenario.title}\n\nMedians of {runs} round(s).\n\n{body}\n"


def equals(expected: float) -> Callable[[float], bool]:
    return lambda value: value == expected


def targets(selected: list[Scenario]) -> str:
    by_name = {s.name: s for s in selected}
    checks: list[tuple[str, str, bool | None]] = []

    def check(
        name: str, measured: float | None, ok: Callable[[float], bool], unit: str = ""
    ) -> None:
        shown = "–" if measured is None else f"{measured:,.2f}{unit}"
        checks.append((name, shown, None if measured is None else ok(measured)))

    for s in (by_name.get("write"), by_name.get("write-kinds")):
        if s is None:
            continue
        for variant in s.variants:
            label = VARIANTS[variant].label
            for case, config in s.cases.items():
                check(
                    f"{s.name} {case}, {label}: changes/s ≥ 1,000",
                    s.median(case, variant, "changes_per_s"),
                    lambda v: v >= 1000,
                )
                if config["writers"] == 8:
                    check(
                        f"{s.name} {case}, {label}: p99 ≤ 50 ms",
                        s.median(case, variant, "p99_ms"),
                        lambda v: v <= 50,
                        " ms",
                    )
                    check(
                        f"{s.name} {case}, {label}: max ≤ 200 ms",
                        s.median(case, variant, "max_ms"),
                        lambda v: v <= 200,
                        " ms",
                    )
    if (s := by_name.get("fanout")) is not None:
        for variant in ("tidings", "tidings-batch"):
            label = VARIANTS[variant].label
            check(
                f"fan-out events/s, {label} ÷ Node ws ≥ 1.0",
                s.ratio("fan-out", "events_per_s", variant, "node"),
                lambda r: r >= 1.0,
                "×",
            )
            check(
                f"fan-out events/s, {label} ÷ naive ≥ 5",
                s.ratio("fan-out", "events_per_s", variant, "naive"),
                lambda r: r >= 5.0,
                "×",
            )
            check(
                f"fan-out p99, {label} ÷ Node ws ≤ 1.0",
                s.ratio("fan-out", "p99_ms", variant, "node"),
                lambda r: r <= 1.0,
                "×",
            )
    if (s := by_name.get("idle")) is not None:
        for case, config in s.cases.items():
            if "tidings" not in config.get("servers", s.variants):
                continue
            check(
                f"idle KiB per connection at {case} ≤ 16",
                s.median(case, "tidings", "kib_per_connection"),
                lambda v: v <= 16,
                " KiB",
            )
            check(
                f"idle connections held at {case}",
                s.median(case, "tidings", "open"),
                equals(config["clients"]),
            )
    if (s := by_name.get("idle-node")) is not None:
        for case, config in s.cases.items():
            check(
                f"one node holds {case} connections",
                s.median(case, "tidings-2w", "open"),
                equals(config["clients"]),
            )
            check(
                f"idle KiB per connection on one node at {case} ≤ 16",
                s.median(case, "tidings-2w", "kib_per_connection"),
                lambda v: v <= 16,
                " KiB",
            )
    if (s := by_name.get("stalled")) is not None:
        check(
            "stalled: fast clients' delivery ratio = 1.0",
            s.median("stalled", "tidings", "delivery_ratio"),
            lambda v: v == 1.0,
        )
        pairs = zip(
            s.results.get(("stalled", "tidings"), []),
            s.results.get(("control", "tidings"), []),
            strict=False,
        )
        ratios = [
            a["p99_ms"] / b["p99_ms"] for a, b in pairs if a.get("p99_ms") and b.get("p99_ms")
        ]
        check(
            "stalled: fast clients' p99 ÷ control ≤ 1.2",
            statistics.median(ratios) if ratios else None,
            lambda r: r <= 1.2,
            "×",
        )
        bound = 5 * QUEUE_BYTES / 2**20
        check(
            f"stalled: server RSS growth ≤ 5 stalled queues ({bound:.0f} MiB)",
            s.median("stalled", "tidings", "rss_growth_mib"),
            lambda v: v <= bound,
            " MiB",
        )
    if (s := by_name.get("resume")) is not None:
        check(
            "resume of 10,000 events ≤ 1 s",
            s.median("10,000 behind", "tidings", "catch_up_s"),
            lambda v: v <= 1.0,
            " s",
        )
    if (s := by_name.get("connect")) is not None:
        for variant in ("tidings", "tidings-pg"):
            for case in s.cases:
                check(
                    f"connect + {case} + subscribe per second, {VARIANTS[variant].label} ≥ 2,500",
                    s.median(case, variant, "connects_per_s"),
                    lambda v: v >= 2500,
                )
    if (s := by_name.get("e2e-writers")) is not None:
        check(
            "end-to-end, 8 writers: events delivered/s, tidings ÷ Node ws ≥ 1.0",
            s.ratio("8 writers", "events_per_s", "tidings", "node"),
            lambda r: r >= 1.0,
            "×",
        )
        check(
            "end-to-end, 8 writers: change → last receipt p99 ≤ 50 ms",
            s.median("8 writers", "tidings", "p99_ms"),
            lambda v: v <= 50,
            " ms",
        )
        check(
            "end-to-end, 8 writers: every event at every subscriber, once, in order",
            s.median("8 writers", "tidings", "lost"),
            equals(0),
        )
    for name in ("restart", "restart-node"):
        if (s := by_name.get(name)) is None:
            continue
        server = s.variants[0] if s.variants else "tidings"
        label = VARIANTS[server].label
        for case, config in s.cases.items():
            check(
                f"restart, {case}, {label}: all caught up within 5 s (max)",
                s.median(case, server, "catch_up_max_s"),
                lambda v: v <= 5,
                " s",
            )
            check(
                f"restart, {case}, {label}: clients with every event",
                s.median(case, server, "caught_up"),
                equals(config["clients"]),
            )
            check(
                f"restart, {case}, {label}: handshakes refused or failed",
                s.median(case, server, "failures"),
                equals(0),
            )
    if (s := by_name.get("e2e")) is not None:
        check(
            "end-to-end p99 at 1,000 subscribers ≤ 50 ms",
            s.median("rest", "tidings", "p99_ms"),
            lambda v: v <= 50,
            " ms",
        )
    rows = ["| target | tidings | met |", "| --- | --- | --- |"]
    for name, shown, ok in checks:
        rows.append(f"| {name} | {shown} | {'–' if ok is None else 'yes' if ok else 'NO'} |")
    return "### Targets\n\n" + "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="comma list of scenarios")
    parser.add_argument("--servers", help="comma list of servers (see servers.py)")
    parser.add_argument("--cases", help="comma list: only the cases whose name holds one")
    parser.add_argument("--ablation", action="store_true", help="fan-out, optimisation by step")
    parser.add_argument("--quick", action="store_true", help="a tenth of the work: a smoke run")
    parser.add_argument("--out", type=Path, help="also write the report and JSON lines here")
    parser.add_argument(
        "--profile",
        type=Path,
        help="restart, e2e-writers, write: cProfile tidings over the measured window into this "
        "file (the last case's)",
    )
    args = parser.parse_args()
    global PROFILE
    PROFILE = args.profile
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    selected = scenarios(args.quick, args.ablation)
    if args.only:
        wanted = set(args.only.split(","))
        selected = [s for s in selected if s.name in wanted]
    if args.servers:
        keep = args.servers.split(",")
        for scenario in selected:
            scenario.variants = tuple(v for v in scenario.variants if v in keep)
    if args.cases:
        parts = args.cases.split(",")
        for scenario in selected:
            scenario.cases = {
                name: case for name, case in scenario.cases.items() if any(p in name for p in parts)
            }
    started = time.monotonic()
    run(selected, args.rounds, args.out)
    print(f"\nmake bench took {time.monotonic() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
