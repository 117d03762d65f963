"""A guest removed and added again while their clients come and go, against every order in
which one node may hear of it: a seeded, randomized simulation of ``hub.py``.

The chaos suite (``tests/chaos.py``) finds such leaks only by chance, under real faults,
with no way to replay the one run that found it. Here the test is the broker: each change
is committed to a real database (SQLite) and its broker message is held back, then handed
to the node late, out of order, or never; the node may lose its broker subscription, run
its head sync, and see guests subscribe with any ``since`` at any moment, their database
reads racing with all of it.

The rule, checked as the node queues each frame for a guest's socket: a durable event
of the project is sent to the guest only if they could see it (a member when it was
committed, their own removal included), or they are a member now (a member reads the
project's history), or it was committed before the end of a membership the node may act
on for its subscription, and the node has not been told of that end (the removal's event
or its control message) yet. A node may act on a membership that lasted while the
subscribe waited, or one it could not know had ended when it answered (not told of the
removal, and handed nothing after it: a gap it must notice, as the missing event may be
the removal), or one that began while the subscription lasted (each page of the log it
reads, it reads as the user may see it then). A node cannot act on news it does not
have; once it has it, nothing more is sent.

A seed that breaks the rule prints its trace: ``python -m tests.test_hub_races SEED``
replays it alone (``SEED LAST`` a range).
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections import deque
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import delete

from tests.test_hub import RecordingSocket, World, built_world, subscribe
from tidings.broker.memory import MemoryBroker
from tidings.connection import Connection
from tidings.events import FILE_UPLOADED, MEMBER_REMOVED, PROJECT_UPDATED, Envelope, EventLog
from tidings.frames import Frame
from tidings.models import Member
from tidings.outqueue import OutboundQueue

SEEDS = 16
STEPS = 160
ACTIONS = ["change", "member", "deliver", "lose", "resubscribed", "sync"]
ACTIONS += ["connect", "resubscribe", "drop", "wait"]
NOT_EVENTS = frozenset({"subscribed", "unsubscribed", "error", "pong"})


def label(raw: bytes) -> str:
    envelope = Envelope.decode(raw)
    return str(envelope.seq) if envelope.seq is not None else envelope.type


class HeldBroker(MemoryBroker):
    """Keeps every published message for the simulation to hand over (or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[bytes] = []

    async def publish(self, channel: str, message: bytes) -> None:
        self.held.append(message)


class Watched(OutboundQueue[Frame]):
    """A guest connection's outbound queue: each frame is checked against the rule as the
    node queues it (what it decides to send, whenever the socket then writes it)."""

    def __init__(self, sim: Simulation, name: str) -> None:
        super().__init__(1000, 1 << 20)
        self.sim = sim
        self.name = name
        # For each subscribe sent and not answered yet, in order: the member epochs since.
        self.asks: deque[set[int]] = deque()
        # Those of the subscription answered last, and every membership since, during
        # which it may read a page of the log: None while no subscription is answered.
        self.granted: set[int] | None = None

    def put(self, item: Frame) -> bool:
        self.sim.queued(self, orjson.loads(item.text))
        return super().put(item)


class Simulation:
    def __init__(self, world: World, seed: int) -> None:
        self.world = world
        self.rng = random.Random(seed)
        self.broker = HeldBroker()
        self.log = EventLog(world.db, self.broker, 10_000, "sim")
        self.project = ""
        self.guest = ""
        self.member = True  # what the database says now (lenient while a change commits)
        self.changes: list[tuple[int, bool]] = []  # (seq, a member from it on)
        self.epoch = 0  # one per membership change: the guest is a member in odd ones
        self.removals: dict[int, int] = {}  # member epoch -> the seq of the removal ending it
        self.known = 0  # the newest seq the node was handed (or its head sync read)
        self.told: set[int] = set()  # member epochs whose end the node had a message of
        self.ends: dict[int, int] = {}  # id() of a held control message -> epoch it ends
        self.last_removal: list[bytes] = []  # the messages the last removal published
        self.guests: list[Watched] = []
        self.head = 0
        self.seen = 0  # the newest seq any guest client was given
        self.conns: list[tuple[str, Connection]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.trace: list[str] = []
        self.leaks: list[str] = []
        self.count = 0

    # -- the rule --

    def visible(self, seq: int) -> bool:
        member = False
        for at, becomes in self.changes:
            if at > seq:
                break
            # Removed at `at`: that event itself is theirs to see.
            member = becomes or at == seq
        return member

    def ended(self, epoch: int) -> bool:
        """Whether the node can know that the member epoch ``epoch`` may be over: it was
        told (the removal's event or its control message), or it was handed anything after
        the removal (a gap it must notice: the missing event may be the removal)."""
        removal = self.removals.get(epoch)
        return epoch in self.told or (removal is not None and self.known >= removal)

    def current(self) -> set[int]:
        """The member epochs a new decision of the node may still rest on."""
        return {e for e in range(1, self.epoch + 1, 2) if not self.ended(e)}

    def carries(self, epoch: int, seq: int) -> bool:
        """Whether a subscription answered on the member epoch ``epoch`` may still carry
        the event ``seq``: one committed before the removal ending it, until the node is
        told of that removal (a page read before it may be sent after a gap; once told,
        the subscription ends)."""
        removal = self.removals.get(epoch)
        return epoch not in self.told and (removal is None or seq < removal)

    def queued(self, socket: Watched, message: dict[str, Any]) -> None:
        kind, seq = message.get("type"), message.get("seq")
        if message.get("project_id") != self.project:
            return
        if kind == "subscribed":
            # Read while waiting, or from a grant the node remembers from a membership whose
            # end it has not heard of.
            socket.granted = socket.asks.popleft() | self.current()
            self.trace.append(f"  {socket.name} is sent subscribed {seq}, {socket.granted}")
            return
        if kind in ("error", "unsubscribed"):
            if kind == "error":
                socket.asks.popleft()
            socket.granted = None
            self.trace.append(f"  {socket.name} is sent {kind}")
            return
        if kind in NOT_EVENTS or not isinstance(seq, int):
            return
        self.seen = max(self.seen, seq)
        self.trace.append(f"  {socket.name} is sent {kind} {seq}")
        granted = socket.granted or set()
        if self.visible(seq) or self.member or any(self.carries(e, seq) for e in granted):
            return
        self.leaks.append(
            f"{socket.name} is sent seq {seq}; membership changes {self.changes}, "
            f"subscription answered in member epochs {sorted(granted)}, "
            f"the node handed up to {self.known} and told of {sorted(self.told)}"
        )

    def asked(self, conn: Connection) -> None:
        """A subscribe sent: it may be answered from any membership until its reply."""
        if isinstance(conn.queue, Watched):
            conn.queue.asks.append({self.epoch} if self.member else set())

    # -- the world --

    async def setup(self) -> None:
        world = self.world
        self.project = await world.project()  # seq 1
        self.guest = await world.user("bob")
        await self.set_member(True)  # seq 2
        await self.connect("owner", world.user_id, None)

    async def set_member(self, member: bool) -> None:
        owner = self.world.user_id
        held = len(self.broker.held)
        ended = self.epoch
        if member:
            self.epoch += 1
            for watched in self.guests:
                for epochs in watched.asks:
                    epochs.add(self.epoch)
                if watched.granted is not None:
                    watched.granted.add(self.epoch)
        async with self.world.db.write() as session:
            if member:
                self.member = True  # a read may see it before the commit returns
                session.add(Member(project_id=self.project, user_id=self.guest))
                seq = await self.log.record(
                    session, self.project, PROJECT_UPDATED, {"n": "added"}, (owner, self.guest)
                )
            else:
                await session.execute(
                    delete(Member).where(
                        Member.project_id == self.project, Member.user_id == self.guest
                    )
                )
                seq = await self.log.record(
                    session,
                    self.project,
                    PROJECT_UPDATED,
                    {"n": "removed"},
                    (owner,),
                    revoked=(self.guest,),
                )
        if not member:
            self.member = False
            self.epoch += 1
            await self.log.publish_control(
                MEMBER_REMOVED, {"project_id": self.project, "user_id": self.guest}
            )
            self.removals[ended] = seq
            self.last_removal = self.broker.held[held:]
            for raw in self.last_removal:
                if Envelope.decode(raw).type == MEMBER_REMOVED:
                    self.ends[id(raw)] = ended
        self.changes.append((seq, member))
        self.head = seq
        self.trace.append(f"{'added' if member else 'removed'} at {seq}")

    async def change(self) -> None:
        """A file uploaded, mostly; now and then the project updated (which reaches the
        project lists of its members, and makes the node forget its grants)."""
        kind, audience = FILE_UPLOADED, ()
        if self.rng.random() < 0.25:
            kind, audience = PROJECT_UPDATED, (self.world.user_id,)
            if self.member:
                audience += (self.guest,)
        async with self.world.db.write() as session:
            seq = await self.log.record(session, self.project, kind, {"n": 1}, audience)
        self.head = seq
        self.trace.append(f"{kind} {seq}")

    async def connect(self, name: str, user_id: str, since: int | None) -> None:
        conn = self.world.connection(RecordingSocket(), client_id=name, user_id=user_id)
        if user_id == self.guest:
            conn.queue = Watched(self, name)
            self.guests.append(conn.queue)
        self.conns.append((name, conn))
        self.asked(conn)
        conn.receive(subscribe(self.project, since=since))
        self.trace.append(f"{name} connects, since {since}")

    def since(self) -> int | None:
        """Where a guest's client resumes: from scratch, after the newest event a guest was
        sent, right after their last removal (the event that client saw elsewhere), or
        anywhere (a client may send any number)."""
        removals = [seq for seq, member in self.changes if not member]
        choices = [None, self.seen, self.rng.randint(0, self.head + 1)]
        return self.rng.choice(choices + removals[-1:] * 2)

    async def sync(self, head: int) -> None:
        await self.world.hub.sync_heads()
        self.known = max(self.known, head)

    def background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- one step --

    async def step(self) -> None:
        rng, hub, held = self.rng, self.world.hub, self.broker.held
        action = rng.choices(
            ACTIONS,
            weights=[4, 1.2, 6, 1.5, 0.3, 0.6, 2, 1, 1, 3],
        )[0]
        if action == "change":
            await self.change()
        elif action == "member":
            await self.set_member(not self.member)
        elif action == "deliver" and held:
            index = 0 if rng.random() < 0.7 else rng.randrange(len(held))
            raw = held.pop(index)
            self.trace.append(f"deliver {label(raw)} ({index} of {len(held) + 1})")
            if id(raw) in self.ends:
                self.told.add(self.ends.pop(id(raw)))
            seq = Envelope.decode(raw).seq
            self.known = max(self.known, seq or 0)
            hub.dispatch(raw)
        elif action == "lose" and held:
            # One message lost, or both of the last removal's (its node died before it
            # published them): the loss that matters most, made likelier.
            lost = [held[rng.randrange(len(held))]]
            if rng.random() < 0.5 and all(raw in held for raw in self.last_removal):
                lost = self.last_removal
            for raw in lost:
                held.remove(raw)
                self.ends.pop(id(raw), None)
                self.trace.append(f"lose {label(raw)}")
        elif action == "resubscribed":
            self.trace.append("broker subscription back")
            hub._maybe_missed()
        elif action == "sync":
            self.trace.append("head sync")
            self.background(self.sync(self.head))
        elif action == "connect":
            self.count += 1
            if rng.random() < 0.2:
                await self.connect(f"owner{self.count}", self.world.user_id, None)
            else:
                await self.connect(f"guest{self.count}", self.guest, self.since())
        elif action == "resubscribe" and self.conns:
            name, conn = rng.choice(self.conns)
            since = self.since()
            self.trace.append(f"{name} subscribes again, since {since}")
            self.asked(conn)
            conn.receive(subscribe(self.project, since=since))
        elif action == "drop" and self.conns:
            name, conn = self.conns.pop(rng.randrange(len(self.conns)))
            self.trace.append(f"{name} drops")
            hub.disconnected(conn, 1006)
        elif action == "wait":
            await asyncio.sleep(rng.choice([0, 0, 0, 0.001, 0.003]))

    async def run(self, steps: int) -> None:
        await self.setup()
        for _ in range(steps):
            await self.step()
            if self.leaks:
                return
        self.broker.held.clear()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for _, conn in self.conns:
            await conn.idle()


async def simulate(tmp_path: Path, seed: int, steps: int = STEPS) -> Simulation:
    async with built_world(tmp_path) as world:
        sim = Simulation(world, seed)
        await sim.run(steps)
        await asyncio.sleep(0.05)  # replays started by the last steps
        return sim


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_a_guest_is_sent_nothing_beyond_what_their_memberships_allow(
    tmp_path: Path, seed: int
) -> None:
    sim = await simulate(tmp_path, seed)
    assert not sim.leaks, "\n".join([*sim.leaks, "trace:", *sim.trace[-80:]])


if __name__ == "__main__":
    import tempfile

    first = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    last = int(sys.argv[2]) if len(sys.argv) > 2 else first
    failed = []
    for seed in range(first, last + 1):
        with tempfile.TemporaryDirectory() as folder:
            result = asyncio.run(simulate(Path(folder), seed, STEPS))
        if result.leaks:
            failed.append(seed)
            print(f"seed {seed}: LEAK")
            print("\n".join([*result.leaks[:3], "trace:", *result.trace[-120:]]))
        else:
            print(f"seed {seed}: ok ({result.head} events)")
    print(f"{len(failed)} of {last - first + 1} seeds broke the rule: {failed}")
