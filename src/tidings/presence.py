"""Presence: who is viewing a project, derived from who is subscribed to it on any node.

The hub tells :class:`Presence` when a connection's subscription opens (its ``subscribed``
reply is sent) and when it closes (unsubscribe, disconnect, access revoked, project
deleted). Per (project, user) the node counts its connections; only a count going from 0
to 1 or back to 0 changes the node's entry in the shared :class:`PresenceStore`
(``broker/``). The store says which of those changes made a user appear in or vanish from
a project *anywhere*, reporting each change to exactly one node, which publishes
``presence.joined`` / ``presence.left`` as an ephemeral envelope: every node's hub hands it
to the project's announced subscriptions (members only: subscribing checks access, and
losing access ends the subscription).

The store is written by one task per node, in batches: what accumulated while the previous
write was under way goes in the next one, as the difference between what the node's
connections hold and what the store holds for it, so a subscription that opens and closes
in between costs nothing and announces nothing. The same task refreshes the node's entries
every quarter of the expiry and removes the entries of nodes that stopped refreshing
theirs (a killed node: its viewers leave within 1.25 times the expiry). Memory: one entry per
(project, user) some connection of the node holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from bisect import bisect_left
from typing import Any

from tidings.broker import PresenceChanges, PresenceStore, Viewer
from tidings.events import EventLog
from tidings.outages import log_failure
from tidings.stopping import cancel_and_wait

logger = logging.getLogger("tidings.presence")

PRESENCE_JOINED = "presence.joined"
PRESENCE_LEFT = "presence.left"
PRESENCE_TYPES = frozenset({PRESENCE_JOINED, PRESENCE_LEFT})

Key = tuple[str, str]  # (project id, user id)

# Seconds a project's viewer list, kept up to date by the presence changes this node hears,
# is believed without reading the store again: the bound on a change whose broker
# message this node missed.
LIST_TTL = 5.0


def user_json(viewer: Viewer) -> dict[str, str]:
    return {"id": viewer.user_id, "username": viewer.username}


class ViewerList:
    """A project's viewers as ``subscribed`` lists them (by username, then id), kept in
    order as changes arrive: a subscribe reads none of it in Python, however many there
    are (with every client of a large project coming back at once, building and sorting
    the list for each one was a quarter of the node's time)."""

    __slots__ = ("keys", "read_at", "users")

    def __init__(self, viewers: list[Viewer], read_at: float) -> None:
        """``viewers`` in the list's order, as the store and :meth:`Presence._read` give
        them."""
        self.keys = [(v.username, v.user_id) for v in viewers]
        self.users = [user_json(v) for v in viewers]
        self.read_at = read_at

    def add(self, user_id: str, username: str) -> None:
        key = (username, user_id)
        i = bisect_left(self.keys, key)
        if i == len(self.keys) or self.keys[i] != key:
            self.keys.insert(i, key)
            self.users.insert(i, {"id": user_id, "username": username})

    def remove(self, user_id: str, username: str) -> None:
        key = (username, user_id)
        i = bisect_left(self.keys, key)
        if i < len(self.keys) and self.keys[i] == key:
            del self.keys[i]
            del self.users[i]

    def including(self, user_id: str, username: str) -> list[dict[str, str]]:
        """The list with this user in it (a subscriber's own arrival may not have been
        written to the store yet). Not to be changed: it may be the list itself."""
        key = (username, user_id)
        i = bisect_left(self.keys, key)
        if i < len(self.keys) and self.keys[i] == key:
            return self.users
        return [*self.users[:i], {"id": user_id, "username": username}, *self.users[i:]]


class Presence:
    """One node's side of presence; see the module docstring.

    :meth:`opened` and :meth:`closed` never await (the hub calls them from its fan-out and
    subscription paths); the store is written by the task :meth:`start` starts.
    """

    def __init__(
        self, store: PresenceStore, eventlog: EventLog, expiry: float, node: str | None = None
    ) -> None:
        self.store = store
        self.eventlog = eventlog
        self.node = node or uuid.uuid4().hex
        self.interval = expiry / 4
        self._conns: dict[Key, set[str]] = {}  # client ids subscribed, per (project, user)
        self._viewers: dict[Key, Viewer] = {}  # every key in _conns or _stored
        self._stored: set[Key] = set()  # what the store holds for this node
        self._dirty: set[Key] = set()  # keys whose _conns and _stored may disagree
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Projects this node has subscribers of: their viewer lists, and how many changes
        # the node has heard of each (a list read while one arrives is not kept).
        self._lists: dict[str, ViewerList] = {}
        self._heard: dict[str, int] = {}

    # -- the hub's calls ------------------------------------------------------------------

    def opened(self, project_id: str, user_id: str, username: str, client_id: str) -> None:
        """A connection's subscription to the project was announced; idempotent."""
        key = (project_id, user_id)
        conns = self._conns.get(key)
        if conns is None:
            conns = self._conns[key] = set()
            self._viewers.setdefault(key, Viewer(project_id, user_id, username))
            self._changed(key)
        conns.add(client_id)

    def closed(self, project_id: str, user_id: str, client_id: str) -> None:
        """A connection's subscription to the project ended; idempotent."""
        key = (project_id, user_id)
        conns = self._conns.get(key)
        if conns is None or client_id not in conns:
            return
        conns.discard(client_id)
        if not conns:
            del self._conns[key]
            self._changed(key)

    def _changed(self, key: Key) -> None:
        self._dirty.add(key)
        self._wake.set()

    async def viewers(self, project_id: str) -> list[dict[str, str]]:
        """Who views ``project_id`` on any node, as ``{"id", "username"}``, by username.

        If the store cannot be read, this node's own viewers (logged)."""
        found, _ = await self._read(project_id)
        return [user_json(v) for v in found]

    async def _read(self, project_id: str) -> tuple[list[Viewer], bool]:
        """The project's viewers by username, then id, and whether they are the store's:
        if it cannot be read, this node's own (logged)."""
        try:
            return await self.store.viewers(project_id), True
        except Exception as exc:
            log_failure(
                logger, exc, "presence of %s not read; this node's viewers only", project_id
            )
        local = sorted(
            (v for k, v in self._viewers.items() if k[0] == project_id and k in self._conns),
            key=lambda v: (v.username, v.user_id),
        )
        return local, False

    async def listed(self, project_id: str, user_id: str, username: str) -> list[dict[str, str]]:
        """:meth:`viewers` with the given user among them, for a ``subscribed`` reply: from
        the project's list as this node knows it (the store's, read at most
        :data:`LIST_TTL` ago, and every change heard since), without the store. The
        hub hands the list out and announces the subscription in one step, so a change
        is either in the list or reaches the subscription after it."""
        now = asyncio.get_running_loop().time()
        found = self._lists.get(project_id)
        if found is None or now - found.read_at > LIST_TTL:
            heard = self._heard.get(project_id, 0)
            viewers, stored = await self._read(project_id)
            found = ViewerList(viewers, now)
            # Kept only if it is the store's and no change arrived while it was read.
            if stored and self._heard.get(project_id, 0) == heard:
                self._lists[project_id] = found
        return found.including(user_id, username)

    def heard(self, kind: str, project_id: str, user: dict[str, str]) -> None:
        """A presence change of a project this node has subscribers of, as every node
        hears it (the hub's fan-out)."""
        self._heard[project_id] = self._heard.get(project_id, 0) + 1
        found = self._lists.get(project_id)
        if found is not None:
            if kind == PRESENCE_JOINED:
                found.add(user["id"], user["username"])
            else:
                found.remove(user["id"], user["username"])

    def unwatched(self, project_id: str) -> None:
        """The node has no subscriber of the project any more: its list goes."""
        self._lists.pop(project_id, None)
        self._heard.pop(project_id, None)

    def local_users(self) -> int:
        """(project, user) pairs this node's connections hold."""
        return len(self._conns)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.connect()
        await self._sync()  # registers the node
        self._task = asyncio.create_task(self._run(), name="tidings-presence")

    async def stop(self) -> None:
        """Remove the node's entries at once (their users leave where no other node holds
        them) and announce it."""
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        try:
            await self._announce(await self.store.forget(self.node))
        except Exception as exc:
            log_failure(logger, exc, "removing this node's presence failed; it expires")
        await self.store.disconnect()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_expiry = loop.time() + self.interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_expiry - loop.time())):
                    await self._wake.wait()
            try:
                await self._sync()
                if loop.time() >= next_expiry:
                    next_expiry = loop.time() + self.interval
                    await self._announce(await self.store.expire())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_failure(logger, exc, "presence update failed; retrying")
                await asyncio.sleep(self.interval)

    async def _sync(self) -> None:
        """Write what changed to the store (at least refresh the node's entries); announce
        who joined or left. On failure the changes wait for the next attempt."""
        self._wake.clear()
        dirty, self._dirty = self._dirty, set()
        add = [k for k in dirty if k in self._conns and k not in self._stored]
        remove = [k for k in dirty if k not in self._conns and k in self._stored]
        try:
            changes = await self.store.update(
                self.node,
                [self._viewers[k] for k in add],
                [self._viewers[k] for k in remove],
            )
        except BaseException:
            self._dirty |= dirty
            raise
        if changes.registered:
            # The store did not know the node (its first update, or it expired while this
            # node did not refresh): what it held before is gone; add it all again.
            self._stored = set(add)
            self._dirty |= self._conns.keys() - self._stored
            if self._dirty:
                self._wake.set()
        else:
            self._stored.difference_update(remove)
            self._stored.update(add)
        for key in dirty:
            if key not in self._conns and key not in self._stored:
                self._viewers.pop(key, None)
        await self._announce(changes)

    async def _announce(self, changes: PresenceChanges) -> None:
        for kind, viewers in ((PRESENCE_JOINED, changes.joined), (PRESENCE_LEFT, changes.left)):
            for viewer in viewers:
                body: dict[str, Any] = {"user": user_json(viewer)}
                await self.eventlog.publish_ephemeral(viewer.project_id, kind, body)
