"""delivery.py: every decision of a connection's delivery state, table by table."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tidings.delivery import (
    Delivery,
    Start,
    Step,
    Subscription,
    SubState,
    Verdict,
    snapshot_needed,
)


@dataclass(frozen=True)
class F:
    """A frame, as far as delivery is concerned."""

    project_id: str | None
    seq: int | None = None
    size: int = 10
    coalesce: str | None = None


def delivery(max_subscriptions: int = 3, max_messages: int = 100) -> Delivery:
    return Delivery(max_subscriptions, max_messages, 10_000)


def live(d: Delivery, project_id: str = "p", cursor: int = 5) -> Subscription:
    assert d.request(project_id)
    sub = d.begin(project_id)
    assert d.start(sub, None, 1, cursor, cursor) == Start(None, replay=False)
    return sub


def recovering(d: Delivery, project_id: str = "p", cursor: int = 5) -> Subscription:
    assert d.request(project_id)
    sub = d.begin(project_id)
    assert d.start(sub, cursor, 1, cursor + 2, 0) == Start(True, replay=True)
    return sub


# -- live offers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seq", "verdict", "cursor", "state"),
    [
        (6, Verdict.FLUSH, 6, SubState.LIVE),  # the next one
        (5, Verdict.NONE, 5, SubState.LIVE),  # already given
        (2, Verdict.NONE, 5, SubState.LIVE),
        (7, Verdict.REPLAY, 5, SubState.RECOVERING),  # a gap
        (None, Verdict.FLUSH, 5, SubState.LIVE),  # ephemeral
    ],
)
def test_offer_to_a_live_subscription(
    seq: int | None, verdict: Verdict, cursor: int, state: SubState
) -> None:
    d = delivery()
    sub = live(d)
    assert d.offer(F("p", seq)) is verdict
    assert (sub.cursor, sub.state) == (cursor, state)
    assert d.queue.count == (1 if verdict is Verdict.FLUSH else 0)


@pytest.mark.parametrize("seq", [None, 6, 9])
def test_offers_wait_while_not_live(seq: int | None) -> None:
    d = delivery()
    assert d.offer(F("p", seq)) is Verdict.NONE  # not subscribed
    assert d.request("p")
    assert d.offer(F("p", seq)) is Verdict.NONE  # requested
    sub = d.begin("p")
    assert d.offer(F("p", seq)) is Verdict.NONE  # pending
    d.start(sub, 1, 1, 9, 9)
    assert sub.state is SubState.RECOVERING
    assert d.offer(F("p", seq)) is Verdict.NONE  # the replay covers it
    assert d.queue.count == 0


def test_presence_once_the_subscription_is_announced_live_or_replaying() -> None:
    d = delivery()
    assert d.offer_presence(F("p")) is Verdict.NONE  # not subscribed
    assert d.request("p")
    assert d.offer_presence(F("p")) is Verdict.NONE  # requested
    sub = d.begin("p")
    assert d.offer_presence(F("p")) is Verdict.NONE  # pending: `subscribed` not sent yet
    d.start(sub, 1, 1, 9, 9)
    assert sub.state is SubState.RECOVERING
    assert d.offer_presence(F("p")) is Verdict.LATER  # replaying: still delivered
    live(d, "q")
    assert d.offer_presence(F("q")) is Verdict.NONE  # queued behind the first
    assert d.queue.count == 2
    assert d.offer_presence(F("other")) is Verdict.NONE


def test_only_an_empty_queue_asks_for_a_flush() -> None:
    d = delivery()
    live(d)
    assert d.offer(F("p", 6)) is Verdict.FLUSH
    assert d.offer(F("p", 7)) is Verdict.NONE  # a write is already on its way
    d.queue.drain()
    assert d.offer(F("p", 8)) is Verdict.FLUSH


def test_presence_alone_waits_for_a_later_write_and_anything_after_it_takes_it_along() -> None:
    d = delivery()
    live(d)
    assert d.offer_presence(F("p")) is Verdict.LATER  # alone: written later
    assert d.offer_presence(F("p")) is Verdict.NONE  # the later write takes it too
    assert d.offer(F("p", 6)) is Verdict.FLUSH  # not a presence change: at once, with them
    assert d.offer_presence(F("p")) is Verdict.NONE  # a write is on its way
    assert [f.seq for f in d.queue.drain()] == [None, None, 6, None]  # in order
    assert d.offer_presence(F("p")) is Verdict.LATER
    d.queue.drain()  # written by the later write
    assert d.offer(F("p", 7)) is Verdict.FLUSH
    assert d.offer(F("p", 8)) is Verdict.NONE
    assert d.offer_presence(F("p")) is Verdict.NONE  # behind frames on their way
    assert d.queue.count == 3


def test_a_full_queue_is_a_slow_consumer_and_nothing_more_is_queued() -> None:
    d = delivery(max_messages=2)
    live(d)
    assert d.offer(F("p", 6)) is Verdict.FLUSH
    assert d.offer(F("p", 7)) is Verdict.NONE
    assert d.offer(F("p", 8)) is Verdict.SLOW
    assert not d.open
    assert d.enqueue(F(None)) is Verdict.NONE
    assert d.queue.count == 2


def test_presence_into_a_full_queue_is_a_slow_consumer_too() -> None:
    d = delivery(max_messages=2)
    live(d)
    assert d.offer_presence(F("p")) is Verdict.LATER
    assert d.offer_presence(F("p")) is Verdict.NONE
    assert d.offer_presence(F("p")) is Verdict.SLOW
    assert not d.open
    assert d.offer_presence(F("p")) is Verdict.NONE  # closing: nothing more is queued
    assert d.queue.count == 2


# -- the audience path --------------------------------------------------------------------


def test_audience_only_while_nothing_is_asked_for_the_project() -> None:
    d = delivery()
    assert d.offer_audience(F("p", 3)) is Verdict.FLUSH
    assert d.request("p")  # a subscribe arrived, still waiting behind others
    assert d.offer_audience(F("p", 4)) is Verdict.NONE
    sub = d.begin("p")
    assert d.offer_audience(F("p", 4)) is Verdict.NONE
    d.start(sub, None, 1, 4, 4)
    assert d.offer_audience(F("p", 5)) is Verdict.NONE  # the subscription delivers it
    assert d.offer_audience(F("q", 1)) is Verdict.NONE  # another project: queued
    assert d.queue.count == 2
    assert d.end("p") is sub
    assert d.offer_audience(F("p", 6)) is Verdict.NONE
    assert d.queue.count == 3


def test_a_waiting_subscribe_keeps_the_project_asked_for_after_an_end() -> None:
    d = delivery()
    sub = live(d)
    assert d.request("p")  # subscribing again, queued behind other messages
    assert d.end("p") is sub  # unsubscribe (or access revoked) handled first
    assert d.subs["p"].state is SubState.REQUESTED
    assert d.offer_audience(F("p", 9)) is Verdict.NONE
    again = d.begin("p")
    assert again.requests == 0
    d.start(again, 5, 1, 9, 9)
    assert d.end("p") is again
    assert "p" not in d.subs


# -- subscription life --------------------------------------------------------------------


def test_subscription_limit_counts_requested_and_active() -> None:
    d = delivery(max_subscriptions=2)
    assert d.request("a")
    assert d.request("b")
    assert not d.request("c")
    assert d.request("a")  # again: restarts, takes no new slot
    assert d.subs["a"].requests == 2
    d.begin("b")
    d.end("b")  # unsubscribed (or refused) once handled: the slot is free again
    assert d.request("c")


@pytest.mark.parametrize(
    ("since", "oldest", "latest", "head", "expected", "cursor", "state"),
    [
        (None, 1, 5, 5, Start(None, replay=False), 5, SubState.LIVE),
        (None, 1, 5, 7, Start(None, replay=True), 5, SubState.RECOVERING),  # seen live meanwhile
        (3, 1, 5, 0, Start(True, replay=True), 3, SubState.RECOVERING),
        (5, 1, 5, 5, Start(True, replay=False), 5, SubState.LIVE),
        (0, 2, 5, 0, Start(False, replay=False), 5, SubState.LIVE),  # trimmed past since
        (9, 1, 5, 0, Start(False, replay=False), 5, SubState.LIVE),  # from another history
        (0, 1, 0, 0, Start(True, replay=False), 0, SubState.LIVE),  # empty log
    ],
)
def test_start(
    since: int | None,
    oldest: int,
    latest: int,
    head: int,
    expected: Start,
    cursor: int,
    state: SubState,
) -> None:
    d = delivery()
    d.request("p")
    sub = d.begin("p")
    assert sub.state is SubState.PENDING and not sub.announced
    assert d.start(sub, since, oldest, latest, head) == expected
    assert (sub.cursor, sub.state) == (cursor, state)
    assert sub.announced


@pytest.mark.parametrize(
    ("asked", "since", "oldest", "latest", "needed"),
    [
        (False, None, 1, 5, False),  # not asked: never
        (False, 0, 2, 5, False),
        (True, None, 1, 5, True),  # no since: the state at latest
        (True, None, 1, 0, True),  # a project with an empty log still has a state
        (True, 3, 1, 5, False),  # resumes: the missed events instead
        (True, 5, 1, 5, False),  # resumes, nothing missed
        (True, 0, 1, 5, False),  # everything still logged
        (True, 0, 2, 5, True),  # trimmed past since: cannot resume
        (True, 9, 1, 5, True),  # from another history
    ],
)
def test_snapshot_needed(
    asked: bool, since: int | None, oldest: int, latest: int, needed: bool
) -> None:
    assert snapshot_needed(asked, since, oldest, latest) is needed


@pytest.mark.parametrize(
    ("since", "oldest", "latest", "head", "expected", "cursor", "state"),
    [
        # The state at latest; what the node saw meanwhile is replayed after it.
        (None, 1, 5, 5, Start(None, replay=False, snapshot=True), 5, SubState.LIVE),
        (None, 1, 5, 8, Start(None, replay=True, snapshot=True), 5, SubState.RECOVERING),
        # Resumable: the events after since, no snapshot.
        (3, 1, 5, 5, Start(True, replay=True, snapshot=False), 3, SubState.RECOVERING),
        (5, 1, 5, 5, Start(True, replay=False, snapshot=False), 5, SubState.LIVE),
        # Not resumable: the snapshot, and the cursor at its seq.
        (0, 3, 5, 5, Start(False, replay=False, snapshot=True), 5, SubState.LIVE),
        (0, 3, 5, 6, Start(False, replay=True, snapshot=True), 5, SubState.RECOVERING),
        (9, 1, 5, 5, Start(False, replay=False, snapshot=True), 5, SubState.LIVE),
    ],
)
def test_start_with_a_snapshot(
    since: int | None,
    oldest: int,
    latest: int,
    head: int,
    expected: Start,
    cursor: int,
    state: SubState,
) -> None:
    d = delivery()
    d.request("p")
    sub = d.begin("p", snapshot=True)
    assert sub.snapshot
    assert d.start(sub, since, oldest, latest, head) == expected
    assert (sub.cursor, sub.state) == (cursor, state)


def test_a_restart_keeps_asking_for_a_snapshot_only_if_the_subscribe_did() -> None:
    d = delivery()
    d.request("p")
    sub = d.begin("p", snapshot=True)
    d.start(sub, 2, 1, 5, 5)
    # The replay finds the log trimmed: the server restarts it, as the client asked.
    again = d.begin("p", waiting=False, snapshot=sub.snapshot)
    assert d.start(again, sub.cursor, 4, 9, 9) == Start(False, replay=False, snapshot=True)
    d.request("p")
    plain = d.begin("p")
    assert not plain.snapshot
    assert d.start(plain, 2, 4, 9, 9) == Start(False, replay=False, snapshot=False)


def test_begin_replaces_and_restart_keeps_waiting_requests() -> None:
    d = delivery()
    old = live(d)
    d.request("p")
    d.request("p")
    new = d.begin("p")
    assert new is not old and not d.current(old) and d.current(new)
    assert new.requests == 1
    restarted = d.begin("p", waiting=False)  # the server restarts it: no request consumed
    assert restarted.requests == 1
    assert d.begin("q").requests == 0  # nothing was requested (defensive)


def test_end_of_a_superseded_subscription_is_ignored() -> None:
    d = delivery()
    old = live(d)
    d.request("p")
    new = d.begin("p")
    assert d.end("p", old) is None
    assert d.subs["p"] is new
    assert d.end("q") is None
    assert d.end("p", new) is new


def test_current_is_false_once_closing() -> None:
    d = delivery()
    sub = live(d)
    assert d.current(sub)
    d.open = False
    assert not d.current(sub)


def test_illegal_transitions_raise() -> None:
    sub = Subscription("p")
    with pytest.raises(RuntimeError, match="requested -> live"):
        sub.move(SubState.LIVE)
    sub.move(SubState.PENDING)
    with pytest.raises(RuntimeError):
        sub.move(SubState.REQUESTED)


# -- replays and heads --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seqs", "steps", "cursor"),
    [
        ([6, 7], [Step.PUSH, Step.PUSH], 7),
        ([4, 5, 6], [Step.SKIP, Step.SKIP, Step.PUSH], 6),
        ([7], [Step.LOST], 5),  # 6 was trimmed by retention meanwhile
    ],
)
def test_replayed_steps(seqs: list[int], steps: list[Step], cursor: int) -> None:
    d = delivery()
    sub = recovering(d)
    assert [d.replayed(sub, s) for s in seqs] == steps
    assert sub.cursor == cursor


def test_replay_stops_for_a_subscription_that_is_not_recovering_or_gone() -> None:
    d = delivery()
    sub = live(d)
    assert d.replayed(sub, 6) is Step.STOP
    sub2 = recovering(d, "q")
    d.end("q")
    assert d.replayed(sub2, 6) is Step.STOP
    assert d.page_done(sub2, 0, 10, 0)


@pytest.mark.parametrize(
    ("count", "limit", "head", "done"),
    [
        (3, 10, 7, True),  # short page, caught up with the head
        (3, 10, 9, False),  # short page, but the node has seen newer: read again
        (0, 10, 9, True),  # nothing logged past the cursor: later events come live
        (10, 10, 7, False),  # a full page: there may be more
    ],
)
def test_page_done(count: int, limit: int, head: int, done: bool) -> None:
    d = delivery()
    sub = recovering(d)
    d.replayed(sub, 6)
    d.replayed(sub, 7)
    assert d.page_done(sub, count, limit, head) is done
    assert sub.state is (SubState.LIVE if done else SubState.RECOVERING)


def test_behind_and_given() -> None:
    d = delivery()
    sub = live(d)
    assert not d.behind(sub, 5)
    assert d.given(sub, 5) and not d.given(sub, 6)
    assert d.behind(sub, 6)
    assert sub.state is SubState.RECOVERING
    assert not d.behind(sub, 9)  # already recovering
    assert not d.given(sub, 5)


def test_replays_leave_a_quarter_of_the_queue_to_live_events() -> None:
    d = Delivery(3, 4, 100)  # 4 messages, 100 bytes: replays may use 3 and 75
    assert d.fits(1000)  # an empty queue takes even a frame over the budget
    live(d)
    assert d.offer(F("p", 6)) is Verdict.FLUSH
    assert d.fits(10) and not d.fits(1000)  # bytes: within three quarters only
    assert d.offer(F("p", 7)) is Verdict.NONE
    assert d.offer(F("p", 8)) is Verdict.NONE
    assert not d.fits(1)  # count: three of four taken
    assert d.free_bytes() >= 1
