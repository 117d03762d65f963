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
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
TIDINGS_CLI = str(Path(PYTHON).with_name("tidings"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Variant:
    """A server and the way its clients talk to it."""

    name: str
    label: str
    server: str  # "tidings", "naive" or "node"
    args: tuple[str, ...] = ()
    subprotocols: tuple[str, ...] = ()


VARIANTS = {
    v.name: v
    for v in (
        Variant("tidings", "tidings", "tidings"),
        Variant(
            "tidings-batch",
            "tidings, batch subprotocol",
            "tidings",
            subprotocols=("tidings.batch.v1",),
        ),
        Variant("tidings-asgi", "tidings, plain ASGI sends", "tidings", args=("--plain-asgi",)),
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
        subprocess.run(
            [TIDINGS_CLI, "users", "create", "bench", "--password-stdin"],
            input="bench-password\n",
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
        self.token = out.split()[-1]
        self._copies = 0

    def data_dir(self) -> Path:
        self._copies += 1
        copy = self.root / f"run{self._copies}"
        shutil.copytree(self.template, copy)
        return copy

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Server:
    variant: Variant
    process: subprocess.Popen[bytes]
    port: int
    project_id: str = "bench"
    token: str | None = None
    data_dir: Path | None = None
    _cpu_mark: float = field(default=0.0, init=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def _status_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def rss_kib(self) -> int:
        return self._status_kib("VmRSS")

    def peak_rss_kib(self) -> int:
        return self._status_kib("VmHWM")

    def reset_peak(self) -> None:
        """From now on, ``peak_rss_kib`` is the peak since this call."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def target(self) -> dict[str, object]:
        """What the load generator needs to reach this server."""
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "project_id": self.project_id,
            "token": self.token,
            "subprotocols": list(self.variant.subprotocols),
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def start(variant: Variant, account: TidingsAccount, cpu: str, heartbeat: float = 30.0) -> Server:
    """Start ``variant`` pinned to ``cpu`` and wait until it answers; tidings also gets a
    project, created over REST by the bench user."""
    port = free_port()
    data_dir: Path | None = None
    if variant.server == "tidings":
        data_dir = account.data_dir()
        argv = [PYTHON, str(BENCH / "tidings_app.py"), str(port), "--data-dir", str(data_dir)]
        argv += ["--heartbeat", str(heartbeat)]
    elif variant.server == "naive":
        argv = [PYTHON, str(BENCH / "naive_app.py"), str(port), "--heartbeat", str(heartbeat)]
    else:
        argv = ["node", str(BENCH / "node" / "server.js"), str(port), str(heartbeat)]
    process = subprocess.Popen(
        ["taskset", "-c", cpu, *argv, *variant.args],
        stdout=subprocess.DEVNULL,
        cwd=BENCH,
    )
    server = Server(variant, process, port, data_dir=data_dir)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{variant.name} exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{variant.name} did not start")
        time.sleep(0.05)
    if variant.server == "tidings":
        server.token = account.token
        response = httpx.post(
            f"{base}/api/projects",
            json={"name": "bench"},
            headers={"Authorization": f"Bearer {account.token}"},
        )
        response.raise_for_status()
        server.project_id = response.json()["id"]
    return server
