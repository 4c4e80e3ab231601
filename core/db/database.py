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

A caller that stops waiting (cancellation) does not stop a unit already running in the
thread: it finishes or rolls back on its own, as a transaction must.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

T = TypeVar("T")
log = logging.getLogger("relaybot.db")
# deadlock_detected, serialization_failure: the statement or transaction was rolled back.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
RETRIES_ON_CONFLICT = 3
SWITCH_INTERVAL = 0.0005  # seconds; see Database.__init__


def sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    """WAL lets readers and the writer overlap; busy_timeout waits instead of failing."""
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    """`await db.run(fn, *args)` runs `fn(connection, *args)` in one transaction."""

    def __init__(self, engine: AsyncEngine, turns_engine: AsyncEngine | None = None) -> None:
        self.engine = engine
        # PostgreSQL: a pool whose commits do not wait for the disk, for the steps of a
        # message after its event was recorded (see `run`).
        self.turns_engine = turns_engine or engine
        self.dialect = engine.dialect.name
        self._sync: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        path = engine.url.database
        if self.dialect == "sqlite" and path and path != ":memory:" and "mode=memory" not in path:
            # A file: a second connection sees the same database. (An in-memory database
            # is private to its connection, so it stays on the async engine.)
            self._sync = create_sync_engine(
                engine.url.set(drivername="sqlite"),
                pool_size=1,
                max_overflow=0,
                connect_args={"timeout": 30, "check_same_thread": False},
            )
            event.listen(self._sync, "connect", sqlite_pragmas)
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="relaybot-sqlite")
            # The thread needs the GIL for its (Python) half of each unit. While the event
            # loop is busy it gets it only when the loop's thread is made to let go, every
            # switch interval: 5 ms by default, which made a 40 µs UPDATE take 3.7 ms (p50)
            # beside a busy Telegram adapter. Half a millisecond keeps such waits short.
            if sys.getswitchinterval() > SWITCH_INTERVAL:
                sys.setswitchinterval(SWITCH_INTERVAL)

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
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._thread, self._in_thread, fn, args)
        attempt = 0
        while True:
            try:
                return await self._run_async(fn, args, autocommit, durable)
            except DBAPIError as exc:
                # A deadlock victim or serialization failure was rolled back whole (a unit
                # run in autocommit is one statement, or only reads): running it again is
                # safe.
                sqlstate = getattr(exc.orig, "sqlstate", None)
                if sqlstate not in RETRYABLE_SQLSTATES or attempt == RETRIES_ON_CONFLICT:
                    raise
                attempt += 1
                log.warning("database conflict (%s), running the step again", sqlstate)
                await asyncio.sleep(0.01 * attempt)

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

    def _in_thread(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        assert self._sync is not None
        with self._sync.begin() as conn:
            return fn(conn, *args)

    async def dispose(self) -> None:
        """Close the SQLite thread's connection (the async engine is its owner's to close)."""
        if self._thread is None or self._sync is None:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._sync.dispose)
        self._thread.shutdown(wait=True)
        self._thread = None


__all__ = ["Connection", "Database", "sqlite_pragmas"]
