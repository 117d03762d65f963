"""The load generator: the client side of one benchmark scenario, in a process of its own.

``run.py`` starts it pinned to the core the server does not use, with the scenario as JSON
on the command line, and reads JSON lines back:

- ``{"phase": "ready"}``: clients connected and subscribed, nothing in flight;
- ``{"phase": "start"}`` … ``{"phase": "end"}``: the measured part (``run.py`` samples
  the server's CPU time and memory at both ends);
- ``{"phase": "done", ...}``: the figures; the process then exits.

The idle scenario waits for a line on standard input between ready and done.

Latency is measured from the moment the load generator sends an event (or the REST request
behind it) to the moment a subscriber's read returns it, on one clock. Every event a
subscriber receives is counted, and durable events are checked for order (``seq`` one
more than the last): a fast but lossy or reordering server would show it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import resource
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop
from writes import answer as http_answer
from writes import encode_request
from wsclient import HandshakeError, WSClient, connect

EVENT_TYPES = ("file.uploaded", "project.updated")
_SENT = re.compile(rb'"t":([0-9.]+)')  # each published event carries its send time as "t"
_SEQ = re.compile(rb'"seq":([0-9]+)')


class Subscriber:
    """One client's view: its subscription, heartbeats, and the last ``seq`` it got."""

    __slots__ = ("heartbeats", "last_seq", "subscribed")

    def __init__(self) -> None:
        self.subscribed: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.heartbeats = 0
        self.last_seq = 0


class Stats:
    """Everything a group of subscribers received, and a wait for a total to be reached.

    Published events are only counted as they arrive; their send times and ``seq`` are
    read afterwards (:meth:`analyse`), so that the load generator spends about a
    microsecond on each, frame parsing included, and keeps up with the fastest server.
    """

    def __init__(self) -> None:
        self.latencies = array("d")
        self.events = 0
        self.out_of_order = 0
        self.last_receipt = 0.0
        # Per change or published event (its send time, as sent): the last receipt and
        # the number of receipts. Kept only when asked for (the concurrent writers case).
        self.receipts: dict[str, list[float]] | None = None
        self._timed: list[tuple[Subscriber, float, bytes]] = []
        self._goal = 0
        self._reached: asyncio.Future[None] | None = None

    async def reached(self, goal: int, timeout: float) -> bool:
        """Wait until ``goal`` events in all have arrived; False after ``timeout``."""
        if self.events >= goal:
            return True
        self._goal = goal
        self._reached = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._reached, timeout)
        except TimeoutError:
            return False
        return True

    def restart(self) -> int:
        """Forget the latencies so far (a warm-up's); return the event count to start from."""
        self.analyse()
        self.latencies = array("d")
        return self.events

    def on_messages(self, client: WSClient, payloads: list[bytes], now: float) -> None:
        sub: Subscriber = client.state  # type: ignore[assignment]
        for payload in payloads:
            count = payload.count(b'"t":')
            if count:  # published events (one, or an array): count them now
                self.events += count
                self.last_receipt = now
                if count == 1 and len(payload) > 1024:  # send time and seq come first
                    payload = payload[:1024]
                self._timed.append((sub, now, payload))
                continue
            decoded = orjson.loads(payload)
            for message in decoded if type(decoded) is list else (decoded,):
                kind = message.get("type")
                if kind in EVENT_TYPES:
                    self.events += 1
                    self.last_receipt = now
                    self._check_order(sub, message.get("seq"))
                    if kind == "project.updated":  # the REST change's description: its time
                        sent = message["data"]["description"]
                        self.latencies.append(now - float(sent))
                        if self.receipts is not None:
                            self._receipt(sent, now)
                elif kind == "subscribed":
                    sub.last_seq = message.get("seq") or 0
                    if not sub.subscribed.done():
                        sub.subscribed.set_result(message)
                elif kind == "system.heartbeat":
                    sub.heartbeats += 1
                elif kind == "error" and not sub.subscribed.done():
                    sub.subscribed.set_exception(RuntimeError(f"subscribe failed: {message}"))
        if self._reached is not None and self.events >= self._goal and not self._reached.done():
            self._reached.set_result(None)

    def analyse(self) -> None:
        """Read the send times and seqs of the events counted so far."""
        for sub, now, payload in self._timed:
            sent = _SENT.findall(payload)
            self.latencies.extend([now - float(t) for t in sent])
            if self.receipts is not None:
                for t in sent:
                    self._receipt(t.decode(), now)
            for seq in _SEQ.findall(payload):
                self._check_order(sub, int(seq))
        self._timed = []

    def _receipt(self, sent: str, now: float) -> None:
        assert self.receipts is not None
        receipt = self.receipts.get(sent)
        if receipt is None:
            self.receipts[sent] = [now, 1.0]
        else:
            receipt[0] = max(receipt[0], now)
            receipt[1] += 1

    def _check_order(self, sub: Subscriber, seq: int | None) -> None:
        if seq is not None:
            if seq != sub.last_seq + 1:
                self.out_of_order += 1
            sub.last_seq = seq

    def figures(self) -> dict[str, Any]:
        self.analyse()
        lat = sorted(self.latencies)
        if not lat:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None}

        def pct(q: float) -> float:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2)

        return {"p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": round(lat[-1] * 1000, 2)}


_last_stamp = 0.0


def stamp() -> float:
    """The time now, as a send time no other event of this process has: the concurrent
    writers case tells changes apart by it."""
    global _last_stamp
    _last_stamp = max(time.time(), _last_stamp + 1e-6)
    return _last_stamp


class Target:
    def __init__(self, config: dict[str, Any]) -> None:
        self.host: str = config["host"]
        self.port: int = config["port"]
        self.project_id: str = config["project_id"]
        # Client k subscribes to projects[k mod len(projects)] (the restart scenario's
        # own list is its config's "projects" too).
        projects = config.get("projects")
        self.projects: list[str] = projects if isinstance(projects, list) else [self.project_id]
        token, cookie = config.get("token"), config.get("cookie")
        self.headers = [("Authorization", f"Bearer {token}")] if token else []
        if cookie:  # a browser's way: the session cookie instead of the token
            self.headers = [("Cookie", f"tidings_session={cookie}")]
        # A token a client (client k the k-th), each of a user of its own: what a server
        # meets when its users come back, none of them in its caches yet.
        self.tokens: list[str] = []
        if "tokens_file" in config:
            self.tokens = Path(config["tokens_file"]).read_text().split()
        self.subprotocols: list[str] = config.get("subprotocols", [])
        self._clients = 0  # clients connected by subscribers() so far

    def headers_of(self, client: int) -> list[tuple[str, str]]:
        """The headers of client number ``client`` (its token, with ``tokens_file``)."""
        if not self.tokens:
            return self.headers
        return [("Authorization", f"Bearer {self.tokens[client % len(self.tokens)]}")]

    async def subscribers(
        self,
        count: int,
        stats: Stats,
        *,
        concurrency: int = 64,
        since: int | None = None,
    ) -> list[WSClient]:
        """Connect ``count`` clients and subscribe each; return once all are subscribed."""
        gate = asyncio.Semaphore(concurrency)

        async def one() -> WSClient:
            client_number, self._clients = self._clients, self._clients + 1
            headers = self.headers_of(client_number)
            request: dict[str, Any] = {
                "type": "subscribe",
                "project_id": self.projects[client_number % len(self.projects)],
            }
            if since is not None:
                request["since"] = since
            async with gate:
                sub = Subscriber()
                client = await connect(
                    self.host,
                    self.port,
                    "/ws",
                    stats.on_messages,
                    headers=headers,
                    subprotocols=self.subprotocols,
                    state=sub,
                )
                client.send(orjson.dumps(request))
                await asyncio.wait_for(sub.subscribed, 60)
                return client

        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def publisher(self) -> WSClient:
        return await connect(self.host, self.port, "/bench/publish", lambda *args: None)

    def event(self, i: int, size: int) -> bytes:
        """A ``file.uploaded`` event whose frame, as servers send it, is about ``size``
        bytes (they add ``timestamp`` and, tidings, ``seq``: about 60 bytes)."""
        body = {
            "type": "file.uploaded",
            "project_id": self.project_id,
            "file": {
                "id": f"bench-{i}",
                "name": f"upload-{i}.bin",
                "path": "/bench",
                "size": 1024 + i,
                "asset_type": "other",
            },
            "t": stamp(),
            "pad": "",
        }
        body["pad"] = "x" * max(0, size - 60 - len(orjson.dumps(body)))
        return orjson.dumps(body)


def emit(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Window:
    """The measured part: announces it and reports the load generator's own CPU share."""

    def __enter__(self) -> Window:
        gc.collect()
        gc.disable()  # what arrives is kept for analysis: no collector passes over it
        emit({"phase": "start"})
        self.started, self.cpu = time.time(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        emit({"phase": "end"})
        gc.enable()
        self.wall = time.time() - self.started
        self.loadgen_cpu = round((cpu_seconds() - self.cpu) / max(self.wall, 1e-9), 3)


async def warm_up(target: Target, publisher: WSClient, *groups: tuple[Stats, int]) -> None:
    """A few events through every path first (Node's JIT, Python's caches, TCP windows);
    ``groups`` are (stats, number of clients) that must all receive them."""
    goals = [(stats, stats.events + 20 * clients) for stats, clients in groups]
    for i in range(20):
        publisher.send(target.event(-1 - i, 256))
    for stats, goal in goals:
        if not await stats.reached(goal, 60):
            raise RuntimeError("warm-up events did not arrive")


# -- scenarios ---------------------------------------------------------------------------


async def fanout(config: dict[str, Any]) -> dict[str, Any]:
    """``events`` events of ``size`` bytes published at once to ``clients`` subscribers."""
    target, stats = Target(config), Stats()
    clients, events = config["clients"], config["events"]
    await target.subscribers(clients, stats)
    publisher = await target.publisher()
    await warm_up(target, publisher, (stats, clients))
    base = stats.restart()
    emit({"phase": "ready"})
    with Window() as window:
        for i in range(events):
            publisher.send(target.event(i, config["size"]))
        complete = await stats.reached(base + events * clients, config.get("timeout", 60))
    delivered = stats.events - base
    duration = stats.last_receipt - window.started
    figures = stats.figures()
    return {
        "delivered": delivered,
        "expected": events * clients,
        "complete": complete,
        "events_per_s": round(delivered / duration) if duration > 0 else None,
        "duration_s": round(duration, 3),
        "out_of_order": stats.out_of_order,
        "loadgen_cpu": window.loadgen_cpu,
        **figures,
    }


async def end_to_end(config: dict[str, Any]) -> dict[str, Any]:
    """``changes`` REST updates, one after the other, each awaited by ``clients``."""
    target, stats = Target(config), Stats()
    clients = config["clients"]
    await target.subscribers(clients, stats)
    headers = dict(target.headers)
    base_url = f"http://{target.host}:{target.port}"
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as http:

        async def change() -> bool:
            goal = stats.events + clients
            sent = f"{time.time():.6f}"
            response = await http.patch(
                f"/api/projects/{target.project_id}", json={"description": sent}
            )
            response.raise_for_status()
            return await stats.reached(goal, 30)

        for _ in range(3):  # warm-up, as in the other scenarios
            await change()
        base = stats.restart()
        emit({"phase": "ready"})
        with Window() as window:
            complete = all([await change() for _ in range(config["changes"])])
    figures = stats.figures()
    return {
        "delivered": stats.events - base,
        "expected": config["changes"] * clients,
        "complete": complete,
        "out_of_order": stats.out_of_order,
        "loadgen_cpu": window.loadgen_cpu,
        **figures,
    }


async def end_to_end_writers(config: dict[str, Any]) -> dict[str, Any]:
    """``writers`` concurrent writers, ``changes`` in all, to ``clients`` subscribers of
    one project. REST servers: each writer keeps one keep-alive connection and PATCHes the
    project (its description the change's send time) as soon as its last change is
    answered. ``publish``: each writer is a publisher socket instead and sends its share
    of events at once (Node ``ws`` has no write path to wait for). Latency is from a
    change's request to its last receipt at any subscriber."""
    target, stats = Target(config), Stats()
    clients, writers, changes = config["clients"], config["writers"], config["changes"]
    await target.subscribers(clients, stats)
    publish = config.get("publish", False)
    requests: list[float] = []  # REST round trips
    errors: list[str] = []

    token = config.get("token") or ""

    async def rest_writer(count: int, connection: tuple[Any, Any] | None = None) -> None:
        reader, stream = connection or await asyncio.open_connection(target.host, target.port)
        host, path = f"{target.host}:{target.port}", f"/api/projects/{target.project_id}"
        try:
            for _ in range(count):
                sent = f"{stamp():.6f}"
                body = orjson.dumps({"description": sent})
                began = time.perf_counter()
                request = encode_request("PATCH", path, host, token, "application/json", body)
                stream.write(request)
                status = await http_answer(reader)
                if 200 <= status < 300:
                    requests.append(time.perf_counter() - began)
                else:
                    errors.append(f"PATCH {status}")
        finally:
            stream.close()

    def publisher(socket: WSClient, index: int, count: int) -> None:
        for i in range(count):
            socket.send(target.event(index * count + i, 256))

    if publish:
        await warm_up(target, await target.publisher(), (stats, clients))
        sockets = [await target.publisher() for _ in range(writers)]
    else:
        goal = stats.events + 3 * clients
        await rest_writer(3)  # warm-up, as in the other scenarios
        if not await stats.reached(goal, 60):
            raise RuntimeError("warm-up changes did not arrive")
        connections = [
            await asyncio.open_connection(target.host, target.port) for _ in range(writers)
        ]
    base = stats.restart()
    stats.receipts = {}
    share = changes // writers
    emit({"phase": "ready"})
    with Window() as window:
        if publish:
            for i, socket in enumerate(sockets):
                publisher(socket, i, share)
        else:
            await asyncio.gather(*(rest_writer(share, c) for c in connections))
        written = time.time()
        complete = await stats.reached(base + share * writers * clients, config.get("timeout", 120))
    delivered = stats.events - base
    figures = stats.figures()  # reads the published events' send times into receipts
    receipts = stats.receipts
    tails = sorted(last - float(sent) for sent, (last, _) in receipts.items())
    partial = sum(1 for _, count in receipts.values() if count != clients)

    def pct(q: float) -> float | None:
        return round(tails[min(len(tails) - 1, int(q * len(tails)))] * 1000, 2) if tails else None

    duration = stats.last_receipt - window.started
    requests.sort()
    request_p99 = round(requests[int(0.99 * len(requests))] * 1000, 2) if requests else None
    return {
        "delivered": delivered,
        "expected": share * writers * clients,
        "complete": complete and partial == 0 and not errors,
        "changes": len(receipts),
        # Publishers write without waiting for anything: no rate of changes to speak of.
        "changes_per_s": None
        if publish
        else round(share * writers / (written - window.started), 1),
        "events_per_s": round(delivered / duration) if duration > 0 else None,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": round(tails[-1] * 1000, 2) if tails else None,
        "receipt_p50_ms": figures["p50_ms"],  # every single receipt, not the last per change
        "request_p99_ms": request_p99,
        "partial_changes": partial,
        "out_of_order": stats.out_of_order,
        "errors": len(errors),
        "first_errors": errors[:5],
        "loadgen_cpu": window.loadgen_cpu,
    }


class Returner:
    """One client of the restart scenario: its project, the last ``seq`` it got, and what
    went wrong for it (connects refused or reset, HTTP errors on the upgrade, ``error``
    messages, events out of order)."""

    __slots__ = (
        "caught_up",
        "done",
        "errors",
        "head",
        "headers",
        "last_seq",
        "project",
        "subscribed",
    )

    def __init__(self, project: str, headers: list[tuple[str, str]]) -> None:
        loop = asyncio.get_running_loop()
        self.project = project
        self.headers = headers
        self.subscribed: asyncio.Future[None] = loop.create_future()  # this attempt's
        self.last_seq = 0
        self.head = 0  # the seq to reach after the restart
        self.caught_up = 0.0
        self.done: asyncio.Future[None] = loop.create_future()
        self.errors: list[str] = []


class Restart:
    """The restart scenario's message handler: ``seq`` order per client, and the moment
    each client reaches its project's head."""

    def __init__(self) -> None:
        self.out_of_order = 0
        self.events = 0

    def on_messages(self, client: WSClient, payloads: list[bytes], now: float) -> None:
        who: Returner = client.state  # type: ignore[assignment]
        for payload in payloads:
            message = orjson.loads(payload)
            kind = message.get("type")
            seq = message.get("seq")
            if kind == "subscribed":
                if who.head == 0:  # before the restart: where this client stands
                    who.last_seq = seq or 0
                if not who.subscribed.done():
                    who.subscribed.set_result(None)
            elif kind == "error":
                who.errors.append(f"error {message.get('code')}")
                if not who.subscribed.done():
                    who.subscribed.set_exception(RuntimeError(f"subscribe failed: {message}"))
            elif seq is not None and message.get("project_id") == who.project:
                self.events += 1
                if seq != who.last_seq + 1:
                    self.out_of_order += 1
                who.last_seq = seq
                if who.head and seq >= who.head and not who.done.done():
                    who.caught_up = now
                    who.done.set_result(None)


async def restart(config: dict[str, Any]) -> dict[str, Any]:
    """``clients`` clients subscribed to ``projects`` (client ``offset + i`` to project
    ``(offset + i) mod len(projects)``), held while ``run.py`` stops the server with
    SIGTERM, commits events and starts it again. Then one line on standard input,
    ``{"heads": {project: seq}, "release": time}``, lets every client reconnect at once,
    with no jitter, and resume with ``since`` its last ``seq``. A client that fails
    (refused, reset, an HTTP error on the upgrade, an ``error`` reply, a dropped
    connection) counts the failure and tries again after ``retry`` s. Reports each
    client's time from the release until it had every event up to its project's head."""
    target, handler = Target(config), Restart()
    projects: list[str] = config["projects"]
    offset, retry = config.get("offset", 0), config.get("retry", 0.5)

    async def open_one(who: Returner, since: int | None) -> WSClient:
        who.subscribed = asyncio.get_running_loop().create_future()
        client = await connect(
            target.host,
            target.port,
            "/ws",
            handler.on_messages,
            headers=who.headers,
            state=who,
            timeout=config.get("timeout", 120),
        )
        request: dict[str, Any] = {"type": "subscribe", "project_id": who.project}
        if since is not None:
            request["since"] = since
        client.send(orjson.dumps(request))
        try:
            await asyncio.wait_for(who.subscribed, 60)
        except BaseException:
            client.close()
            raise
        return client

    async def first(who: Returner, gate: asyncio.Semaphore) -> WSClient:
        async with gate:
            return await open_one(who, None)

    gate = asyncio.Semaphore(64)
    returners = [
        Returner(projects[(offset + i) % len(projects)], target.headers_of(offset + i))
        for i in range(config["clients"])
    ]
    clients = await asyncio.gather(*(first(w, gate) for w in returners))
    gc.collect()
    emit({"phase": "ready"})
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    order = json.loads(line)
    heads: dict[str, int] = order["heads"]
    closes: dict[str, int] = {}
    for client in clients:
        code = client.closed.result() if client.closed.done() else "open"
        closes[str(code)] = closes.get(str(code), 0) + 1
        client.close()
    for who in returners:
        who.head = heads[who.project]
        if who.last_seq >= who.head:
            who.done.set_result(None)
    emit({"phase": "start"})
    gc.disable()

    async def come_back(who: Returner) -> WSClient | None:
        deadline = time.time() + config.get("deadline", 120)
        while time.time() < deadline:
            try:
                client = await open_one(who, who.last_seq)
            except HandshakeError as exc:  # an HTTP answer instead of 101
                who.errors.append(str(exc).split(" ", 2)[1] if " " in str(exc) else str(exc))
            except ConnectionRefusedError:
                who.errors.append("refused")
            except ConnectionResetError:
                who.errors.append("reset")
            except TimeoutError:
                who.errors.append("timeout")
            except (OSError, RuntimeError) as exc:
                who.errors.append(type(exc).__name__)
            else:
                ended: asyncio.Future[Any] = asyncio.shield(client.closed)
                waits: list[asyncio.Future[Any]] = [who.done, ended]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if who.done.done():
                    ended.cancel()
                    return client
                who.errors.append(f"closed {client.closed.result()}")
            await asyncio.sleep(retry)
        return None

    release = float(order["release"])
    back = await asyncio.gather(*(come_back(w) for w in returners))
    emit({"phase": "end"})
    gc.enable()
    for came in back:
        if came is not None:
            came.close()
    errors: dict[str, int] = {}
    for who in returners:
        for error in who.errors:
            errors[error] = errors.get(error, 0) + 1
    return {
        "clients": len(returners),
        "closes": closes,
        "caught_up": [
            round(w.caught_up - release, 4) for w in returners if w.done.done() and w.caught_up
        ],
        "already": sum(1 for w in returners if w.done.done() and not w.caught_up),  # none missed
        "missing": sum(1 for w in returners if not w.done.done()),
        "events": handler.events,
        "out_of_order": handler.out_of_order,
        "errors": errors,
    }


async def stalled(config: dict[str, Any]) -> dict[str, Any]:
    """Fast subscribers plus ``stalled`` that never read, events paced at ``rate``/s; the
    window ends when every fast subscriber has every event, or ``timeout`` s after the
    last one was sent."""
    target = Target(config)
    fast, slow = Stats(), Stats()
    n_fast, n_stalled, events = config["clients"], config["stalled"], config["events"]
    await target.subscribers(n_fast, fast)
    stuck = await target.subscribers(n_stalled, slow)
    publisher = await target.publisher()
    await warm_up(target, publisher, (fast, n_fast), (slow, n_stalled))
    base = fast.restart()
    for client in stuck:
        client.stall()
    emit({"phase": "ready"})
    with Window() as window:
        for i in range(events):
            await asyncio.sleep(max(0.0, window.started + i / config["rate"] - time.time()))
            publisher.send(target.event(i, config["size"]))
        complete = await fast.reached(base + events * n_fast, config.get("timeout", 30))
    delivered = fast.events - base
    # Let the stalled clients read again, to see how each server dealt with them.
    for client in stuck:
        if client.transport is not None and not client.transport.is_closing():
            client.transport.resume_reading()
    if stuck:
        await asyncio.wait([c.closed for c in stuck], timeout=3)
    codes = [c.closed.result() if c.closed.done() else "open" for c in stuck]
    figures = fast.figures()
    return {
        "delivered": delivered,
        "expected": events * n_fast,
        "delivery_ratio": round(delivered / (events * n_fast), 4),
        "complete": complete,
        "stalled_closed": {str(code): codes.count(code) for code in set(codes)},
        "out_of_order": fast.out_of_order,
        "loadgen_cpu": window.loadgen_cpu,
        **figures,
    }


async def idle(config: dict[str, Any]) -> dict[str, Any]:
    """Hold ``clients`` subscribed connections until told to stop on standard input."""
    target, stats = Target(config), Stats()
    began = time.monotonic()
    clients = await target.subscribers(config["clients"], stats)
    connecting = time.monotonic() - began
    gc.collect()
    emit({"phase": "ready"})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    subs: list[Subscriber] = [c.state for c in clients]  # type: ignore[misc]
    result = {
        "clients": len(clients),
        "open": sum(c.is_open for c in clients),
        "heartbeats_min": min(s.heartbeats for s in subs),
        "connect_s": round(connecting, 2),
    }
    for client in clients:
        client.close()
    return result


async def resume(config: dict[str, Any]) -> dict[str, Any]:
    """One client subscribing with ``since`` far behind: time until it has caught up."""
    target, stats = Target(config), Stats()
    sub = Subscriber()
    client = await connect(
        target.host, target.port, "/ws", stats.on_messages, headers=target.headers, state=sub
    )
    request = {"type": "subscribe", "project_id": target.project_id, "since": config["since"]}
    emit({"phase": "ready"})
    with Window() as window:
        client.send(orjson.dumps(request))
        reply = await asyncio.wait_for(sub.subscribed, 60)
        behind = reply["seq"] - config["since"]
        complete = await stats.reached(behind, 60)
    client.close()
    return {
        "events": stats.events,
        "behind": behind,
        "recovered": reply.get("recovered"),
        "complete": complete,
        "catch_up_s": round(stats.last_receipt - window.started, 3),
        "out_of_order": stats.out_of_order,
        "loadgen_cpu": window.loadgen_cpu,
    }


async def connect_rate(config: dict[str, Any]) -> dict[str, Any]:
    """``clients`` connections opened ``concurrency`` at a time, each authenticated (the
    target's token or cookie) and subscribed (with ``since``, if given) before it counts:
    connections per second until the last ``subscribed`` arrived. They stay open until the
    end, as clients coming back after a restart do."""
    target, stats = Target(config), Stats()
    since, concurrency = config.get("since"), config.get("concurrency", 64)
    warm = await target.subscribers(100, stats, since=since)  # caches, JIT, TCP
    for client in warm:
        client.close()
    emit({"phase": "ready"})
    with Window() as window:
        clients = await target.subscribers(
            config["clients"], stats, concurrency=concurrency, since=since
        )
    for client in clients:
        client.close()
    return {
        "clients": len(clients),
        "connects_per_s": round(len(clients) / window.wall),
        "loadgen_cpu": window.loadgen_cpu,
    }


SCENARIOS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "fanout": fanout,
    "e2e": end_to_end,
    "e2e-writers": end_to_end_writers,
    "stalled": stalled,
    "idle": idle,
    "resume": resume,
    "connect": connect_rate,
    "restart": restart,
}


def main() -> None:
    config = json.loads(sys.argv[1])
    result = uvloop.run(SCENARIOS[config["scenario"]](config))
    emit({"phase": "done", **result})


if __name__ == "__main__":
    main()
