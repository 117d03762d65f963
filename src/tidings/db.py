"""Database engine, sessions and schema migrations (SQLite or PostgreSQL, async)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import BindParameter, Connection, Engine, Executable, Result, bindparam, event, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection, Dialect
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState

logger = logging.getLogger(__name__)


def listed(name: str) -> BindParameter[Any]:
    """``column.in_(listed("ids"))``, in a statement built once (at import) and run with
    ``{"ids": [...]}``.

    A ``column.in_([...])`` built for each call leaves a reference cycle behind (the
    list's parameter object is in its own ``_cloned_set``): garbage that only the
    collector frees, and with the young generation's raised threshold
    (``TIDINGS_GC_THRESHOLD``) a held node's periodic queries piled it up for hours."""
    return bindparam(name, expanding=True)


MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant will do: it only has to be the same on every node migrating one database.
_MIGRATION_LOCK_KEY = 0x7469_6469_6E67


# asyncpg's errors for a server that is unreachable, shutting down or starting up; the
# driver is optional (SQLite needs none), so they are matched by name.
_UNAVAILABLE_NAMES = frozenset(
    {
        "PostgresConnectionError",
        "ConnectionDoesNotExistError",
        "CannotConnectNowError",
        "AdminShutdownError",
        "CrashShutdownError",
        "ConnectionFailureError",
        "TooManyConnectionsError",
    }
)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it wraps (a driver's error) or was raised from, and so on."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = current.orig if isinstance(current, DBAPIError) else None
        current = orig or current.__cause__ or current.__context__


def _named(exc: BaseException, names: frozenset[str]) -> bool:
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached (refused, lost, shutting
    down, starting up, or too busy for the pool to hand out a connection in time) rather
    than that a statement failed. A transaction cut off this way rolled back, unless the
    connection was lost during its COMMIT itself."""
    for current in _causes(exc):
        if isinstance(current, ConnectionError | TimeoutError | PoolTimeout):
            return True
        if isinstance(current, DBAPIError) and (
            current.connection_invalidated or isinstance(current, OperationalError | InterfaceError)
        ):
            return True
        if _named(current, _UNAVAILABLE_NAMES):
            return True
    return False


_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# PostgreSQL's "could not extend file …: No space left on device" (SQLSTATE 53100).
_FULL_NAMES = frozenset({"DiskFullError"})


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says a disk (the files', SQLite's or PostgreSQL's) has no room
    left for what was being written. Nothing was changed: a file could not be written, a
    statement could not extend a table (PostgreSQL), or the COMMIT could not be written
    and was refused (SQLite)."""
    for current in _causes(exc):
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        if getattr(current, "sqlite_errorname", None) == "SQLITE_FULL":
            return True
        if _named(current, _FULL_NAMES):
            return True
    return False


# asyncpg's error for a connection whose protocol is stuck in the middle of an operation
# ("cannot switch to state 12; another operation (2) is in progress").
_WEDGED_NAMES = frozenset({"InternalClientError"})


def _discard_wedged(context: ExceptionContext) -> None:
    """A ``handle_error`` listener: a connection asyncpg says is stuck in the middle of an
    operation is discarded, not handed back to the pool. SQLAlchemy discards a
    connection on a driver error only if its socket is already closed, so a stuck one
    went back to the pool and failed whoever took it next (defect 9 of
    docs/reliability.md: replays closed with 1012, a few requests answered 500). The
    rest of the pool is kept: the other connections are fine."""
    if any(_named(cause, _WEDGED_NAMES) for cause in _causes(context.original_exception)):
        context.is_disconnect = True
        context.invalidate_pool_on_disconnect = False


# Seconds a node's PostgreSQL transaction may sit idle, waiting for the node's next
# statement, before PostgreSQL ends the session. tidings never waits inside a transaction
# for anything but the database, so only a node that stopped (frozen, its event loop
# stuck, or cut off from the database on a connection that stays open) is idle that
# long; and while its transaction lives, the project rows it locked stop every other
# node's changes to those projects. Ended, it releases them; its own change fails.
IDLE_TRANSACTION_TIMEOUT = 10.0


def create_engine(url: str, timeout: float | None = None) -> AsyncEngine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a generous busy timeout.

    ``timeout``: seconds PostgreSQL has to answer each statement, and to accept a new
    connection, before the statement fails as :func:`unavailable` (a database gone
    silent: a cut network, a failover whose old address drops packets); None waits for
    as long as the connection lasts."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # The pool's rollback on return is ours (_sqlite_on_reset): only when needed.
        engine = create_async_engine(url, connect_args={"timeout": 30}, pool_reset_on_return=None)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        event.listen(engine.sync_engine, "reset", _sqlite_on_reset)
        return engine
    settings = {"idle_in_transaction_session_timeout": str(round(IDLE_TRANSACTION_TIMEOUT * 1000))}
    connect_args: dict[str, Any] = {"server_settings": settings}
    if timeout is not None:
        connect_args |= {"command_timeout": timeout, "timeout": timeout}
    engine = create_async_engine(url, pool_size=10, max_overflow=20, connect_args=connect_args)
    event.listen(engine.sync_engine, "handle_error", _discard_wedged)
    event.listen(engine.sync_engine, "connect", _note_idle)
    event.listen(engine.sync_engine, "checkin", _note_idle)
    event.listen(engine.sync_engine, "checkout", _ping_if_idle(engine.dialect))
    return engine


# A pooled PostgreSQL connection is tried (a round trip) before it is handed out only if
# it has been idle this long: one that was in use a moment ago is almost surely fine, and
# a write of five round trips spent a sixth on the pool's check before each
# (``pool_pre_ping``). One that did break meanwhile (the server restarted within the
# second) fails the statement it is given, which answers 503 (docs/guarantees.md), and
# SQLAlchemy then replaces every connection of the pool opened before.
PING_WHEN_IDLE = 1.0
_IDLE_SINCE = "tidings_idle_since"


def _note_idle(_dbapi_connection: object, record: ConnectionPoolEntry) -> None:
    """A ``connect`` and ``checkin`` listener: when the connection was last in use."""
    record.info[_IDLE_SINCE] = time.monotonic()


def _ping_if_idle(
    dialect: Dialect,
) -> Callable[[DBAPIConnection, ConnectionPoolEntry, object], None]:
    def checkout(
        dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry, _proxy: object
    ) -> None:
        """A ``checkout`` listener: a connection idle for :data:`PING_WHEN_IDLE` seconds or
        more is pinged, and replaced if that fails (``DisconnectionError``: the pool
        discards it and opens another)."""
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is not None and time.monotonic() - idle_since < PING_WHEN_IDLE:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"a pooled connection failed its ping: {exc!r}") from exc

    return checkout


def _sqlite_on_connect(dbapi_connection: object, _record: object) -> None:
    # Let SQLAlchemy emit BEGIN itself (see _sqlite_on_begin) so every transaction
    # takes the write lock up front: no upgrade deadlocks between concurrent writers.
    dbapi_connection.isolation_level = None  # type: ignore[attr-defined]
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    options = conn.get_execution_options()
    if options.get(_WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif not options.get(_READ_OPTION):
        conn.exec_driver_sql("BEGIN")
    # Database.read() begins nothing: each of its statements reads a snapshot of its own,
    # as on PostgreSQL (READ COMMITTED), and a BEGIN would cost every read three more
    # trips to aiosqlite's thread.


def _sqlite_on_reset(
    dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry, state: PoolResetState
) -> None:
    """A connection going back to the pool is rolled back only if a transaction is still
    open on it (a block that failed before its commit): after the commit of a write or a
    snapshot there is nothing to roll back, and asking aiosqlite would cost each one more
    trip to its thread. (A read ends its own transaction as its session closes.) A
    connection being discarded needs nothing."""
    if state.terminate_only or not state.asyncio_safe:
        return
    if record.driver_connection.in_transaction:  # type: ignore[union-attr]
        dbapi_connection.rollback()


_WRITE_OPTION = "tidings_write"
_READ_OPTION = "tidings_read"
AFTER_COMMIT = "tidings_after_commit"

T = TypeVar("T")
Callback = Callable[[], Awaitable[Any]]


class Tx:
    """The write transaction a function given to :meth:`Database.commit` runs in (its own
    part of it: other works of the same batch run before and after it on ``connection``,
    so it neither commits nor rolls back itself): plain (not async) statements on
    ``connection``, :func:`after_commit` for what must happen once it is durable, and
    :meth:`if_rolled_back` for what must be undone if it is not."""

    __slots__ = ("_undo", "connection", "info")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.info: dict[str, Any] = {AFTER_COMMIT: []}
        self._undo: list[Callable[[], object]] = []

    def execute(self, statement: Executable, params: dict[str, Any] | None = None) -> Result[Any]:
        return self.connection.execute(statement, params)

    def scalar(self, statement: Executable, params: dict[str, Any] | None = None) -> Any:
        return self.connection.scalar(statement, params)

    def scalars(self, statement: Executable, params: dict[str, Any] | None = None) -> list[Any]:
        return list(self.connection.scalars(statement, params).all())

    def if_rolled_back(self, undo: Callable[[], object]) -> None:
        """Call ``undo()`` (plain, in the transaction's thread) if the transaction is known
        not to have committed: the work raised, or its COMMIT failed with an answer (a
        constraint, a full disk). Not when the connection was lost during the COMMIT
        itself: the change may have been made, and what it needs must stay (a file its
        row names)."""
        self._undo.append(undo)

    def _rolled_back(self) -> None:
        for undo in self._undo:
            try:
                undo()
            except Exception:
                logger.exception("undoing a rolled-back transaction's work failed")


@dataclass(slots=True)
class _Outcome:
    """What one work of a :meth:`Database.commit` batch came to: its result and the
    callbacks to run now that it is committed, or the error its caller gets."""

    result: Any = None
    callbacks: list[Callback] = field(default_factory=list)
    error: BaseException | None = None


# Each work of a batch runs in a savepoint of its own, so that one that fails is undone
# alone. Never released: the savepoints of a batch end with its transaction.
_SAVEPOINT = "SAVEPOINT tidings_work"
_UNDO_WORK = "ROLLBACK TO SAVEPOINT tidings_work"


def _transact(connection: Connection, works: Sequence[Callable[[Tx], Any]]) -> list[_Outcome]:
    """Run ``works`` in order in one transaction and commit it: the outcome of each. With
    more than one, each runs in a savepoint: one that raises is rolled back to it (and its
    :meth:`Tx.if_rolled_back` called) and the others go on. If the transaction itself
    fails (a statement outside the works, or the COMMIT), every work that had not failed
    gets that error."""
    outcomes: list[_Outcome] = []  # one for each work that has run
    live: list[Tx] = []  # the transactions of the works that have not failed
    savepoints = len(works) > 1
    transaction = connection.begin()
    committing = False
    try:
        for work in works:
            tx = Tx(connection)
            live.append(tx)
            if savepoints:
                connection.exec_driver_sql(_SAVEPOINT)
            try:
                result = work(tx)
            except Exception as exc:
                if not savepoints:
                    raise
                # If the transaction went with the work's failure (SQLite rolls it all
                # back on a full disk), this fails too: then so does the whole batch.
                connection.exec_driver_sql(_UNDO_WORK)
                live.pop()
                tx._rolled_back()
                outcomes.append(_Outcome(error=exc))
                continue
            outcomes.append(_Outcome(result, tx.info[AFTER_COMMIT]))
        committing = True
        transaction.commit()
    except BaseException as exc:
        # After a failed statement, or a refused COMMIT, which can leave the transaction
        # open (SQLite, on a deferred constraint): the connection goes back to the pool
        # without it. On a lost connection this fails too, and the database has rolled
        # back by itself; the error to report is the first.
        with contextlib.suppress(Exception):
            transaction.rollback()
        # A connection lost during the COMMIT itself leaves the outcome unknown: the
        # changes may have been made, so what they need stays.
        if not committing or disk_full(exc) or not unavailable(exc):
            for tx in live:
                tx._rolled_back()
        if not isinstance(exc, Exception):
            raise
        failed = _Outcome(error=exc)
        ran = [outcome if outcome.error is not None else failed for outcome in outcomes]
        return ran + [failed] * (len(works) - len(ran))
    return outcomes


class Database:
    """Short, explicit transactions: ``async with db.read()`` / ``async with db.write()``,
    and ``async with db.snapshot()`` for several reads that must agree with each other
    (in ``read()`` each statement sees what was committed when it began, on both
    databases).

    A write transaction commits when its block ends without an exception, and only then
    runs the callbacks queued with :func:`after_commit` (this is how events reach the
    broker: recorded inside the transaction, published once it is durable). Every callback
    runs even if an earlier one fails, and failures are logged, not raised: the change is
    committed, so the caller must not report it as failed or undo what it placed for it.
    On SQLite the writers of this process queue in order for the one write lock (an
    asyncio lock, held from ``BEGIN IMMEDIATE`` to the commit), so none of them sleeps in
    SQLite's busy handler; writers of other processes (the CLI, other workers) still meet
    at ``BEGIN IMMEDIATE``. A write must not open another write inside it: it would wait
    for itself.

    The frequent writes use :meth:`commit` instead: the whole transaction is a plain
    function, which on SQLite runs in one trip to a thread of the node's own (aiosqlite
    goes to its thread and back for every cursor, execute, fetch, begin and commit: three
    or four trips a statement, each of which costs more than the statement), and the
    works that wait for their turn meanwhile go together in the next transaction.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._write_engine = engine.execution_options(**{_WRITE_OPTION: True})
        self._read = async_sessionmaker(
            engine.execution_options(**{_READ_OPTION: True}), expire_on_commit=False
        )
        self._write = async_sessionmaker(self._write_engine, expire_on_commit=False)
        # SQLite: a read transaction in WAL mode already sees one snapshot of the database
        # from its first read to its end (BEGIN is explicit, see _sqlite_on_begin).
        # PostgreSQL's default, READ COMMITTED, gives each statement its own snapshot;
        # REPEATABLE READ gives the whole transaction the snapshot of its first statement.
        snapshot_engine = (
            engine.execution_options(isolation_level="REPEATABLE READ")
            if engine.dialect.name == "postgresql"
            else engine
        )
        self._snapshot = async_sessionmaker(snapshot_engine, expire_on_commit=False)
        # PostgreSQL locks rows, not the database: its writers need no queue of ours.
        self._writers = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        # commit()'s works waiting for their turn, by queue (see commit()), and the tasks
        # that commit them and run their callbacks.
        self._waiting: dict[str | None, list[_Change]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self.transactions = 0  # commit()'s transactions (for tests)
        # SQLite in a file: commit()'s transactions run in this thread, on a connection of
        # its own (the sqlite3 module's, through SQLAlchemy), in the writers' queue above.
        self._sync_engine: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        database = engine.url.database
        if engine.dialect.name == "sqlite" and database and database != ":memory:":
            self._sync_engine = _sqlite_sync_engine(engine.url.set(drivername="sqlite"))
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="tidings-sqlite-writer")

    def _turn(self) -> AbstractAsyncContextManager[object]:
        return self._writers if self._writers is not None else nullcontext()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._read() as session:
            yield session

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncSession]:
        """A read-only transaction in which every statement sees the same committed state:
        the state as of its first statement, whatever commits meanwhile."""
        async with self._snapshot() as session, session.begin():
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        async with self._turn(), self._write() as session:
            session.info[AFTER_COMMIT] = []
            async with session.begin():
                yield session
            callbacks: list[Callback] = session.info.pop(AFTER_COMMIT)
        await _run_callbacks(callbacks)

    async def commit(self, work: Callable[[Tx], T], key: str | None = None) -> T:
        """Run ``work(tx)`` in a write transaction and return what it returns; an exception
        it raises rolls back what it did and is raised here. ``work`` is a plain function:
        it runs statements on ``tx`` and does nothing else that waits or touches the
        node's state (it runs in another thread on SQLite); what must follow the commit
        goes to :func:`after_commit`, as with :meth:`write`.

        Works that wait for the writer together go in one transaction (a group commit,
        at most :data:`MAX_BATCH`), each in a savepoint of its own, so that one that fails
        is undone alone: one trip to the writer's thread (SQLite), one COMMIT and one WAL
        flush for them all. On PostgreSQL only works with the same ``key`` go together
        (the project they change: they take the same row lock anyway, so a batch never
        holds two projects' locks that another node's batch could take in the other
        order); on SQLite the write lock is the database's, and every work goes together.
        A work alone runs in a transaction of its own, without a savepoint.

        The transaction, then its callbacks, run to the end even if the caller is
        cancelled meanwhile: a change that commits is published. The callbacks of the
        works start in the order of their commits (each work's, one after another)."""
        queue = key if self._writers is None else None
        change: _Change = (work, asyncio.get_running_loop().create_future())
        change[1].add_done_callback(_retrieved)
        waiting = self._waiting.get(queue)
        if waiting is None:
            self._waiting[queue] = waiting = []
            _keep(self._tasks, self._drain(queue, waiting))
        waiting.append(change)
        result: T = await asyncio.shield(change[1])
        return result

    async def _drain(self, queue: str | None, waiting: list[_Change]) -> None:
        """Commit the works of ``queue`` as they come, in batches of what has waited: the
        first at once, and those that come meanwhile together in the next."""
        batch: list[_Change] = []
        try:
            while waiting:
                batch = waiting[:MAX_BATCH]
                del waiting[:MAX_BATCH]
                self.transactions += 1
                try:
                    async with self._turn():
                        outcomes = await self._transaction([work for work, _ in batch])
                except Exception as exc:
                    outcomes = [_Outcome(error=exc)] * len(batch)
                # Each work's callbacks start in commit order, and its caller is answered
                # once they have run: a publish that hangs (the broker's) delays its own
                # change's answer, no other's. The next batch goes on meanwhile.
                for (_, answer), outcome in zip(batch, outcomes, strict=True):
                    if outcome.error is not None:
                        answer.set_exception(outcome.error)
                    else:
                        _keep(self._tasks, _call_back(answer, outcome))
                batch = []
        finally:
            # Only if this task was cancelled (the node stopping) are works left here.
            del self._waiting[queue]
            for _, answer in batch + waiting:
                answer.set_exception(RuntimeError("the database was closed"))

    async def _transaction(self, works: list[Callable[[Tx], Any]]) -> list[_Outcome]:
        if self._thread is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._thread, self._in_thread, works)
        async with self._write_engine.connect() as connection:
            return await connection.run_sync(_transact, works)

    def _in_thread(self, works: list[Callable[[Tx], Any]]) -> list[_Outcome]:
        assert self._sync_engine is not None
        with self._sync_engine.connect() as connection:
            return _transact(connection, works)

    async def dispose(self) -> None:
        await self.engine.dispose()
        thread, self._thread = self._thread, None
        if thread is not None and self._sync_engine is not None:
            await asyncio.get_running_loop().run_in_executor(thread, self._sync_engine.dispose)
            thread.shutdown(wait=False)


# A batch of Database.commit(), at most.
MAX_BATCH = 64

_Change = tuple[Callable[[Tx], Any], "asyncio.Future[Any]"]  # a work, and its caller's answer


def _retrieved(job: asyncio.Future[Any]) -> None:
    """A commit whose caller was cancelled: its outcome is nobody's to raise."""
    if not job.cancelled():
        job.exception()


def _keep(tasks: set[asyncio.Future[Any]], job: Awaitable[Any]) -> None:
    """Run ``job`` as a task kept in ``tasks`` until it is done (the loop holds only weak
    references to its tasks)."""
    task = asyncio.ensure_future(job)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _call_back(answer: asyncio.Future[Any], outcome: _Outcome) -> None:
    """Run a committed work's callbacks, then answer its caller."""
    await _run_callbacks(outcome.callbacks)
    answer.set_result(outcome.result)


async def _run_callbacks(callbacks: list[Callback]) -> None:
    for callback in callbacks:
        try:
            await callback()
        except Exception:
            # E.g. the broker is down: the event is in the log, and clients catch up
            # from it by seq; the committed change itself stands.
            logger.exception("after-commit callback failed")


def _sqlite_sync_engine(url: URL) -> Engine:
    """The plain sqlite3 engine of :meth:`Database.commit`'s thread: its one connection is
    opened, used and closed there, and set up as the async engine's are."""
    engine = create_sync_engine(
        url,
        connect_args={"timeout": 30, "check_same_thread": False},
        pool_size=1,
        max_overflow=0,
    ).execution_options(**{_WRITE_OPTION: True})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def after_commit(session: AsyncSession | Tx, callback: Callback) -> None:
    """Run ``callback`` once the write transaction of ``session`` (of :meth:`Database.write`
    or :meth:`Database.commit`) has committed."""
    callbacks = session.info.get(AFTER_COMMIT)
    if callbacks is None:
        raise RuntimeError("after_commit() needs Database.write()'s session or commit()'s tx")
    callbacks.append(callback)


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision; safe when several nodes start at once."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        await conn.run_sync(_upgrade)


def _upgrade(connection: Connection) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")
