"""Runs one unit of database work (a function over a connection) in one transaction.

The per-message statements are written once, as plain functions over a SQLAlchemy
`Connection`, and run on either backend:

- PostgreSQL: on the async engine (asyncpg), through `AsyncConnection.run_sync`: one pool
  checkout and one transaction per unit of work.
- SQLite file: on a synchronous engine (the standard library's sqlite3) in one dedicated
  thread, so a whole unit of work costs one hop to that thread. Through aiosqlite every
  statement hops to its thread several times (cursor, execute, fetch, commit, the pool's
  reset), which made the database most of relaybot's own time per message. One thread also
  keeps what the single pooled connection gave before: this process's writers queue in
  order instead of fighting over the file lock.

The SQLite thread keeps one connection open and commits in groups: the units queued while
it was busy run one after another in one transaction, with one commit and one wake-up of the
event loop for all of them (a unit's caller still hears only once its work is committed). A
unit that fails makes the group roll back, and each of its units runs again on its own, so a
failure touches only its own unit. Under load this removes most of the per-unit costs the
event loop and this thread share one interpreter lock for (pool checkout, commit, wake-up);
one message at a time still commits each unit alone.

A caller that stops waiting (cancellation) does not stop a unit already running in the
thread: it finishes or rolls back on its own, as a transaction must.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from sqlalchemy import URL, Connection, Engine, Executable, TextClause, event, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.dialects import sqlite as sqlite_dialects
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from core.errors import ConfigError

T = TypeVar("T")
log = logging.getLogger("relaybot.db")
# deadlock_detected, serialization_failure: the statement or transaction was rolled back.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
RETRIES_ON_CONFLICT = 3
SWITCH_INTERVAL = 0.0005  # seconds; see Database.__init__
GROUP_LIMIT = 64  # units committed together at most (SQLite thread)
# How long a SQLite statement waits for the file's write lock (another program writing it)
# before it fails with "database is locked": the one value, set on every connection.
SQLITE_BUSY_SECONDS = 30.0
# SQLSTATE classes of a server that cannot serve now (connection exception, insufficient
# resources, operator intervention: shutting down, starting up), not of a bad statement.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")
# What sqlite3 says when the file cannot be written now (another writer, the disk).
_SQLITE_UNAVAILABLE = ("locked", "busy", "disk i/o error", "unable to open")
_ASYNCPG = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]
_POSITIONAL: dict[TextClause, tuple[str, tuple[str, ...]]] = {}


def _positional(statement: TextClause) -> tuple[str, tuple[str, ...]]:
    """`statement` as asyncpg takes it ($1, $2, ...), and the parameter names in that order."""
    found = _POSITIONAL.get(statement)
    if found is None:
        compiled = statement.compile(dialect=_ASYNCPG)
        found = _POSITIONAL[statement] = (compiled.string, tuple(compiled.positiontup or ()))
    return found


_SQLITE = sqlite_dialects.dialect()


class Statement:
    """A statement of the per-message units; on the SQLite thread's plain `sqlite3`
    connection it runs without SQLAlchemy's execution layer.

    That layer costs ~25 µs of CPU per statement, and the SQLite thread runs about ten per
    message beside the event loop (the record unit: 81 → 30 µs). SQLAlchemy still compiles
    the SQL (once) and processes each parameter as it would (datetimes stored in its
    format). Elsewhere (PostgreSQL, an in-memory SQLite on aiosqlite) `conn.execute` runs it.
    Either way the result answers `fetchone`, `fetchall` and `rowcount`. Parameters must name
    every column an insert fills (no Python-side defaults are applied on the fast path).
    """

    __slots__ = ("_compiled", "statement")

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        # (sql, [(name, bind processor, value when not given)]) per set of parameter names
        self._compiled: dict[frozenset[str], tuple[str, list[tuple[str, Any, Any]]] | None] = {}

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Run in `conn`'s transaction (the plain connection shares it)."""
        raw = conn.connection.driver_connection
        if isinstance(raw, sqlite3.Connection):
            plan = self._plan(frozenset(params))
            if plan is not None:
                return self._run(raw, plan, params)
        return conn.execute(self.statement, dict(params))

    @staticmethod
    def _run(
        raw: sqlite3.Connection,
        plan: tuple[str, list[tuple[str, Any, Any]]],
        params: Mapping[str, Any],
    ) -> sqlite3.Cursor:
        sql, binds = plan
        args = []
        for name, process, fixed in binds:
            value = params.get(name, fixed)
            args.append(process(value) if process is not None and value is not None else value)
        try:
            return raw.execute(sql, args)
        except sqlite3.Error as exc:  # as SQLAlchemy would raise it (IntegrityError, ...)
            # hide_parameters: as the engines (store.create_engine), the error names the
            # statement, not the values (message text) it was given.
            raise DBAPIError.instance(
                sql, args, exc, sqlite3.Error, hide_parameters=True, dialect=_SQLITE
            ) from exc

    def _plan(self, keys: frozenset[str]) -> tuple[str, list[tuple[str, Any, Any]]] | None:
        """The SQL and parameter processing for these parameter names (compiled once);
        None when SQLAlchemy computes column defaults (or onupdate values) in Python for
        them: then SQLAlchemy runs it."""
        if keys not in self._compiled:
            clause: Any = self.statement
            compiled: Any = clause.compile(dialect=_SQLITE, column_keys=sorted(keys))
            if compiled.insert_prefetch or compiled.update_prefetch:
                self._compiled[keys] = None
            else:
                binds = [
                    (
                        name,
                        compiled.binds[name].type.dialect_impl(_SQLITE).bind_processor(_SQLITE),
                        compiled.binds[name].effective_value,
                    )
                    for name in compiled.positiontup or ()
                ]
                self._compiled[keys] = (compiled.string, binds)
        return self._compiled[keys]


def sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    """WAL lets readers and the writer overlap; busy_timeout waits instead of failing."""
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # Set here, after connecting: it overrides sqlite3's own `timeout` (the connect one).
    cursor.execute(f"PRAGMA busy_timeout={round(SQLITE_BUSY_SECONDS * 1000)}")
    cursor.close()


def _conflict_pause(sqlstate: str | None, attempt: int) -> float | None:
    """After a PostgreSQL deadlock or serialization failure (the statement or transaction
    was rolled back whole) the step runs again after this pause; None: raise."""
    if sqlstate not in RETRYABLE_SQLSTATES or attempt >= RETRIES_ON_CONFLICT:
        return None
    log.warning("database conflict (%s), running the step again", sqlstate)
    return 0.01 * (attempt + 1)


IDLE_PING_SECONDS = 10.0  # a connection idle this long is checked before use


class _Hand:
    """Pooled PostgreSQL connections `Database.fetch` keeps between its statements.

    Taking a connection from SQLAlchemy's pool and giving it back cost ~95 µs of CPU per
    statement (a greenlet each way, the pool's events and reset), more than the statement
    itself took in asyncpg; every message runs three such statements. The hand takes at
    most `keep` connections from the pool (half of it: `run` always has the other half)
    and keeps them: a statement takes one that is free (the last one used first) or, when
    all are busy, waits for the next one given back, which passes to it directly. One
    that sat idle `IDLE_PING_SECONDS` is pinged before use, as the pool does
    (`core.db.store`), and dropped if the server closed it. With a pool of one, nothing
    is kept: each statement checks its connection out of the pool and back.
    """

    __slots__ = ("engine", "idle", "keep", "out", "timeout", "waiters")

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        pool = engine.sync_engine.pool
        size = getattr(pool, "size", None)
        self.keep = size() // 2 if callable(size) else 0
        # A statement waits for a connection as long as it would for one of the pool.
        timeout = getattr(pool, "timeout", None)
        self.timeout = float(timeout()) if callable(timeout) else 30.0
        self.idle: list[tuple[PoolProxiedConnection, float]] = []
        self.out = 0  # connections taken from the pool, in use or idle here
        self.waiters: deque[asyncio.Future[PoolProxiedConnection | None]] = deque()

    async def take(self) -> PoolProxiedConnection:
        while True:
            while self.idle:
                proxied, since = self.idle.pop()
                if is_closed(proxied):
                    await self.drop(proxied, usable=False)
                    continue
                if time.monotonic() - since < IDLE_PING_SECONDS:
                    return proxied
                try:
                    await proxied.driver_connection.fetchval("SELECT 1")  # type: ignore[union-attr]
                except BaseException as exc:
                    await self.drop(proxied, usable=False)
                    if not isinstance(exc, Exception):
                        raise  # cancelled: the connection went back to the pool all the same
                    continue
                return proxied
            if self.out < self.keep or not self.keep:
                self.out += 1
                try:
                    return await self.engine.raw_connection()
                except BaseException:
                    self.out -= 1
                    self._to_waiter(None)  # one fewer out: a waiter may take one
                    raise
            # Every connection kept is busy: the next one given back comes here.
            waiter: asyncio.Future[PoolProxiedConnection | None]
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                async with asyncio.timeout(self.timeout):
                    given = await waiter
            except BaseException as exc:
                await self._forget(waiter)
                if isinstance(exc, TimeoutError):
                    raise PoolTimeout(
                        f"no database connection free within {self.timeout:g} s "
                        f"({self.keep} kept for the per-message statements, all busy)"
                    ) from None
                raise
            if given is not None:
                return given
            # None: a connection went back to the pool; take one from it in its place.

    async def _forget(self, waiter: asyncio.Future[PoolProxiedConnection | None]) -> None:
        """A wait given up (cancelled, timed out): what was passed to it goes on."""
        if not waiter.done():
            waiter.cancel()
        elif not waiter.cancelled():
            passed = waiter.result()  # given just as the wait ended
            if passed is None:
                self._to_waiter(None)
            else:
                await self.put(passed)

    def _to_waiter(self, given: PoolProxiedConnection | None) -> bool:
        """Hand `given` (None: "take one from the pool") to the longest waiting statement."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():  # (a wait given up is skipped)
                waiter.set_result(given)
                return True
        return False

    async def put(self, proxied: PoolProxiedConnection) -> None:
        """A connection taken here, done with and usable: to a waiting statement, or kept."""
        if self._to_waiter(proxied):
            return
        if self.keep:
            self.idle.append((proxied, time.monotonic()))
        else:
            await self.drop(proxied, usable=True)

    async def drop(self, proxied: PoolProxiedConnection, *, usable: bool) -> None:
        """Give a connection taken here back to the pool (invalidated unless usable)."""
        self.out -= 1
        try:
            await greenlet_spawn(_give_back, proxied, usable)
        finally:
            self._to_waiter(None)  # one fewer out: a waiter may take one

    async def release(self) -> None:
        """Give every connection in hand back to the pool (before the engine is disposed).
        One still in use goes back when its statement ends."""
        idle, self.idle, self.keep = self.idle, [], 0
        for proxied, _ in idle:
            await self.drop(proxied, usable=True)


def is_closed(connection: Any) -> bool:
    """Whether asyncpg already saw this connection's end (the server went away; a pooled
    connection, an adapted one, or the driver's own). Other drivers: False."""
    driver = getattr(connection, "driver_connection", connection)
    closed = getattr(driver, "is_closed", None)
    return bool(closed()) if callable(closed) else False


def _give_back(proxied: PoolProxiedConnection, usable: bool) -> None:
    """Return a raw pooled connection (inside SQLAlchemy's greenlet: closing may await)."""
    if not usable:
        proxied.invalidate()
    proxied.close()


class _Unit:
    """One unit of work queued for the SQLite thread, and where its outcome goes."""

    __slots__ = ("args", "error", "fn", "future", "loop", "result")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
    ) -> None:
        self.fn = fn
        self.args = args
        self.loop = loop
        self.future = future
        self.result: Any = None
        self.error: BaseException | None = None


def _settle(units: list[_Unit]) -> None:
    """On the event loop: hand each waiting caller its unit's outcome."""
    for unit in units:
        if unit.future.cancelled():
            continue
        if unit.error is not None:
            unit.future.set_exception(unit.error)
        else:
            unit.future.set_result(unit.result)


class _SqliteThread:
    """One thread, one connection: runs queued units, committing those queued together once."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._queue: queue.SimpleQueue[_Unit | None] = queue.SimpleQueue()
        self._conn: Connection | None = None
        self._thread = threading.Thread(target=self._serve, name="relaybot-sqlite", daemon=True)
        self._thread.start()

    @property
    def engine(self) -> Engine:
        return self._engine

    def submit(self, fn: Callable[..., T], args: tuple[Any, ...]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Unit(fn, args, loop, future))
        return future

    def stop(self) -> None:
        """Finish what is queued, close the connection and end the thread (blocking)."""
        self._queue.put(None)
        self._thread.join()

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            group = [first]
            while len(group) < GROUP_LIMIT:
                try:
                    unit = self._queue.get_nowait()
                except queue.Empty:
                    break
                if unit is None:
                    stopping = True
                    break
                group.append(unit)
            if len(group) == 1 or not self._run_together(group):
                for unit in group:
                    self._run_alone(unit)
            by_loop: dict[asyncio.AbstractEventLoop, list[_Unit]] = {}
            for unit in group:
                by_loop.setdefault(unit.loop, []).append(unit)
            for loop, units in by_loop.items():
                # A closed loop (RuntimeError) has nobody waiting any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, units)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._engine.dispose()

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.invalidated or self._conn.closed:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._engine.connect()
        return self._conn

    def _run_alone(self, unit: _Unit) -> None:
        try:
            conn = self._connection()
            with conn.begin():
                unit.result = unit.fn(conn, *unit.args)
        except BaseException as exc:  # handed to the caller
            unit.error = exc

    def _run_together(self, group: list[_Unit]) -> bool:
        """Run `group` in one transaction; False (nothing kept) if any unit or the commit fails."""
        try:
            conn = self._connection()
            with conn.begin():
                for unit in group:
                    unit.result = unit.fn(conn, *unit.args)
        except Exception:
            # Rolled back whole: the units run again one by one, each failing alone.
            for unit in group:
                unit.result = None
            return False
        return True


class DatabaseUnreachable(ConfigError):
    """RELAYBOT_DATABASE_URL names a database relaybot cannot connect to; `str(err)` says
    where (host:port or file, never the password) and what to check."""


def database_place(url: URL) -> str:
    """Where `url` points, for the operator: "the database at HOST:PORT" or the file."""
    if url.get_backend_name() == "sqlite":
        return f"the SQLite database {url.database or ':memory:'}"
    return f"the database at {url.host or 'localhost'}:{url.port or 5432}"


def unreachable(url: URL, exc: BaseException) -> DatabaseUnreachable:
    """The one line an operator sees when connecting to `url` failed with `exc`."""
    chain: list[BaseException] = []
    error: BaseException | None = exc
    while error is not None and error not in chain:
        chain.append(error)
        error = getattr(error, "orig", None) or error.__cause__
    cause = chain[-1]  # the driver's own error, under SQLAlchemy's wrappers
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    detail = f"{type(cause).__name__}: {first}" if first else type(cause).__name__
    network = any(isinstance(e, OSError | TimeoutError) for e in chain)
    if url.get_backend_name() == "sqlite":
        message = (
            f"cannot open {database_place(url)} ({detail}); check RELAYBOT_DATABASE_URL "
            "and that its directory exists and is writable"
        )
    else:
        verb = "cannot reach" if network else "cannot connect to"
        message = (
            f"{verb} {database_place(url)} ({detail}); check RELAYBOT_DATABASE_URL (the host, "
            "port, user, password and database) and that the server runs"
        )
    if url.password:
        message = message.replace(str(url.password), "***")
    return DatabaseUnreachable(message[:500])


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot do the work now but may later (the server
    down, restarting or unreachable, a connection lost, the pool exhausted, a SQLite file
    locked by another program past SQLITE_BUSY_SECONDS), not that the work itself is wrong:
    the same work may then be tried again."""
    seen: list[BaseException] = []
    error: BaseException | None = exc
    while error is not None and error not in seen:
        seen.append(error)
        if isinstance(error, OSError | TimeoutError | PoolTimeout):
            return True
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, sqlite3.OperationalError):
            return any(word in str(error).lower() for word in _SQLITE_UNAVAILABLE)
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES:
            return True
        said = str(error).lower()
        if "connection" in said and "closed" in said:
            return True  # asyncpg's InterfaceError: the connection was closed under it
        error = getattr(error, "orig", None) or error.__cause__
    return False


async def answered_within(
    work: Coroutine[Any, Any, T], seconds: float, abandoned: set[asyncio.Task[Any]]
) -> tuple[bool, T | None]:
    """Run a database probe for at most `seconds`: (True, its result), or (False,
    None) when it did not answer in time. A probe given up on is cancelled but not waited
    for (closing the connection it waits on may take the driver a while longer: SQLAlchemy
    gives asyncpg 2 s to close gracefully); `abandoned` keeps it referenced until it ends."""
    task = asyncio.create_task(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    finally:
        if not task.done():
            task.cancel()
            abandoned.add(task)
            task.add_done_callback(abandoned.discard)
    return (True, task.result()) if done else (False, None)


async def check_reachable(engine: AsyncEngine) -> None:
    """Connect once; raise DatabaseUnreachable (one line naming RELAYBOT_DATABASE_URL and the
    server) when that fails, rather than the driver's error on first use."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise unreachable(engine.url, exc) from exc


class Database:
    """`await db.run(fn, *args)` runs `fn(connection, *args)` in one transaction."""

    def __init__(self, engine: AsyncEngine, turns_engine: AsyncEngine | None = None) -> None:
        self.engine = engine
        # PostgreSQL: a pool whose commits do not wait for the disk, for the steps of a
        # message after its event was recorded (see `run`).
        self.turns_engine = turns_engine or engine
        self.dialect = engine.dialect.name
        self._thread: _SqliteThread | None = None
        self._hands: dict[AsyncEngine, _Hand] = {}
        path = engine.url.database
        if self.dialect == "sqlite" and path and path != ":memory:" and "mode=memory" not in path:
            # A file: a second connection sees the same database. (An in-memory database
            # is private to its connection, so it stays on the async engine.)
            sync = create_sync_engine(
                engine.url.set(drivername="sqlite"),
                pool_size=1,
                max_overflow=0,
                connect_args={"timeout": SQLITE_BUSY_SECONDS, "check_same_thread": False},
                hide_parameters=True,
            )
            event.listen(sync, "connect", sqlite_pragmas)
            self._thread = _SqliteThread(sync)
            # The thread needs the GIL for its (Python) half of each unit. While the event
            # loop is busy it gets it only when the loop's thread is made to let go, every
            # switch interval: 5 ms by default, which made a 40 µs UPDATE take 3.7 ms (p50)
            # beside a busy Telegram adapter. Half a millisecond keeps such waits short.
            if sys.getswitchinterval() > SWITCH_INTERVAL:
                sys.setswitchinterval(SWITCH_INTERVAL)

    @property
    def thread_engine(self) -> Engine | None:
        """The SQLite thread's (synchronous) engine; None on PostgreSQL or in memory."""
        return None if self._thread is None else self._thread.engine

    @property
    def shared(self) -> bool:
        """True when other processes may use the same database at once (PostgreSQL)."""
        return self.dialect != "sqlite"

    async def run(
        self, fn: Callable[..., T], *args: Any, autocommit: bool = False, durable: bool = True
    ) -> T:
        """Run `fn(connection, *args)` in a transaction; commit when it returns.

        `autocommit`: `fn` runs one statement (or only reads), so on PostgreSQL it needs no
        BEGIN and COMMIT round trips of its own.
        `durable=False`: the commit may return before it is on disk (PostgreSQL's
        synchronous_commit off). Only for work a server crash may undo without harm: the
        steps after an event was recorded, which a lost commit leaves open, so the event is
        answered again (the at-least-once window). Recording the event stays durable: the
        platform is acknowledged after it.
        """
        if self._thread is not None:
            return await self._thread.submit(fn, args)
        attempt = 0
        while True:
            try:
                return await self._run_async(fn, args, autocommit, durable)
            except DBAPIError as exc:
                # A deadlock victim or serialization failure was rolled back whole (a unit
                # run in autocommit is one statement, or only reads): running it again is
                # safe.
                pause = _conflict_pause(getattr(exc.orig, "sqlstate", None), attempt)
                if pause is None:
                    raise
                attempt += 1
                await asyncio.sleep(pause)

    async def fetch(
        self, statement: TextClause, params: dict[str, Any], *, durable: bool = True
    ) -> list[Any]:
        """PostgreSQL: run one statement (no transaction of its own) on the driver itself.

        For the few statements every message runs (a chat's turn, storing a turn): a pooled
        connection, as `run` takes one, but the statement goes straight to asyncpg. SQLAlchemy's
        execution layer around it (a greenlet per unit, the isolation level set and reset,
        parameter processing, result objects) was a fifth of relaybot's CPU per message.
        """
        assert self.shared, "SQLite runs its units in its thread (`run`)"
        sql, names = _positional(statement)
        args = [params[name] for name in names]
        engine = self.engine if durable else self.turns_engine
        hand = self._hands.get(engine)
        if hand is None:
            hand = self._hands[engine] = _Hand(engine)
        attempt = 0
        while True:
            proxied = await hand.take()
            try:
                driver: Any = proxied.driver_connection
                rows: list[Any] = await driver.fetch(sql, *args)
            except BaseException as exc:
                sqlstate = getattr(exc, "sqlstate", None)
                # A statement that failed in the server leaves the connection usable; any
                # other failure (a dropped connection, a cancelled wait) does not.
                if sqlstate is not None and not is_closed(proxied):
                    await hand.put(proxied)
                else:
                    await hand.drop(proxied, usable=sqlstate is not None)
                pause = _conflict_pause(sqlstate, attempt)
                if pause is None:
                    raise
                attempt += 1
                await asyncio.sleep(pause)
                continue
            await hand.put(proxied)
            return rows

    async def _run_async(
        self, fn: Callable[..., T], args: tuple[Any, ...], autocommit: bool, durable: bool
    ) -> T:
        engine = self.engine if durable else self.turns_engine
        if autocommit and self.shared:
            async with engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                return await conn.run_sync(fn, *args)
        async with engine.begin() as conn:
            return await conn.run_sync(fn, *args)

    async def release(self) -> None:
        """Give back to their pools the connections `fetch` keeps in hand (at shutdown)."""
        for hand in self._hands.values():
            await hand.release()

    async def dispose(self) -> None:
        """Give back the connections `fetch` holds; finish the SQLite thread's queued work
        and close its connection."""
        await self.release()
        if self._thread is None:
            return
        thread, self._thread = self._thread, None
        await asyncio.to_thread(thread.stop)


__all__ = ["SQLITE_BUSY_SECONDS", "Connection", "Database", "sqlite_pragmas", "unavailable"]
