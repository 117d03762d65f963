"""``db.py`` and the migrations, on each database of the matrix."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiosqlite
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from tests.conftest import on_stacks
from tidings import db
from tidings.db import (
    MAX_BATCH,
    MIGRATIONS,
    Database,
    Tx,
    after_commit,
    create_engine,
    migrate,
    unavailable,
)
from tidings.models import Base


def alembic_config(connection: Connection | None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


def downgrade_to_nothing(connection: Connection) -> None:
    command.downgrade(alembic_config(connection), "base")


async def test_migrations_go_down_to_nothing_and_up_again(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    try:
        await migrate(engine)
        await migrate(engine)  # the newest schema already: nothing to do
        async with engine.connect() as conn:
            assert await conn.run_sync(tables) == set(Base.metadata.tables)
        async with engine.begin() as conn:
            await conn.run_sync(downgrade_to_nothing)
        async with engine.connect() as conn:
            assert await conn.run_sync(tables) == set()
        await migrate(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(tables) == set(Base.metadata.tables)
    finally:
        await engine.dispose()


def test_the_alembic_command_line_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"through tidings\.db\.migrate\(\)"):
        command.upgrade(alembic_config(None), "head")


async def test_sqlite_writers_of_a_node_take_turns_in_arrival_order(tmp_path: Path) -> None:
    """Queued in the process, in order: not retrying ``BEGIN IMMEDIATE`` in SQLite's busy
    handler, where whoever retries at the right moment goes next."""
    db = Database(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'order.db'}"))
    try:
        await migrate(db.engine)
        order: list[int] = []

        async def writer(i: int) -> None:
            async with db.write() as session:
                await session.execute(text("UPDATE projects SET last_seq = last_seq + 1"))
                await asyncio.sleep(0.005)  # hold the lock a while: the others queue
                order.append(i)

        await asyncio.gather(*(writer(i) for i in range(40)))
        assert order == list(range(40))
    finally:
        await db.dispose()


@on_stacks("postgres-redis")
async def test_a_connection_asyncpg_says_is_stuck_is_not_pooled_again(database_url: str) -> None:
    """asyncpg's ``InternalClientError`` ("cannot switch to state 12; another operation
    (2) is in progress") says the connection's protocol is stuck mid-operation: it is
    discarded, so the next checkout gets a new one, and the rest of the pool is kept.
    The stuck state itself could not be brought about on purpose; the statement here
    fails with the error asyncpg raises then."""
    from asyncpg.exceptions import InternalClientError

    engine = create_engine(database_url)
    stuck = "SELECT 'stuck'"

    def fail(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement == stuck:
            raise InternalClientError("cannot switch to state 12; another operation (2)")

    event.listen(engine.sync_engine, "before_cursor_execute", fail)
    backend = text("SELECT pg_backend_pid()")
    try:
        async with engine.connect() as first, engine.connect() as second:
            pids = [(await c.execute(backend)).scalar() for c in (first, second)]
            with pytest.raises(InternalClientError):
                await first.exec_driver_sql(stuck)
        async with engine.connect() as a, engine.connect() as b:
            again = {(await c.execute(backend)).scalar() for c in (a, b)}
        assert pids[0] not in again  # the stuck one was discarded
        assert pids[1] in again  # the other was kept
    finally:
        await engine.dispose()


@on_stacks("postgres-redis")
async def test_a_pooled_connection_is_tried_before_use_only_once_it_has_been_idle(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection in use a moment ago is handed out as it is: if it broke meanwhile,
    the statement given to it fails as the database being unavailable (a 503), and
    every connection the pool opened before is replaced, so the next requests succeed.
    One idle for ``PING_WHEN_IDLE`` seconds is tried first, and replaced if it broke:
    the statement succeeds."""
    engine = create_engine(database_url)
    admin = create_engine(database_url)
    backend = text("SELECT pg_backend_pid()")

    async def pids(count: int) -> set[int]:
        """The backends of ``count`` connections of the pool, used at once."""
        async with contextlib.AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(engine.connect()) for _ in range(count)]
            return {(await conn.execute(backend)).scalar_one() for conn in conns}

    async def used_then_ended(count: int) -> set[int]:
        used = await pids(count)
        async with admin.connect() as conn:
            ended = text("SELECT pg_terminate_backend(:pid, 5000)")
            for pid in used:
                assert (await conn.execute(ended, {"pid": pid})).scalar_one()
        return used

    try:
        monkeypatch.setattr(db, "PING_WHEN_IDLE", 3600.0)
        ended = await used_then_ended(2)
        with pytest.raises(DBAPIError) as failed:
            async with engine.connect() as conn:
                await conn.execute(backend)
        assert unavailable(failed.value)
        assert not await pids(2) & ended  # the other one was replaced too, unused

        monkeypatch.setattr(db, "PING_WHEN_IDLE", 0.0)
        ended = await used_then_ended(1)
        assert not await pids(1) & ended
    finally:
        await engine.dispose()
        await admin.dispose()


async def test_sqlite_reads_begin_nothing_snapshots_and_writes_do(tmp_path: Path) -> None:
    """A read's statements each see their own snapshot (no BEGIN: three fewer trips to
    the driver's thread); a snapshot begins a transaction, a write takes the lock first."""
    db = Database(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'begin.db'}"))
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        for block in (db.read, db.snapshot, db.write):
            async with block() as session:
                await session.execute(text("SELECT 1"))
        assert [s for s in statements if s.startswith("BEGIN")] == ["BEGIN", "BEGIN IMMEDIATE"]
        assert statements.count("SELECT 1") == 3
    finally:
        await db.dispose()


async def test_sqlite_connections_are_rolled_back_on_return_only_when_a_transaction_is_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's reset on return asks the driver to roll back only a transaction still
    open: a committed write or snapshot costs no trip for it; a write that failed before
    its commit leaves nothing open behind (the next writer gets the lock at once)."""
    db = Database(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'reset.db'}"))
    rollbacks = 0
    rollback = aiosqlite.Connection.rollback

    async def counted(self: aiosqlite.Connection) -> None:
        nonlocal rollbacks
        rollbacks += 1
        await rollback(self)

    try:
        async with db.write() as session:  # the first connection, as SQLAlchemy sets it up
            await session.execute(text("CREATE TABLE t (n INTEGER)"))
        monkeypatch.setattr(aiosqlite.Connection, "rollback", counted)
        for block in (db.snapshot, db.write, db.snapshot, db.write):
            async with block() as session:
                await session.execute(text("SELECT count(*) FROM t"))
        assert rollbacks == 0
        with pytest.raises(ZeroDivisionError):
            async with db.write() as session:
                await session.execute(text("INSERT INTO t VALUES (1)"))
                1 / 0  # noqa: B018
        assert rollbacks == 1
        async with asyncio.timeout(10), db.write() as session:  # the lock is free
            await session.execute(text("INSERT INTO t VALUES (2)"))
        async with db.read() as session:
            assert (await session.execute(text("SELECT n FROM t"))).scalars().all() == [2]
    finally:
        await db.dispose()


async def rows(db: Database) -> list[int]:
    async with db.read() as session:
        return list((await session.execute(text("SELECT n FROM t ORDER BY n"))).scalars())


async def test_commit_runs_a_plain_function_in_a_transaction_then_its_callbacks(
    database_url: str,
) -> None:
    """What ``work`` returns comes back once it is committed, and its after-commit
    callbacks see the change; an exception rolls it back, runs no callback and is raised."""
    seen: list[list[int]] = []

    async def look() -> None:
        seen.append(await rows(db))

    def insert(n: int, fail: bool = False) -> Callable[[Tx], int]:
        def work(tx: Tx) -> int:
            tx.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})
            after_commit(tx, look)
            if fail:
                raise LookupError(n)
            return int(tx.scalar(text("SELECT count(*) FROM t")))

        return work

    async with _table_t(database_url) as db:
        assert await db.commit(insert(1)) == 1
        assert seen == [[1]]
        with pytest.raises(LookupError):
            await db.commit(insert(2, fail=True))
        assert seen == [[1]]
        assert await db.commit(insert(3)) == 2
        assert await rows(db) == [1, 3]


async def test_sqlite_commits_and_writes_share_the_write_lock_each_in_arrival_order(
    tmp_path: Path,
) -> None:
    """:meth:`Database.commit` (its own connection, in a thread) and :meth:`Database.write`
    (aiosqlite's) queue for the one write lock together: each kind in the order it came,
    and the commits that came while one was being made go together in the next. (A
    commit that comes while a batch is committed may go after writes that came after it,
    and were already waiting for the lock: the batch waits for the lock as one.)"""
    order: list[int] = []

    def slow(i: int) -> Callable[[Tx], None]:
        def work(tx: Tx) -> None:
            tx.execute(text("INSERT INTO t VALUES (:n)"), {"n": i})
            time.sleep(0.005)  # in the commit thread: hold the lock a while
            order.append(i)

        return work

    async def writer(i: int) -> None:
        if i % 2:
            await db.commit(slow(i))
            return
        async with db.write() as session:
            await session.execute(text("INSERT INTO t VALUES (:n)"), {"n": i})
            await asyncio.sleep(0.005)
            order.append(i)

    async with _table_t(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}") as db:
        writers = []
        for i in range(40):  # one arriving each millisecond: the lock is held for 5
            writers.append(asyncio.create_task(writer(i)))
            await asyncio.sleep(0.001)
        await asyncio.gather(*writers)
        assert [i for i in order if i % 2] == list(range(1, 40, 2))
        assert [i for i in order if not i % 2] == list(range(0, 40, 2))
        assert db.transactions < 20
        assert sorted(await rows(db)) == list(range(40))


async def test_a_commit_whose_caller_is_cancelled_still_commits_and_calls_back(
    database_url: str,
) -> None:
    """A change that commits is published: cancelling the request that made it (a server
    stopping, say) does not stop its transaction half way or skip its callbacks."""
    called = asyncio.Event()

    def work(tx: Tx) -> None:
        _hold(tx)
        tx.execute(text("INSERT INTO t VALUES (7)"))
        after_commit(tx, _set(called))

    async with _table_t(database_url) as db:
        caller = asyncio.create_task(db.commit(work))
        await asyncio.sleep(0.1)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        async with asyncio.timeout(30):
            await called.wait()
        assert await rows(db) == [7]


async def test_what_a_transaction_that_does_not_commit_did_is_undone(
    database_url: str,
) -> None:
    """``tx.if_rolled_back``: called when the work raises (even with its caller gone) or
    the COMMIT is refused (a deferred constraint); not when the transaction commits."""
    db = Database(create_engine(database_url))
    undone: list[str] = []

    def work(name: str, row: int, fail: bool = False, slow: bool = False) -> Callable[[Tx], None]:
        def run(tx: Tx) -> None:
            tx.if_rolled_back(lambda: undone.append(name))
            if slow:
                _hold(tx)
            tx.execute(text("INSERT INTO c VALUES (:p)"), {"p": row})
            if fail:
                raise LookupError(name)

        return run

    try:
        await _parent_and_child_checked_at_commit(db)
        await db.commit(work("committed", 1))
        with pytest.raises(LookupError):
            await db.commit(work("raised", 1, fail=True))
        with pytest.raises(IntegrityError):
            await db.commit(work("refused at commit", 99))  # no p 99: checked at COMMIT
        caller = asyncio.create_task(db.commit(work("caller gone", 1, fail=True, slow=True)))
        await asyncio.sleep(0.1)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        async with asyncio.timeout(30):
            while len(undone) < 3:
                await asyncio.sleep(0.01)
        assert undone == ["raised", "refused at commit", "caller gone"]
        async with db.read() as session:
            assert list(await session.scalars(text("SELECT p FROM c"))) == [1]
    finally:
        await db.dispose()


async def test_commits_that_wait_together_go_in_one_transaction_and_fail_alone(
    database_url: str,
) -> None:
    """A group commit: the works that come while one is being committed go in the next
    transaction together, in order; one that raises (or whose statement fails) is undone
    alone, its caller alone gets the error, and the others commit and call back in order."""
    undone: list[int] = []
    called: list[int] = []

    def work(n: int, fail: str = "", slow: bool = False) -> Callable[[Tx], int]:
        def run(tx: Tx) -> int:
            if slow:
                _hold(tx)
            tx.if_rolled_back(lambda: undone.append(n))
            tx.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})
            after_commit(tx, lambda: _note(called, n))
            if fail == "raise":
                raise LookupError(n)
            if fail == "statement":
                tx.execute(text("INSERT INTO t VALUES (NULL)"))  # NOT NULL
            return n

        return run

    async with _table_t(database_url) as db:
        first = asyncio.create_task(db.commit(work(0, slow=True), key="p"))
        await asyncio.sleep(0.1)  # the first is being committed: the others wait together
        fails = {2: "raise", 4: "statement"}
        others = [
            asyncio.create_task(db.commit(work(n, fails.get(n, "")), key="p")) for n in range(1, 7)
        ]
        results = await asyncio.gather(first, *others, return_exceptions=True)
        assert results[:2] == [0, 1] and results[3] == 3 and results[5:] == [5, 6]
        assert isinstance(results[2], LookupError)
        assert isinstance(results[4], IntegrityError)
        assert db.transactions == 2
        assert await rows(db) == [0, 1, 3, 5, 6]
        assert called == [0, 1, 3, 5, 6]
        assert undone == [2, 4]


async def test_a_group_commit_takes_at_most_max_batch_works(tmp_path: Path) -> None:
    """Works beyond :data:`MAX_BATCH` wait for the next transaction."""

    def work(n: int, slow: bool = False) -> Callable[[Tx], None]:
        def run(tx: Tx) -> None:
            if slow:
                _hold(tx)
            tx.execute(_INSERT_T, {"n": n})

        return run

    async with _table_t(f"sqlite+aiosqlite:///{tmp_path / 'batch.db'}") as db:
        first = asyncio.create_task(db.commit(work(0, slow=True)))
        await asyncio.sleep(0.1)
        more = MAX_BATCH + 6
        await asyncio.gather(first, *(db.commit(work(n)) for n in range(1, more + 1)))
        assert db.transactions == 3
        assert await rows(db) == list(range(more + 1))


@on_stacks("postgres-redis")
async def test_two_nodes_batches_of_one_project_take_its_lock_in_turn(database_url: str) -> None:
    """Two nodes (a :class:`Database` each) change one project at once: each node's
    works wait and go together, the two nodes' batches take the project's row lock in
    turn, and every work gets the next number, none skipped or taken twice, in the order
    its node was given it. Another project's batch waits for neither."""

    def work(project: str, slow: bool = False) -> Callable[[Tx], int]:
        def run(tx: Tx) -> int:
            seq = _take_head(tx, project)  # the row lock, to the commit
            if slow:
                _hold(tx)
            if project == "p":
                tx.execute(_INSERT_T, {"n": seq})
            return seq

        return run

    async with _table_t(database_url) as a:
        b = Database(create_engine(database_url))
        try:
            await _heads(a, "p", "q")
            first = asyncio.create_task(a.commit(work("p", slow=True), key="p"))
            await asyncio.sleep(0.1)  # a holds the lock: b's batch waits for it in PostgreSQL
            on_b = [asyncio.create_task(b.commit(work("p"), key="p")) for _ in range(5)]
            on_a = [asyncio.create_task(a.commit(work("p"), key="p")) for _ in range(5)]
            assert await b.commit(work("q"), key="q") == 1
            assert not first.done()
            assert await first == 1
            from_b = await asyncio.gather(*on_b)
            from_a = await asyncio.gather(*on_a)
            for got in (from_a, from_b):
                assert got == list(range(got[0], got[0] + 5))
            assert sorted([1, *from_a, *from_b]) == list(range(1, 12))
            assert await rows(a) == list(range(1, 12))
            assert (a.transactions, b.transactions) == (2, 2)
        finally:
            await b.dispose()


# A node that takes a project's row lock and then stops, its transaction left idle (run
# in a process of its own; its IDLE_TRANSACTION_TIMEOUT cut to 1 s to keep the test short).
_FROZEN_NODE = """
import asyncio, sys
from sqlalchemy import text
from tidings import db
from tidings.db import Database, create_engine

db.IDLE_TRANSACTION_TIMEOUT = 1.0

def freeze(tx):
    tx.execute(text("UPDATE heads SET seq = seq + 1 WHERE id = 'p'"))
    print("locked", flush=True)
    sys.stdin.readline()  # frozen (its event loop too) until told to wake

async def main():
    try:
        await Database(create_engine(sys.argv[1])).commit(freeze, key="p")
    except Exception as exc:
        print("unavailable" if db.unavailable(exc) else repr(exc), flush=True)
    else:
        print("committed", flush=True)

asyncio.run(main())
"""


@on_stacks("postgres-redis")
async def test_a_frozen_node_does_not_hold_its_projects_changes_for_long(
    database_url: str,
) -> None:
    """A node that stops in the middle of a transaction (frozen, or cut off on a
    connection that stays open) holds the rows it locked only until PostgreSQL ends its
    idle session (:data:`db.IDLE_TRANSACTION_TIMEOUT`): the other nodes' changes to the
    project then go on, and the frozen node's change is not made: once it wakes, it is
    told so as for a database out of reach (503)."""
    async with _table_t(database_url) as other:
        await _heads(other, "p")
        frozen = await asyncio.create_subprocess_exec(
            *(sys.executable, "-c", _FROZEN_NODE, database_url),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert frozen.stdin is not None and frozen.stdout is not None
            async with asyncio.timeout(60):
                assert await frozen.stdout.readline() == b"locked\n"
            # The frozen node stays so until told: without the timeout this waits for it.
            async with asyncio.timeout(60):
                assert await other.commit(lambda tx: _take_head(tx, "p"), key="p") == 1
            frozen.stdin.write(b"wake\n")
            async with asyncio.timeout(60):
                assert await frozen.stdout.readline() == b"unavailable\n"
        finally:
            frozen.kill()
            await frozen.communicate()


async def test_a_group_commit_refused_fails_each_of_its_works(database_url: str) -> None:
    """When the COMMIT of a batch is refused (a deferred constraint of one of its works),
    nothing of the batch is made: every caller gets the error and every work is undone."""
    db = Database(create_engine(database_url))
    undone: list[int] = []

    def work(p: int, slow: bool = False) -> Callable[[Tx], None]:
        def run(tx: Tx) -> None:
            if slow:
                _hold(tx)
            tx.if_rolled_back(lambda: undone.append(p))
            tx.execute(text("INSERT INTO c VALUES (:p)"), {"p": p})

        return run

    try:
        await _parent_and_child_checked_at_commit(db)
        first = asyncio.create_task(db.commit(work(1, slow=True), key="p"))
        await asyncio.sleep(0.1)
        batch = [asyncio.create_task(db.commit(work(p), key="p")) for p in (1, 99, 1)]
        assert await first is None
        for caller in batch:
            with pytest.raises(IntegrityError):
                await caller
        assert sorted(undone) == [1, 1, 99]
        async with db.read() as session:
            assert list(await session.scalars(text("SELECT p FROM c"))) == [1]
    finally:
        await db.dispose()


async def test_a_work_that_takes_its_batchs_transaction_with_it_fails_the_batch(
    database_url: str,
) -> None:
    """A failure that ends the whole transaction, not the work's statement alone (SQLite
    on a full disk): the works before it in the batch are undone with it, those after it
    do not run, and every caller is told."""
    undone: list[int] = []

    def work(n: int, lose: bool = False, slow: bool = False) -> Callable[[Tx], int]:
        def run(tx: Tx) -> int:
            if slow:
                _hold(tx)
            tx.if_rolled_back(lambda: undone.append(n))
            tx.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})
            if lose:
                tx.execute(text("ROLLBACK"))
                raise LookupError(n)
            return n

        return run

    async with _table_t(database_url) as db:
        first = asyncio.create_task(db.commit(work(0, slow=True), key="p"))
        await asyncio.sleep(0.1)
        batch = [asyncio.create_task(db.commit(work(n, lose=n == 2), key="p")) for n in (1, 2, 3)]
        assert await first == 0
        for caller in batch:
            with pytest.raises(DBAPIError):
                await caller
        assert undone == [1, 2]
        assert await rows(db) == [0]
        assert await db.commit(work(4), key="p") == 4
        assert await rows(db) == [0, 4]


async def test_a_callback_that_hangs_delays_its_own_changes_answer_only(
    database_url: str,
) -> None:
    """Callbacks start in commit order, but each change is answered once its own have
    run: a publish that hangs (a broker that does not answer) holds up its own change,
    not the changes of its batch or of the batches after it."""
    started: list[int] = []
    release = asyncio.Event()

    def work(n: int, slow: bool = False) -> Callable[[Tx], int]:
        async def callback() -> None:
            started.append(n)
            if n == 1:
                await release.wait()

        def run(tx: Tx) -> int:
            if slow:
                _hold(tx)
            tx.execute(_INSERT_T, {"n": n})
            after_commit(tx, callback)
            return n

        return run

    async with _table_t(database_url) as db:
        try:
            first = asyncio.create_task(db.commit(work(0, slow=True), key="p"))
            await asyncio.sleep(0.1)
            batch = [asyncio.create_task(db.commit(work(n), key="p")) for n in (1, 2, 3)]
            assert await first == 0
            async with asyncio.timeout(30):
                assert await asyncio.gather(batch[1], batch[2]) == [2, 3]
                assert await db.commit(work(4), key="p") == 4
            assert not batch[0].done()
            assert started == [0, 1, 2, 3, 4]
            release.set()
            assert await batch[0] == 1
        finally:
            release.set()


async def _heads(db: Database, *ids: str) -> None:
    """Table ``heads``: a row at 0 for each of ``ids``, the way ``projects.last_seq`` is."""
    async with db.write() as session:
        await session.execute(text("CREATE TABLE heads (id TEXT PRIMARY KEY, seq INT)"))
        for head in ids:
            await session.execute(text("INSERT INTO heads VALUES (:id, 0)"), {"id": head})


_TAKE_HEAD = text("UPDATE heads SET seq = seq + 1 WHERE id = :id RETURNING seq")


def _take_head(tx: Tx, head: str) -> int:
    """The next number of ``head``, taken as a change takes its project's next seq."""
    return int(tx.scalar(_TAKE_HEAD, {"id": head}))


@contextlib.asynccontextmanager
async def _table_t(url: str) -> AsyncIterator[Database]:
    """A :class:`Database` on ``url`` with an empty table ``t (n INTEGER NOT NULL)``,
    disposed of at the end."""
    db = Database(create_engine(url))
    try:
        async with db.write() as session:
            await session.execute(text("CREATE TABLE t (n INTEGER NOT NULL)"))
        yield db
    finally:
        await db.dispose()


async def _note(seen: list[int], n: int) -> None:
    seen.append(n)


_INSERT_T = text("INSERT INTO t VALUES (:n)")


def _hold(tx: Tx) -> None:
    """Keep the transaction going for 0.3 s (in the commit thread, or in PostgreSQL): the
    works that come meanwhile wait for it."""
    if tx.connection.dialect.name == "postgresql":
        tx.execute(text("SELECT pg_sleep(0.3)"))
    else:
        time.sleep(0.3)


async def _parent_and_child_checked_at_commit(db: Database) -> None:
    """Tables ``p`` (holding 1) and ``c``, whose rows must name a ``p``: checked at
    COMMIT, so that a transaction inserting ``c`` 99 is refused there."""
    async with db.write() as session:
        await session.execute(text("CREATE TABLE p (id INTEGER PRIMARY KEY)"))
        await session.execute(
            text("CREATE TABLE c (p INTEGER REFERENCES p (id) DEFERRABLE INITIALLY DEFERRED)")
        )
        await session.execute(text("INSERT INTO p VALUES (1)"))


def _set(event: asyncio.Event) -> Callable[[], Awaitable[None]]:
    async def callback() -> None:
        event.set()

    return callback


async def test_sqlite_commits_connection_is_set_up_as_the_async_engines_are(
    tmp_path: Path,
) -> None:
    """Foreign keys on, WAL, and the write lock taken at ``BEGIN``, before the first
    statement: another connection cannot begin a write meanwhile."""
    path = tmp_path / "setup.db"
    db = Database(create_engine(f"sqlite+aiosqlite:///{path}"))

    def look(tx: Tx) -> tuple[int, str, str | None]:
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            locked = None
        except sqlite3.OperationalError as exc:
            locked = str(exc)
        finally:
            other.close()
        return (
            tx.scalar(text("PRAGMA foreign_keys")),
            tx.scalar(text("PRAGMA journal_mode")),
            locked,
        )

    try:
        assert await db.commit(look) == (1, "wal", "database is locked")
    finally:
        await db.dispose()
