"""tidings.tails: the in-memory tail on its own, and resumes from it over real sockets,
compared with the event log."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import api, connected, create_project, create_user, recv_until, subscribe
from tidings.events import LoggedEvent
from tidings.tails import Tails, footprint


def ev(seq: int, size: int = 10) -> LoggedEvent:
    return LoggedEvent(seq, "project.updated", "x" * size)


UNIT = footprint(ev(1))  # what a tail counts for one event of ev()'s default size


def seqs(events: list[LoggedEvent] | None) -> list[int] | None:
    return None if events is None else [e.seq for e in events]


def test_a_tail_answers_only_reads_it_covers() -> None:
    tails = Tails(100 * UNIT)
    assert tails.read_after("p", 0, 10, 100) is None
    for seq in (3, 4, 5):
        tails.append("p", ev(seq))
    assert tails.bounds("p") == (3, 5) and len(tails) == 3 and tails.nbytes == 3 * UNIT
    assert seqs(tails.read_after("p", 2, 10, 100)) == [3, 4, 5]
    assert seqs(tails.read_after("p", 3, 10, 100)) == [4, 5]
    assert tails.read_after("p", 1, 10, 100) is None  # 2 is not held: read the log
    assert tails.read_after("p", 5, 10, 100) is None  # nothing after: only the log knows
    assert tails.read_after("q", 2, 10, 100) is None


def test_pages_are_bounded_like_the_logs() -> None:
    tails = Tails(100 * UNIT)
    for seq in range(1, 6):
        tails.append("p", ev(seq))
    assert seqs(tails.read_after("p", 0, 2, 100)) == [1, 2]
    assert seqs(tails.read_after("p", 0, 10, 25)) == [1, 2]
    assert seqs(tails.read_after("p", 0, 10, 1)) == [1]  # always one


def test_a_gap_starts_the_tail_again_and_old_events_are_ignored() -> None:
    tails = Tails(100 * UNIT)
    for seq in (1, 2, 2, 1, 5, 4, 6):
        tails.append("p", ev(seq))
    assert tails.bounds("p") == (5, 6) and tails.nbytes == 2 * UNIT


def test_bytes_are_bounded_oldest_events_of_the_least_recent_project_first() -> None:
    tails = Tails(5 * UNIT)
    for seq in (1, 2, 3):
        tails.append("p", ev(seq))
    tails.append("q", ev(1))
    tails.append("q", ev(2))
    assert tails.nbytes == 5 * UNIT
    tails.append("q", ev(3))  # p is the least recently appended: it loses its oldest
    assert tails.bounds("p") == (2, 3) and tails.bounds("q") == (1, 3)
    tails.append("p", ev(4, 10 + UNIT * 5 // 2))  # counts as 3.5 events
    assert tails.nbytes <= 5 * UNIT
    assert tails.bounds("p") == (3, 4) and tails.bounds("q") is None
    tails.append("p", ev(5, 10 + UNIT * 4 + 1))  # larger than the whole budget: not kept
    assert tails.bounds("p") is None and tails.nbytes == 0
    tails.append("r", ev(1))
    tails.drop("r")
    tails.drop("r")
    assert tails.nbytes == 0 and len(tails) == 0
    assert Tails(0).read_after("p", 0, 1, 1) is None


def test_an_event_counts_for_what_holding_it_costs() -> None:
    """The bound is on memory, not on frame characters: the small frames of most events
    cost Python about as much again (the event object, its seq, the strings' headers)."""
    event = ev(1, 200)
    held = sys.getsizeof(event) + sys.getsizeof(event.seq)
    held += sys.getsizeof(event.type) + sys.getsizeof(event.frame)
    assert held <= footprint(event) <= held + 16
    assert footprint(event) > 1.5 * len(event.frame)


@pytest.mark.parametrize("tail_bytes", [0, 700, 16 * 1024 * 1024])
async def test_resumes_get_exactly_the_logs_events(make_server, tail_bytes: int) -> None:
    """Resumes from every position, while a subscriber keeps the project active, get the
    events the log holds, in order, none missing, none twice: from the tail where it
    covers them (some of them, with a small tail), from the log otherwise."""
    srv = make_server(resume_tail_bytes=tail_bytes)
    user = await create_user(srv.settings)
    async with api(srv, user) as client:
        pid = (await create_project(client))["id"]
        keeper = await connected(srv, user)
        assert (await subscribe(keeper, pid))["seq"] == 1
        for i in range(12):
            if i % 3 == 2:
                body = {"type": "custom.step", "data": {"i": i, "pad": "é" * i}}
                response = await client.post(f"/api/projects/{pid}/events", json=body)
            else:
                response = await client.patch(f"/api/projects/{pid}", json={"description": str(i)})
            assert response.is_success, response.text
        await recv_until(keeper, lambda m: m.get("seq") == 13)
        logged = (await client.get(f"/api/projects/{pid}/events")).json()["events"]
    assert [e["seq"] for e in logged] == list(range(1, 14))
    for since in range(13):
        ws = await connected(srv, user)
        reply = await subscribe(ws, pid, since=since)
        assert (reply["seq"], reply["recovered"]) == (13, True)
        got = [await recv_until(ws, lambda m: "seq" in m) for _ in range(13 - since)]
        assert got == logged[since:], since
        await ws.close()
    from_memory = srv.services.hub.metrics.registry.get_sample_value(
        "tidings_ws_replay_pages_from_memory_total"
    )
    if tail_bytes == 0:
        assert from_memory == 0
    elif tail_bytes == 700:
        assert 0 < from_memory < 12  # the oldest of them were evicted
    else:
        assert from_memory == 12  # every resume but the one from 0 (before the tail)
    await keeper.close()
