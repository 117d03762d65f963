"""Random sequences against the two pure state machines of the protocol (hypothesis).

:class:`ClientMessages` gets subscribes, unsubscribes, pings, garbage, oversize messages
and floods: it never raises, and every message gets its documented answer or close code.
:class:`Delivery` gets subscribes, resumes, unsubscribes, live events (some lost, some
late, some doubled), replay pages, head syncs, audience events and a reader that drains
its queue now and then: it never raises, and each subscription's durable events leave
its queue in strictly increasing ``seq`` order, each once, with no gap.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tidings.codes import CloseCode, ErrorCode
from tidings.delivery import Delivery, Step, SubState, Verdict
from tidings.frames import Frame
from tidings.messages import (
    RATE_LIMIT_STRIKES,
    ClientMessages,
    Close,
    Reply,
    Subscribe,
    Unsubscribe,
)


def budget(examples: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


MAX_BYTES = 512
RATE = 5.0
BURST = 8
ERROR_CODES = {str(code) for code in ErrorCode}

project_ids = st.sampled_from(["p1", "p2", "p3", "a" * 64])
request_ids = st.one_of(
    st.none(), st.integers(-(2**53), 2**53), st.text(max_size=20), st.floats(allow_nan=False)
)
sinces = st.one_of(st.none(), st.integers(0, 2**63 - 1))
junk_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


class ClientMessagesMachine(RuleBasedStateMachine):
    """Every message gets exactly its documented answer, whatever came before it."""

    @initialize()
    def start(self) -> None:
        self.now = 0.0
        self.messages = ClientMessages(max_message_bytes=MAX_BYTES, rate=RATE, burst=BURST, now=0)
        self.strikes = 0  # rate-limited answers in a row
        self.closed = False
        self.accepted_at: list[float] = []  # times of messages past the rate limit

    def send(self, data: str | bytes) -> Any:
        action = self.messages.receive(data, self.now)
        size = len(data.encode()) if isinstance(data, str) else len(data)
        if size > MAX_BYTES:
            assert action == Close(CloseCode.MESSAGE_TOO_BIG, "message too big")
            return None
        if isinstance(action, Close):
            assert action.code is CloseCode.RATE_LIMITED
            assert self.strikes == RATE_LIMIT_STRIKES, self.strikes
            self.closed = True
            return None
        if isinstance(action, Reply) and action.message.get("code") == str(ErrorCode.RATE_LIMITED):
            self.strikes += 1
            assert action.message["retry_after"] > 0
            return None
        self.strikes = 0
        self.accepted_at.append(self.now)
        return action

    @precondition(lambda self: self.closed)
    @rule()
    def reconnect(self) -> None:
        """A closed connection is over: the client comes back on a new one."""
        self.start()

    @precondition(lambda self: not self.closed)
    @rule(seconds=st.sampled_from([0.0, 0.0, 0.01, 0.3, 2.0]))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    @precondition(lambda self: not self.closed)
    @rule(request_id=request_ids)
    def ping(self, request_id: Any) -> None:
        message: dict[str, Any] = {"type": "ping"}
        if request_id is not None:
            message["id"] = request_id
        action = self.send(orjson.dumps(message))
        if action is None:
            return
        if isinstance(request_id, str) and len(request_id) > 128:
            assert action.message["code"] == str(ErrorCode.BAD_REQUEST)
            return
        expected = {"type": "pong"} | ({"id": request_id} if request_id is not None else {})
        assert action == Reply(expected)

    @precondition(lambda self: not self.closed)
    @rule(project_id=project_ids, since=sinces, snapshot=st.sampled_from([None, True, False]))
    def subscribe(self, project_id: str, since: int | None, snapshot: bool | None) -> None:
        message: dict[str, Any] = {"type": "subscribe", "project_id": project_id, "id": 7}
        if since is not None:
            message["since"] = since
        if snapshot is not None:
            message["snapshot"] = snapshot
        action = self.send(orjson.dumps(message))
        if action is not None:
            assert action == Subscribe(project_id, since, 7, bool(snapshot))

    @precondition(lambda self: not self.closed)
    @rule(project_id=project_ids)
    def unsubscribe(self, project_id: str) -> None:
        action = self.send(orjson.dumps({"type": "unsubscribe", "project_id": project_id}))
        if action is not None:
            assert action == Unsubscribe(project_id, None)

    @precondition(lambda self: not self.closed)
    @rule(
        message=st.one_of(
            st.binary(max_size=40),
            st.text(max_size=40),
            junk_json.map(lambda v: orjson.dumps(v).decode()),
            st.fixed_dictionaries(
                {"type": st.sampled_from(["subscribe", "unsubscribe", "nope", 3])},
                optional={"project_id": junk_json, "since": junk_json, "snapshot": junk_json},
            ).map(orjson.dumps),
        )
    )
    def garbage(self, message: str | bytes) -> None:
        action = self.send(message)
        if action is None:
            return
        # Whatever it was: a bad_request error, or (by chance) a valid request.
        if isinstance(action, Reply):
            assert action.message["type"] in ("error", "pong")
            if action.message["type"] == "error":
                assert action.message["code"] == str(ErrorCode.BAD_REQUEST)
        else:
            assert isinstance(action, Subscribe | Unsubscribe)

    @precondition(lambda self: not self.closed)
    @rule(extra=st.integers(1, 5000))
    def oversize(self, extra: int) -> None:
        self.send("x" * (MAX_BYTES + extra))

    @precondition(lambda self: not self.closed)
    @rule(count=st.integers(1, 30))
    def flood(self, count: int) -> None:
        for _ in range(count):
            if self.closed:
                return
            action = self.send(b'{"type": "ping"}')
            if action is not None:
                assert action == Reply({"type": "pong"})

    @invariant()
    def rate_is_bounded(self) -> None:
        # Never more than the burst plus what the rate refills, over any stretch.
        if self.accepted_at:
            first = self.accepted_at[0]
            window = [t for t in self.accepted_at if t >= first]
            assert len(window) <= BURST + RATE * (self.now - first) + 1


TestClientMessages = ClientMessagesMachine.TestCase
TestClientMessages.settings = budget(60)


# -- delivery ----------------------------------------------------------------------------

PROJECTS = ("p1", "p2")
QUEUE_MESSAGES = 12
QUEUE_BYTES = 4000


def event(project_id: str, seq: int) -> Frame:
    text = orjson.dumps({"type": "file.uploaded", "project_id": project_id, "seq": seq})
    return Frame(text.decode(), "file.uploaded", project_id, seq)


class DeliveryMachine(RuleBasedStateMachine):
    """The hub's side played at random: what ``hub.py`` does with each verdict."""

    @initialize()
    def start(self) -> None:
        self.delivery = Delivery(
            max_subscriptions=3, max_queue_messages=QUEUE_MESSAGES, max_queue_bytes=QUEUE_BYTES
        )
        self.head = dict.fromkeys(PROJECTS, 0)  # the log's newest seq
        self.channel_head = dict.fromkeys(PROJECTS, 0)  # what the node has seen
        self.late: list[Frame] = []  # live events whose broker message is delayed
        self.replaying: set[str] = set()
        # What each subscription (by identity) has given the client, in order.
        self.given: dict[int, list[int]] = {}
        self.streams: dict[int, tuple[str, int | None]] = {}  # id -> (project, start cursor)
        self.slow = False

    def carry_out(self, verdict: Verdict, project_id: str | None) -> None:
        if verdict is Verdict.SLOW:
            self.slow = True
            assert not self.delivery.open
        elif verdict is Verdict.REPLAY:
            assert project_id is not None
            sub = self.delivery.subs[project_id]
            assert sub.state is SubState.RECOVERING
            self.replaying.add(project_id)

    def drained(self) -> None:
        for frame in self.delivery.queue.drain():
            if frame.seq is None or frame.project_id is None:
                continue
            sub = self.delivery.subs.get(frame.project_id)
            stream = id(sub) if sub is not None else None
            if stream in self.given:
                self.given[stream].append(frame.seq)

    @rule(project_id=st.sampled_from(PROJECTS))
    def commit(self, project_id: str) -> None:
        """A change commits; its broker message arrives now, later, twice, or never."""
        self.head[project_id] += 1
        frame = event(project_id, self.head[project_id])
        self.late.append(frame)

    @precondition(lambda self: self.late)
    @rule(data=st.data(), fate=st.sampled_from(["arrive", "arrive", "twice", "lost"]))
    def broker(self, data: st.DataObject, fate: str) -> None:
        frame = self.late.pop(data.draw(st.integers(0, len(self.late) - 1)))
        if fate == "lost":
            return
        assert frame.project_id is not None and frame.seq is not None
        self.channel_head[frame.project_id] = max(self.channel_head[frame.project_id], frame.seq)
        for _ in range(2 if fate == "twice" else 1):
            self.carry_out(self.delivery.offer(frame), frame.project_id)
            if frame.seq == 1 or frame.seq % 3 == 0:  # some are project.* for the audience
                self.delivery.offer_audience(frame)

    @rule(project_id=st.sampled_from(PROJECTS), data=st.data())
    def subscribe(self, project_id: str, data: st.DataObject) -> None:
        """A subscribe (with or without ``since``) arrives and the database is read."""
        if not self.delivery.request(project_id):
            assert len(self.delivery.subs) >= 3
            return
        since = data.draw(st.one_of(st.none(), st.integers(0, self.head[project_id] + 2)))
        self.drained()  # the client reads what was queued before the new stream starts
        sub = self.delivery.begin(project_id)
        self.replaying.discard(project_id)
        oldest = max(1, self.head[project_id] - 5)  # retention keeps the newest few
        start = self.delivery.start(
            sub, since, oldest, self.head[project_id], self.channel_head[project_id]
        )
        self.given[id(sub)] = []
        self.streams[id(sub)] = (project_id, sub.cursor)
        if start.replay:
            self.replaying.add(project_id)

    @rule(project_id=st.sampled_from(PROJECTS))
    def unsubscribe(self, project_id: str) -> None:
        self.drained()
        ended = self.delivery.end(project_id)
        if ended is not None:
            self.given.pop(id(ended), None)
        self.replaying.discard(project_id)

    @precondition(lambda self: self.replaying)
    @rule(data=st.data(), limit=st.integers(1, 4))
    def replay_page(self, data: st.DataObject, limit: int) -> None:
        """One page of the log after the cursor, as ``hub._run_replay`` reads it."""
        project_id = data.draw(st.sampled_from(sorted(self.replaying)))
        sub = self.delivery.subs.get(project_id)
        if sub is None or sub.state is not SubState.RECOVERING:
            self.replaying.discard(project_id)
            return
        oldest = max(1, self.head[project_id] - 5)
        first = max(sub.cursor + 1, oldest)
        page = list(range(first, min(self.head[project_id], first + limit - 1) + 1))
        for seq in page:
            step = self.delivery.replayed(sub, seq)
            if step is Step.PUSH:
                verdict = self.delivery.enqueue(event(project_id, seq))
                self.carry_out(verdict, project_id)
            elif step is Step.LOST:
                self.replaying.discard(project_id)  # the hub restarts it, unrecovered
                self.given.pop(id(sub), None)
                self.delivery.end(project_id, sub)
                return
            elif step is Step.STOP:
                self.replaying.discard(project_id)
                return
        head = max(self.channel_head[project_id], self.head[project_id])
        if self.delivery.page_done(sub, len(page), limit, head):
            self.replaying.discard(project_id)

    @rule()
    def head_sync(self) -> None:
        for project_id in PROJECTS:
            self.channel_head[project_id] = self.head[project_id]
            sub = self.delivery.subs.get(project_id)
            if sub is not None and self.delivery.behind(sub, self.head[project_id]):
                self.replaying.add(project_id)

    @rule()
    def read(self) -> None:
        self.drained()

    @invariant()
    def streams_are_in_order_once_without_gaps(self) -> None:
        for stream, seqs in self.given.items():
            _, start = self.streams[stream]
            expected = list(range((start or 0) + 1, (start or 0) + 1 + len(seqs)))
            assert seqs == expected, (seqs, start)

    @invariant()
    def queue_is_bounded(self) -> None:
        queue = self.delivery.queue
        assert len(queue) <= QUEUE_MESSAGES
        if self.slow:
            assert not self.delivery.open


TestDelivery = DeliveryMachine.TestCase
# Enough that a gap let through live (offer() without its cursor check) is found.
TestDelivery.settings = budget(150)
