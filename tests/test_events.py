"""/api/projects/{id}/events over real sockets: history, read-your-writes, publishing.

History pages serve the socket's own frames and answer 410 past retention; every change
that records an event says its seq (``Tidings-Seq``); custom events are logged and
replayed like built-in ones, and an ``Idempotency-Key`` makes a retry, or 20 identical
requests racing, publish once.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select, update

from tests.conftest import (
    ServerThread,
    TestUser,
    api,
    browser_session,
    connected,
    create_project,
    create_user,
    db_scalars,
    recv_until,
    send,
    subscribe,
    upload,
)
from tidings.db import Database, create_engine
from tidings.models import Event, IdempotencyKey

KiB = 1024


def events_url(pid: str) -> str:
    return f"/api/projects/{pid}/events"


async def custom_events(server: ServerThread, pid: str) -> list[str]:
    """The types of the custom events the project's log holds, in seq order."""
    rows = await db_scalars(
        server.settings,
        select(Event.type)
        .where(Event.project_id == pid, Event.type.startswith("custom."))
        .order_by(Event.seq),
    )
    return [str(t) for t in rows]


# -- history -----------------------------------------------------------------------------


async def test_history_pages_the_socket_frames_in_seq_order(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    for name in ("a", "b", "c"):
        await upload(alice_api, pid, name)
    first = (await alice_api.get(events_url(pid), params={"limit": 2})).json()
    assert [e["seq"] for e in first["events"]] == [1, 2]
    assert (first["oldest"], first["latest"]) == (1, 4)
    second = (await alice_api.get(events_url(pid), params={"after": 2})).json()
    assert [e["type"] for e in second["events"]] == ["file.uploaded", "file.uploaded"]
    assert (await alice_api.get(events_url(pid), params={"after": 4})).json()["events"] == []
    assert (await alice_api.get(events_url(pid), params={"after": 99})).json()["events"] == []
    # The very objects the socket sends.
    ws = await connected(server, alice)
    await subscribe(ws, pid, since=0)
    replayed = [await recv_until(ws, lambda m: "seq" in m) for _ in range(4)]
    assert replayed == first["events"] + second["events"]


async def test_history_across_the_retention_boundary_is_410(make_server: Any) -> None:
    server = make_server(event_history=3)
    alice = await create_user(server.settings, "alice")
    bob = await create_user(server.settings, "bob")
    async with api(server, alice) as http, api(server, bob) as stranger:
        pid = (await create_project(http))["id"]
        for name in "abcde":
            await upload(http, pid, name)  # seq 2..6; the log keeps 4..6
        for after in (0, 1, 2):
            gone = await http.get(events_url(pid), params={"after": after})
            assert gone.status_code == 410
            assert gone.json()["oldest"] == 4
        page = (await http.get(events_url(pid), params={"after": 3, "limit": 2})).json()
        assert ([e["seq"] for e in page["events"]], page["oldest"], page["latest"]) == (
            [4, 5],
            4,
            6,
        )
        page = (await http.get(events_url(pid), params={"after": 5})).json()
        assert [e["seq"] for e in page["events"]] == [6]
        assert (await stranger.get(events_url(pid))).status_code == 404
        assert (await http.get(events_url("nope"))).status_code == 404
        for params in ({"limit": 0}, {"limit": 1001}, {"after": -1}, {"after": 2**63}):
            assert (await http.get(events_url(pid), params=params)).status_code == 422
        widest = await http.get(events_url(pid), params={"after": 3, "limit": 1000})
        assert widest.status_code == 200


# -- read-your-writes --------------------------------------------------------------------


async def test_every_change_that_records_an_event_says_its_seq(make_server: Any) -> None:
    server = make_server(max_concurrent_processes=1)
    alice = await create_user(server.settings, "alice")
    await create_user(server.settings, "bob")
    told: list[tuple[str, int]] = []  # (the event type expected, the seq the answer told)

    def seq_of(response: httpx.Response, status: int, kind: str) -> int:
        assert response.status_code == status, response.text
        seq = int(response.headers["Tidings-Seq"])
        if response.status_code != 204 and isinstance(response.json(), dict):
            assert response.json()["seq"] == seq
        told.append((kind, seq))
        return seq

    async with api(server, alice) as http:
        created = await http.post("/api/projects", json={"name": "p"})
        seq_of(created, 201, "project.created")
        pid = created.json()["id"]
        base = f"/api/projects/{pid}"
        seq_of(await http.patch(base, json={"name": "q"}), 200, "project.updated")
        seq_of(await http.post(f"{base}/members", json={"username": "bob"}), 201, "project.updated")
        made = await upload(http, pid, "big.bin", bytes(range(256)) * 20_000)
        seq_of(made, 201, "file.uploaded")
        second = await upload(http, pid, "b.txt")
        seq_of(second, 201, "file.uploaded")
        gone = await http.delete(f"{base}/files/{second.json()['id']}")
        seq_of(gone, 204, "file.deleted")
        external = await http.post(f"{base}/processes", json={"kind": "external"})
        seq_of(external, 202, "process.started")
        ext = f"{base}/processes/{external.json()['id']}"
        reported = await http.post(f"{ext}/progress", json={"progress": 0.5})
        assert reported.status_code == 204 and "Tidings-Seq" not in reported.headers  # ephemeral
        seq_of(
            await http.post(f"{ext}/complete", json={"status": "succeeded"}),
            200,
            "process.completed",
        )
        cancelled = await http.post(f"{base}/processes", json={"kind": "external"})
        seq_of(cancelled, 202, "process.started")
        seq_of(
            await http.delete(f"{base}/processes/{cancelled.json()['id']}"),
            200,
            "process.completed",
        )
        # Built-in kinds log nothing when created (their process.started comes as they
        # run); cancelling one, queued or running, answers its process.completed.
        for _ in range(2):
            export = await http.post(f"{base}/processes", json={"kind": "export"})
            assert export.status_code == 202 and "Tidings-Seq" not in export.headers
            assert export.json()["seq"] is None
        stopped = await http.delete(f"{base}/processes/{export.json()['id']}")
        if stopped.status_code == 200:  # 409 if it had already finished
            told.append(("process.completed", int(stopped.headers["Tidings-Seq"])))
            assert stopped.json()["seq"] == told[-1][1]
        seq_of(await http.post(events_url(pid), json={"type": "custom.a"}), 201, "custom.a")
        left = await http.delete(f"{base}/members/bob")
        seq_of(left, 204, "project.updated")
        history = (await http.get(events_url(pid), params={"limit": 1000})).json()["events"]
        seq_of(await http.delete(base), 204, "project.deleted")

    logged = {e["seq"]: e["type"] for e in history}
    for kind, seq in told[:-1]:
        assert logged[seq] == kind, (kind, seq)
    assert told[-1][1] == history[-1]["seq"] + 1


# -- publishing --------------------------------------------------------------------------


async def test_published_events_reach_subscribers_and_are_logged_only_if_durable(
    server: ServerThread,
    alice: TestUser,
    alice_api: httpx.AsyncClient,
    bob_api: httpx.AsyncClient,
) -> None:
    pid = (await create_project(alice_api))["id"]
    ws = await connected(server, alice)
    await subscribe(ws, pid)
    data = {"build": 42, "ok": True, "tags": ["a", "é"], "nested": {"x": None}}
    durable = await alice_api.post(
        events_url(pid), json={"type": "custom.build.finished", "data": data}
    )
    assert (durable.status_code, durable.json()) == (201, {"seq": 2})
    assert durable.headers["Tidings-Seq"] == "2"
    got = await recv_until(ws, lambda m: m["type"].startswith("custom."))
    assert set(got) == {"type", "project_id", "seq", "timestamp", "data"}
    assert (got["type"], got["project_id"], got["seq"], got["data"]) == (
        "custom.build.finished",
        pid,
        2,
        data,
    )
    ephemeral = await alice_api.post(
        events_url(pid), json={"type": "custom.cursor", "data": {"x": 1}, "durable": False}
    )
    assert (ephemeral.status_code, ephemeral.json()) == (202, {})
    assert "Tidings-Seq" not in ephemeral.headers
    got = await recv_until(ws, lambda m: m["type"].startswith("custom."))
    assert (got["type"], got["data"], "seq" in got) == ("custom.cursor", {"x": 1}, False)
    assert await custom_events(server, pid) == ["custom.build.finished"]
    # Replayed and recovered like any durable event.
    again = await connected(server, alice)
    await subscribe(again, pid, since=1)
    assert (await recv_until(again, lambda m: "seq" in m))["type"] == "custom.build.finished"
    # Members only; others cannot tell the project exists.
    for durable_flag in (True, False):
        refused = await bob_api.post(
            events_url(pid), json={"type": "custom.x", "durable": durable_flag}
        )
        assert refused.status_code == 404
    async with api(server) as anonymous:
        assert (await anonymous.post(events_url(pid), json={"type": "custom.x"})).status_code == 401


async def test_a_member_publishes_with_a_cookie_from_our_origin(
    server: ServerThread, alice_api: httpx.AsyncClient, bob: TestUser
) -> None:
    pid = (await create_project(alice_api))["id"]
    await alice_api.post(f"/api/projects/{pid}/members", json={"username": "bob"})
    async with browser_session(server, bob) as page:
        assert (await page.post(events_url(pid), json={"type": "custom.x"})).status_code == 201
        foreign = {"Origin": "https://evil.example"}
        sent = await page.post(events_url(pid), json={"type": "custom.x"}, headers=foreign)
        assert sent.status_code == 403


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"type": "custom."},
        {"type": "custom"},
        {"type": "project.updated"},
        {"type": "control.session_revoked"},
        {"type": "custom.Upper"},
        {"type": "custom._leading"},
        {"type": "custom.a b"},
        {"type": "custom.é"},
        {"type": "custom." + "a" * 65},
        {"type": "custom.x", "data": [1, 2]},
        {"type": "custom.x", "data": "text"},
        {"type": "custom.x", "data": {"big": "x" * (64 * KiB)}},
        {"type": "custom.x", "data": {"nul": "\x00"}},
        {"type": "custom.x", "durable": "yes"},
        {"type": "custom.x", "extra": 1},
    ],
)
async def test_bad_publishes_are_422(alice_api: httpx.AsyncClient, body: dict[str, Any]) -> None:
    pid = (await create_project(alice_api))["id"]
    response = await alice_api.post(events_url(pid), json=body)
    assert response.status_code == 422, response.text


async def test_data_up_to_64_kib_is_accepted(alice_api: httpx.AsyncClient) -> None:
    pid = (await create_project(alice_api))["id"]
    data = {"x": ""}
    data["x"] = "y" * (64 * KiB - len(orjson.dumps(data)))
    assert len(orjson.dumps(data)) == 64 * KiB
    longest = "custom." + "a" * 64
    sent = await alice_api.post(events_url(pid), json={"type": longest, "data": data})
    assert sent.status_code == 201, sent.text
    data["x"] += "y"
    assert (
        await alice_api.post(events_url(pid), json={"type": "custom.x", "data": data})
    ).status_code == 422


# -- idempotency -------------------------------------------------------------------------


async def test_a_retry_with_the_same_key_answers_the_first_result(
    server: ServerThread, alice_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    other = (await create_project(alice_api))["id"]
    body = {"type": "custom.deploy", "data": {"v": 1}}
    key = {"Idempotency-Key": "deploy-7f3a"}
    first = await alice_api.post(events_url(pid), json=body, headers=key)
    retry = await alice_api.post(events_url(pid), json=body, headers=key)
    assert (
        (first.status_code, first.json()) == (retry.status_code, retry.json()) == (201, {"seq": 2})
    )
    assert retry.headers["Tidings-Seq"] == "2"
    assert "Idempotent-Replayed" not in first.headers
    assert retry.headers["Idempotent-Replayed"] == "true"
    # The same key with another request is refused, not answered with the first's result.
    changed = await alice_api.post(events_url(pid), json={**body, "data": {"v": 2}}, headers=key)
    assert changed.status_code == 422
    # Keys are per project.
    elsewhere = await alice_api.post(events_url(other), json=body, headers=key)
    assert (elsewhere.status_code, elsewhere.json()) == (201, {"seq": 2})
    assert await custom_events(server, pid) == ["custom.deploy"]
    # Bad keys are refused.
    for bad in (b"", b"x" * 256, b"a b", "é".encode()):
        sent = await alice_api.post(events_url(pid), json=body, headers={"Idempotency-Key": bad})
        assert sent.status_code == 422, bad


async def test_a_key_is_kept_24_hours(server: ServerThread, alice_api: httpx.AsyncClient) -> None:
    pid = (await create_project(alice_api))["id"]
    body = {"type": "custom.nightly"}
    key = {"Idempotency-Key": "night-1"}
    assert (await alice_api.post(events_url(pid), json=body, headers=key)).json() == {"seq": 2}
    await age_keys(server, pid, timedelta(hours=23, minutes=59))
    assert (await alice_api.post(events_url(pid), json=body, headers=key)).json() == {"seq": 2}
    await age_keys(server, pid, timedelta(hours=24, minutes=1))
    assert (await alice_api.post(events_url(pid), json=body, headers=key)).json() == {"seq": 3}
    assert await custom_events(server, pid) == ["custom.nightly", "custom.nightly"]


async def age_keys(server: ServerThread, pid: str, age: timedelta) -> None:
    db = Database(create_engine(server.settings.effective_database_url))
    try:
        async with db.write() as session:
            await session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.project_id == pid)
                .values(created_at=datetime.now(UTC) - age)
            )
    finally:
        await db.dispose()


@pytest.mark.parametrize("durable", [True, False])
async def test_twenty_identical_requests_racing_publish_once(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient, durable: bool
) -> None:
    pid = (await create_project(alice_api))["id"]
    ws = await connected(server, alice)
    await subscribe(ws, pid)
    body = {"type": "custom.charge", "data": {"amount": 5}, "durable": durable}
    key = {"Idempotency-Key": "charge-1"}
    limits = httpx.Limits(max_connections=20)
    async with api(server, alice, limits=limits) as http:
        answers = await asyncio.gather(
            *(http.post(events_url(pid), json=body, headers=key) for _ in range(20))
        )
    expected = (201, {"seq": 2}) if durable else (202, {})
    assert {(a.status_code, orjson.dumps(a.json())) for a in answers} == {
        (expected[0], orjson.dumps(expected[1]))
    }
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 19
    # One event reached the subscriber: a marker published after all of them comes next.
    await alice_api.post(events_url(pid), json={"type": "custom.marker"})
    seen = []
    while not seen or seen[-1] != "custom.marker":
        seen.append((await recv_until(ws, lambda m: m["type"].startswith("custom.")))["type"])
    assert seen == ["custom.charge", "custom.marker"]
    logged = await custom_events(server, pid)
    assert logged == (["custom.charge", "custom.marker"] if durable else ["custom.marker"])


async def test_an_ephemeral_retry_is_not_fanned_out_again(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient
) -> None:
    pid = (await create_project(alice_api))["id"]
    ws = await connected(server, alice)
    await send(ws, {"type": "subscribe", "project_id": pid})
    await recv_until(ws, lambda m: m["type"] == "subscribed")
    body = {"type": "custom.ping", "durable": False}
    for _ in range(3):
        sent = await alice_api.post(events_url(pid), json=body, headers={"Idempotency-Key": "k"})
        assert sent.status_code == 202
    await alice_api.post(events_url(pid), json={"type": "custom.marker", "durable": False})
    first = await recv_until(ws, lambda m: m["type"].startswith("custom."))
    second = await recv_until(ws, lambda m: m["type"].startswith("custom."))
    assert [first["type"], second["type"]] == ["custom.ping", "custom.marker"]


async def test_custom_types_share_one_metrics_label(
    server: ServerThread, alice: TestUser, alice_api: httpx.AsyncClient
) -> None:
    """Clients choose custom type names: one label for all keeps the series bounded."""
    pid = (await create_project(alice_api))["id"]
    ws = await connected(server, alice)
    await subscribe(ws, pid)
    for name in ("custom.a", "custom.b", "custom.c"):
        await alice_api.post(events_url(pid), json={"type": name})
    await recv_until(ws, lambda m: m["type"] == "custom.c")
    metrics = (await alice_api.get("/metrics")).text
    assert 'tidings_events_published_total{type="custom"} 3.0' in metrics
    assert 'type="custom.' not in metrics
