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


def user_json(viewer: Viewer) -> dict[str, str]:
    return {"id": viewer.user_id, "username": viewer.username}


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
        try:
            found = await self.store.viewers(project_id)
        except Exception as exc:
            log_failure(
                logger, exc, "presence of %s not read; this node's viewers only", project_id
            )
            found = sorted(
                (v for k, v in self._viewers.items() if k[0] == project_id and k in self._conns),
                key=lambda v: (v.username, v.user_id),
            )
        return [user_json(v) for v in found]

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
