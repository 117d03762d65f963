"""Which events a connection gets, and when: every delivery decision, in one pure module.

No I/O, no clock, no asyncio. :class:`Delivery` is one connection's delivery state: its
subscriptions and its bounded outbound queue. The hub offers it events (live from the
broker, or replayed from the log) and acts on the :class:`Verdict` it returns: schedule a
write, start a replay, or close a slow consumer. The rules, each decided here only:

- A project's durable events reach a connection either through its subscription to that
  project, in strictly increasing ``seq`` order with no gap, or through the audience path
  (``project.*`` for project lists) while the connection has no subscription to it and has
  asked for none — a subscribe still waiting behind other messages counts as asked.
- A subscription is *requested* when its ``subscribe`` arrives, *pending* while the
  database is read, then *recovering* (replaying the log after its cursor) or *live*. Live
  events are ignored until it is live: the replay covers them, and ends only once the
  cursor has reached the newest seq the node has seen (the channel's head).
- A subscription that asked for a snapshot gets the project's state with its
  ``subscribed`` reply whenever it does not resume from ``since`` (none given, or the log
  no longer holds what follows it): the state read in the same transaction as the log
  bounds, so its seq is the latest one and the cursor starts there, as without a snapshot.
  One that can resume gets the missed events instead, as without a snapshot.
- Presence changes (``presence.*``, no ``seq``) reach a subscription once its
  ``subscribed`` reply (which lists the viewers) is queued, whether it is live or replaying.
  They may wait a little for company: alone in a queue they are written later (the hub's
  ``PRESENCE_WAIT``), with whatever follows them, and anything else queued after them
  is written at once, taking them along. Order is the queue's either way.
- A live event past the cursor + 1 reveals a gap (a lost broker message, two nodes
  publishing out of order): the subscription goes back to recovering. A replay that finds
  the log no longer holds the event after its cursor (trimmed by retention meanwhile) asks
  for the subscription to start again, unrecovered.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol

from tidings.outqueue import OutboundQueue
from tidings.resume import decide


def snapshot_needed(asked: bool, since: int | None, oldest: int, latest: int) -> bool:
    """Whether a subscribe (``asked``: it wants a snapshot) is answered with the state at
    ``latest``, given the log bounds ``oldest..latest``: whenever it does not resume."""
    return asked and decide(since, oldest, latest).recovered is not True


# Durable events after which a subscription ends (the project is gone).
ENDING_TYPES = frozenset({"project.deleted"})


class SubState(enum.Enum):
    REQUESTED = "requested"  # asked for; the subscribe waits behind other messages
    PENDING = "pending"  # access and log bounds being read; live events ignored
    RECOVERING = "recovering"  # replaying the log after the cursor; live events ignored
    LIVE = "live"  # live events delivered in seq order

    def to(self, new: SubState) -> SubState:
        if new not in _TRANSITIONS[self]:
            raise RuntimeError(f"illegal subscription transition {self.value} -> {new.value}")
        return new


_TRANSITIONS = {
    SubState.REQUESTED: {SubState.PENDING},
    SubState.PENDING: {SubState.RECOVERING, SubState.LIVE},
    SubState.RECOVERING: {SubState.LIVE},
    SubState.LIVE: {SubState.RECOVERING},
}


class Verdict(enum.IntEnum):
    """What the caller must do after offering a frame. Falsy means nothing."""

    NONE = 0  # dropped, ignored, or queued behind frames already on their way
    FLUSH = 1  # queued into an empty queue: schedule a write
    SLOW = 2  # the queue is full: close the connection as a slow consumer
    REPLAY = 3  # a gap: the subscription is recovering, start a replay
    LATER = 4  # a frame that may wait, queued into an empty queue: schedule a later write


class Step(enum.Enum):
    """What to do with one event of a replay page."""

    PUSH = "push"  # queue it: it is the next one
    SKIP = "skip"  # already given
    STOP = "stop"  # the subscription ended or restarted: stop this replay
    LOST = "lost"  # the log no longer holds the next event: start again, unrecovered


class Item(Protocol):
    """What the module needs of a frame (``frames.Frame`` provides it)."""

    @property
    def project_id(self) -> str | None: ...

    @property
    def seq(self) -> int | None: ...

    @property
    def size(self) -> int: ...

    @property
    def coalesce(self) -> Hashable | None: ...


class Subscription:
    """One project's subscription on one connection. ``cursor`` is the newest seq the
    connection has been given; ``requests`` counts subscribes still waiting to be handled;
    ``snapshot``: the client asked for the project's state whenever it cannot resume."""

    __slots__ = ("announced", "cursor", "project_id", "requests", "snapshot", "state")

    def __init__(self, project_id: str, snapshot: bool = False) -> None:
        self.project_id = project_id
        self.state = SubState.REQUESTED
        # The client was told ``subscribed`` (recovering or live): its end must be
        # announced too. Kept with the state: every presence change of a large project
        # asks it of each subscription.
        self.announced = False
        self.cursor = 0
        self.requests = 0
        self.snapshot = snapshot

    def move(self, new: SubState) -> None:
        self.state = self.state.to(new)
        self.announced = new is SubState.RECOVERING or new is SubState.LIVE


@dataclass(frozen=True, slots=True)
class Start:
    """How a subscription starts, once its project's log bounds are known."""

    recovered: bool | None  # for the `subscribed` reply; None: no `since` was given
    replay: bool  # True: replay the log after the cursor before going live
    snapshot: bool = False  # True: the reply carries the state at the cursor


class Delivery:
    """One connection's subscriptions and outbound queue; see the module docstring.

    ``max_subscriptions`` counts subscriptions requested or active.
    """

    __slots__ = ("max_subscriptions", "open", "queue", "subs", "waiting")

    def __init__(self, max_subscriptions: int, max_queue_messages: int, max_queue_bytes: int):
        self.max_subscriptions = max_subscriptions
        self.queue: OutboundQueue[Item] = OutboundQueue(max_queue_messages, max_queue_bytes)
        self.subs: dict[str, Subscription] = {}
        self.open = True  # False once closing: nothing more is queued
        # The queue holds frames that wait for a later write (LATER), and nothing else
        # since: the next other frame is written at once (a stale True with the queue
        # emptied meanwhile only says what an empty queue says).
        self.waiting = False

    # -- frames ----------------------------------------------------------------------------

    def offer(self, frame: Item) -> Verdict:
        """A live event of a project this connection may be subscribed to (fan-out path).

        Called for every event and subscriber: kept to a dictionary lookup and a compare.
        """
        sub = self.subs.get(frame.project_id)  # type: ignore[arg-type]
        if sub is None or sub.state is not SubState.LIVE:
            return Verdict.NONE  # not subscribed, or a replay from the log covers it
        seq = frame.seq
        if seq is not None:
            cursor = sub.cursor
            if seq != cursor + 1:
                if seq <= cursor:
                    return Verdict.NONE  # already given (a replay overlapped it)
                sub.move(SubState.RECOVERING)
                return Verdict.REPLAY
            sub.cursor = seq
        return self.enqueue(frame)

    def offer_audience(self, frame: Item) -> Verdict:
        """A ``project.*`` event for a user who can see the project (project lists)."""
        if frame.project_id in self.subs:
            return Verdict.NONE  # its subscription (requested or active) delivers it
        return self.enqueue(frame)

    def offer_presence(self, frame: Item) -> Verdict:
        """A ``presence.*`` change of a project: queued once the subscription has been
        answered ``subscribed`` (the list it applies to), live or still replaying: presence
        is not ordered with the project's events, and a replay must not hide it. Into an
        empty queue it asks for a later write (``LATER``): when many clients arrive at
        once, each arrival would otherwise cost every viewer of the project a write."""
        sub = self.subs.get(frame.project_id)  # type: ignore[arg-type]
        if sub is None or not sub.announced:
            return Verdict.NONE
        return self.enqueue(frame, later=True)

    def enqueue(self, frame: Item, later: bool = False) -> Verdict:
        """Queue a frame for this connection alone (replies, notices, heartbeats); with
        ``later``, a frame that may wait for a later write."""
        if not self.open:
            return Verdict.NONE
        queue = self.queue
        was_empty = not queue.count
        if self.waiting and not later:
            # Behind frames that wait for a later write only: this one is written now,
            # and they go with it.
            self.waiting = False
            was_empty = True
        if not queue.put(frame):
            self.open = False
            return Verdict.SLOW
        if not was_empty:
            return Verdict.NONE
        if later:
            self.waiting = True
            return Verdict.LATER
        return Verdict.FLUSH

    def fits(self, size: int) -> bool:
        """Whether a replayed frame of ``size`` bytes may be queued now: replays use at
        most three quarters of the queue and leave the rest to live events. A frame over
        that budget waits for an empty queue."""
        queue = self.queue
        if queue.count >= queue.max_messages * 3 // 4:
            return False
        return not queue.count or queue.nbytes + size <= queue.max_bytes * 3 // 4

    def free_bytes(self) -> int:
        """Bytes a replay may queue now (at least 1: a page always holds one event)."""
        queue = self.queue
        return max(1, queue.max_bytes * 3 // 4 - queue.nbytes)

    # -- subscription life -----------------------------------------------------------------

    def request(self, project_id: str) -> bool:
        """A ``subscribe`` arrived (it may wait behind others); False if over the limit.

        From now on the audience path no longer delivers this project's events."""
        sub = self.subs.get(project_id)
        if sub is None:
            if len(self.subs) >= self.max_subscriptions:
                return False
            sub = self.subs[project_id] = Subscription(project_id)
        sub.requests += 1
        return True

    def begin(
        self, project_id: str, *, waiting: bool = True, snapshot: bool = False
    ) -> Subscription:
        """Handle the oldest waiting ``subscribe`` of ``project_id`` (``waiting=False``: a
        restart the server decided): a fresh, pending subscription replaces whatever was
        there (subscribing again restarts from the new ``since``). ``snapshot``: it asks
        for the project's state when it cannot resume. The caller must stop the previous
        one's replay, if any."""
        old = self.subs.get(project_id)
        sub = Subscription(project_id, snapshot)
        if old is not None:
            sub.requests = old.requests - 1 if waiting and old.requests else old.requests
        sub.move(SubState.PENDING)
        self.subs[project_id] = sub
        return sub

    def start(
        self, sub: Subscription, since: int | None, oldest: int, latest: int, head: int
    ) -> Start:
        """The project's log holds ``oldest..latest``; the node has seen up to ``head``.

        ``Start.snapshot`` is :func:`snapshot_needed` of the same bounds: the caller must
        have read the state in the same transaction as the bounds when it is True (the
        cursor is then ``latest``: what follows the state is replayed or arrives live)."""
        resume = decide(since, oldest, latest)
        snapshot = snapshot_needed(sub.snapshot, since, oldest, latest)
        sub.cursor = resume.cursor
        if max(head, latest) > sub.cursor:
            sub.move(SubState.RECOVERING)
            return Start(resume.recovered, replay=True, snapshot=snapshot)
        sub.move(SubState.LIVE)
        return Start(resume.recovered, replay=False, snapshot=snapshot)

    def end(self, project_id: str, sub: Subscription | None = None) -> Subscription | None:
        """End the subscription (``sub``, if given, only if it is still the current one).

        Subscribes still waiting for the project keep it *requested*. Returns the ended
        subscription (None if there was none), for the caller to stop its replay and, if
        it was :attr:`~Subscription.announced`, announce its end."""
        current = self.subs.get(project_id)
        if current is None or (sub is not None and current is not sub):
            return None
        if current.requests:
            waiting = Subscription(project_id)
            waiting.requests = current.requests
            self.subs[project_id] = waiting
        else:
            del self.subs[project_id]
        return current

    def current(self, sub: Subscription) -> bool:
        """Whether ``sub`` is still this connection's subscription to its project."""
        return self.open and self.subs.get(sub.project_id) is sub

    # -- replays and heads -----------------------------------------------------------------

    def replayed(self, sub: Subscription, seq: int) -> Step:
        """One event read back from the log for a recovering subscription."""
        if not self.current(sub) or sub.state is not SubState.RECOVERING:
            return Step.STOP
        if seq <= sub.cursor:
            return Step.SKIP
        if seq != sub.cursor + 1:
            return Step.LOST
        sub.cursor = seq
        return Step.PUSH

    def page_done(self, sub: Subscription, count: int, limit: int, head: int) -> bool:
        """A replay page of ``count`` events (at most ``limit`` asked) is queued: True if the
        subscription is now live, False to read the next page."""
        if not self.current(sub) or sub.state is not SubState.RECOVERING:
            return True  # nothing more to read for it
        if count < limit and (sub.cursor >= head or count == 0):
            # Nothing is logged past the cursor: every later event arrives live.
            sub.move(SubState.LIVE)
            return True
        return False

    def given(self, sub: Subscription, seq: int) -> bool:
        """Whether the live ``sub`` has been given the event ``seq`` (it may end now)."""
        return sub.state is SubState.LIVE and sub.cursor >= seq

    def behind(self, sub: Subscription, head: int) -> bool:
        """The node learnt (head sync) that the project is at ``head``: True if a live
        subscription must now replay what it missed."""
        if sub.state is SubState.LIVE and sub.cursor < head:
            sub.move(SubState.RECOVERING)
            return True
        return False
