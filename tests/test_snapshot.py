"""Snapshot on subscribe, over real sockets: the state at the reply's seq, and nothing else.

A snapshot must be exactly what the log says the project was at its seq (replaying the
history up to it gives the same state), events after it must follow with no gap and
none lower, and applying them must give what REST shows at the end, even while writes
race the subscribe.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import (
    TIMEOUT,
    ServerThread,
    TestUser,
    api,
    connected,
    create_project,
    create_user,
    recv_until,
    send,
    upload,
)

FILE_EVENT_FIELDS = ("id", "name", "path", "size", "asset_type")  # what file.* events carry


async def subscribe(ws: Any, project_id: str, **fields: Any) -> dict[str, Any]:
    await send(ws, {"type": "subscribe", "project_id": project_id, **fields})
    return await recv_until(ws, lambda m: m["type"] in ("subscribed", "error"))


async def rest_state(http: httpx.AsyncClient, pid: str) -> dict[str, Any]:
    """The project, every file and every process, as REST shows them now."""
    project = (await http.get(f"/api/projects/{pid}")).json()
    files = (await http.get(f"/api/projects/{pid}/files?limit=1000")).json()["items"]
    processes = (await http.get(f"/api/projects/{pid}/processes?limit=1000")).json()["items"]
    return {"project": project, "files": files, "processes": processes}


class View:
    """A client's view of a project, built from a snapshot or from events; compared on
    what events carry (a file's event has fewer fields than its REST shape)."""

    def __init__(self) -> None:
        self.project: dict[str, Any] | None = None
        self.files: dict[str, dict[str, Any]] = {}
        self.processes: dict[str, dict[str, Any]] = {}
        self.seq = 0

    @classmethod
    def of(cls, state: dict[str, Any]) -> View:
        view = cls()
        view.project = state["project"]
        view.files = {f["id"]: f for f in state["files"]}
        view.processes = {p["id"]: p for p in state["processes"]}
        view.seq = state["project"]["seq"]
        return view

    def apply(self, event: dict[str, Any]) -> None:
        assert event["seq"] == self.seq + 1, (event["seq"], self.seq)  # no gap, none lower
        self.seq = event["seq"]
        kind = event["type"]
        if kind in ("project.created", "project.updated"):
            self.project = event["data"]
        elif kind == "file.uploaded":
            self.files[event["file"]["id"]] = event["file"]
        elif kind == "file.deleted":
            del self.files[event["file"]["id"]]
        elif kind in ("process.started", "process.completed"):
            self.processes[event["process_id"]] = event["process"]

    def comparable(self) -> dict[str, Any]:
        assert self.project is not None
        return {
            "project": {k: v for k, v in self.project.items() if k != "seq"},
            "files": {i: {k: f[k] for k in FILE_EVENT_FIELDS} for i, f in self.files.items()},
            "processes": self.processes,
        }


async def history_view(http: httpx.AsyncClient, pid: str, upto: int) -> View:
    """The project as its log says it was at ``upto``."""
    view = View()
    while view.seq < upto:
        page = (await http.get(f"/api/projects/{pid}/events?after={view.seq}&limit=7")).json()
        for event in page["events"]:
            if event["seq"] <= upto:
                view.apply(event)
    return view


async def test_snapshot_has_the_rest_shapes(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api, "Launch"))["id"]
    for name in ("b.txt", "a.txt"):
        assert (await upload(alice_api, pid, name, path="/docs")).status_code == 201
    external = await alice_api.post(f"/api/projects/{pid}/processes", json={"kind": "external"})
    assert external.status_code == 202
    ws = await connected(server, alice)
    reply = await subscribe(ws, pid, snapshot=True, id="s1")
    assert set(reply) == {"type", "project_id", "seq", "snapshot", "presence", "id", "timestamp"}
    assert reply["seq"] == 4 and reply["id"] == "s1"
    rest = await rest_state(alice_api, pid)
    assert reply["snapshot"] == {**rest, "files_truncated": False, "processes_truncated": False}
    assert [f["name"] for f in reply["snapshot"]["files"]] == ["a.txt", "b.txt"]
    # Live from there.
    await upload(alice_api, pid, "c.txt")
    assert (await recv_until(ws, lambda m: "seq" in m))["seq"] == 5


async def test_a_snapshot_taken_while_writes_race_is_the_state_at_its_seq(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api, "race"))["id"]
    done = 0  # writes finished so far
    progress = asyncio.Condition()

    async def reached(count: int) -> None:
        async with progress:
            await progress.wait_for(lambda: done >= count)

    async def writer(n: int) -> None:
        nonlocal done
        async with api(server, alice) as http:
            previous: str | None = None
            for i in range(12):
                made = await upload(http, pid, f"w{n}-{i}.txt", b"x" * i, path=f"/w{n}")
                assert made.status_code == 201, made.text
                if previous is not None and i % 3 == 0:
                    gone = await http.delete(f"/api/projects/{pid}/files/{previous}")
                    assert gone.status_code == 204
                previous = made.json()["id"]
                if i % 4 == 0:
                    renamed = await http.patch(f"/api/projects/{pid}", json={"name": f"{n}.{i}"})
                    assert renamed.status_code == 200
                if i % 5 == 1:
                    started = await http.post(
                        f"/api/projects/{pid}/processes", json={"kind": "external"}
                    )
                    assert started.status_code == 202, started.text
                    ended = await http.post(
                        f"/api/projects/{pid}/processes/{started.json()['id']}/complete",
                        json={"status": "succeeded", "result": {"n": i}},
                    )
                    assert ended.status_code == 200, ended.text
                async with progress:
                    done += 1
                    progress.notify_all()

    async def reader(after_writes: int) -> tuple[Any, dict[str, Any]]:
        await reached(after_writes)
        ws = await connected(server, alice)
        return ws, await subscribe(ws, pid, snapshot=True)

    readers = [asyncio.create_task(reader(k)) for k in (0, 3, 8, 15, 22, 30)]
    await asyncio.wait_for(asyncio.gather(*(writer(n) for n in range(3))), 6 * TIMEOUT)
    opened = await asyncio.gather(*readers)
    final = View.of(await rest_state(alice_api, pid))
    for ws, reply in opened:
        snapshot = View.of(reply["snapshot"])
        assert snapshot.seq == reply["seq"]
        # The snapshot is exactly what the log says the project was at its seq …
        logged = await history_view(alice_api, pid, snapshot.seq)
        assert snapshot.comparable() == logged.comparable(), snapshot.seq
        # … and the events after it, none lower and no gap, lead to what REST shows now.
        view = View.of(reply["snapshot"])
        while view.seq < final.seq:
            view.apply(await recv_until(ws, lambda m: "seq" in m))
        assert view.comparable() == final.comparable()
    seqs = {reply["seq"] for _, reply in opened}
    assert len(seqs) > 1, seqs  # taken at different moments of the race


async def test_since_and_snapshot_resume_when_they_can_and_send_the_state_when_not(
    make_server: Any,
) -> None:
    server = make_server(event_history=3)
    alice = await create_user(server.settings, "alice")
    async with api(server, alice) as http:
        pid = (await create_project(http))["id"]
        for name in ("a", "b", "c", "d"):
            await upload(http, pid, name)  # seq 2..5; the log keeps 3..5
        ws = await connected(server, alice)
        # Resumable: the missed events, no snapshot.
        reply = await subscribe(ws, pid, since=3, snapshot=True)
        assert (reply["recovered"], reply["seq"], "snapshot" in reply) == (True, 5, False)
        replayed = [await recv_until(ws, lambda m: "seq" in m) for _ in range(2)]
        assert [m["seq"] for m in replayed] == [4, 5]
        # Not resumable (trimmed past since, or a since from another history): the state.
        for since in (1, 99):
            reply = await subscribe(ws, pid, since=since, snapshot=True)
            assert (reply["recovered"], reply["seq"]) == (False, 5)
            assert [f["name"] for f in reply["snapshot"]["files"]] == ["a", "b", "c", "d"]
        # Without snapshot, as before: no state.
        reply = await subscribe(ws, pid, since=1)
        assert (reply["recovered"], "snapshot" in reply) == (False, False)
        await upload(http, pid, "e")
        assert (await recv_until(ws, lambda m: "seq" in m))["seq"] == 6


async def test_snapshot_files_beyond_the_limit_are_paged_over_rest(make_server: Any) -> None:
    server = make_server(snapshot_max_files=3)
    alice = await create_user(server.settings, "alice")
    async with api(server, alice) as http:
        pid = (await create_project(http))["id"]
        for name in "edcba":
            await upload(http, pid, name)
        ws = await connected(server, alice)
        snapshot = (await subscribe(ws, pid, snapshot=True))["snapshot"]
        assert [f["name"] for f in snapshot["files"]] == ["a", "b", "c"]
        assert snapshot["files_truncated"] is True
        rest = (await http.get(f"/api/projects/{pid}/files?offset=3")).json()["items"]
        assert [f["name"] for f in rest] == ["d", "e"]
        # Exactly at the limit: complete.
        await http.delete(f"/api/projects/{pid}/files/{rest[0]['id']}")
        await http.delete(f"/api/projects/{pid}/files/{rest[1]['id']}")
        snapshot = (await subscribe(ws, pid, snapshot=True))["snapshot"]
        assert (len(snapshot["files"]), snapshot["files_truncated"]) == (3, False)


async def test_snapshot_processes_are_the_active_ones_and_the_newest_others(
    server: ServerThread, alice_api: httpx.AsyncClient, alice: TestUser
) -> None:
    pid = (await create_project(alice_api))["id"]
    url = f"/api/projects/{pid}/processes"
    running = (await alice_api.post(url, json={"kind": "external"})).json()["id"]
    finished = []
    for _ in range(52):
        started = (await alice_api.post(url, json={"kind": "external"})).json()["id"]
        ended = await alice_api.post(f"{url}/{started}/complete", json={"status": "failed"})
        assert ended.status_code == 200
        finished.append(started)
    ws = await connected(server, alice)
    snapshot = (await subscribe(ws, pid, snapshot=True))["snapshot"]
    ids = [p["id"] for p in snapshot["processes"]]
    newest = list(reversed(finished))[:50]
    assert set(ids) == {running, *newest}
    rest = (await alice_api.get(f"{url}?limit=1000")).json()["items"]
    assert ids == [p["id"] for p in rest if p["id"] in set(ids)]  # REST's order: newest first
    assert snapshot["processes_truncated"] is False


async def test_a_snapshot_fits_the_connection_queue(make_server: Any) -> None:
    """A snapshot larger than what the outbound queue takes would close the connection as
    a slow consumer at every reconnect: it is cut to fit, and says so."""
    server = make_server(ws_max_queue_bytes=8192)
    alice = await create_user(server.settings, "alice")
    async with api(server, alice) as http:
        pid = (await create_project(http))["id"]
        for i in range(40):
            await upload(http, pid, f"{i:02}-{'x' * 60}.txt")
        ws = await connected(server, alice)
        reply = await subscribe(ws, pid, snapshot=True)
        snapshot = reply["snapshot"]
        assert snapshot["files_truncated"] is True
        assert 0 < len(snapshot["files"]) < 40
        assert len(snapshot["files"]) * 300 < 8192
        await upload(http, pid, "after.txt")  # and the connection is fine
        assert (await recv_until(ws, lambda m: "seq" in m))["seq"] == 42

        # Processes first, the active ones before those that have ended.
        other = (await create_project(http))["id"]
        url = f"/api/projects/{other}/processes"
        running = (await http.post(url, json={"kind": "external"})).json()["id"]  # the oldest
        for _ in range(5):
            done = (await http.post(url, json={"kind": "external"})).json()["id"]
            result = {"status": "succeeded", "result": {"log": "z" * 2000}}
            assert (await http.post(f"{url}/{done}/complete", json=result)).status_code == 200
        snapshot = (await subscribe(ws, other, snapshot=True))["snapshot"]
        assert snapshot["processes_truncated"] is True
        ids = [p["id"] for p in snapshot["processes"]]
        assert ids[-1] == running and 1 < len(ids) < 6  # kept, though the oldest


@pytest.mark.parametrize("fields", [{"snapshot": True}, {"snapshot": True, "since": 0}])
async def test_no_snapshot_of_a_project_one_cannot_see(
    server: ServerThread,
    alice_api: httpx.AsyncClient,
    bob: TestUser,
    fields: dict[str, Any],
) -> None:
    pid = (await create_project(alice_api))["id"]
    ws = await connected(server, bob)
    reply = await subscribe(ws, pid, **fields)
    assert (reply["type"], reply["code"], "snapshot" in reply) == ("error", "not_found", False)
