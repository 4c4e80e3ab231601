"""Builds the core from settings: one HTTP client, one engine, the store and the service."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from core.config import Settings, sqlite_file
from core.db import migrate
from core.db.database import answered_within, check_reachable
from core.db.store import Store, create_engine
from core.errors import ConfigError
from core.openai_client import HTTPClient, OpenAIClient, build_http_client
from core.service import ConversationService

log = logging.getLogger("relaybot.app")


# Python's collector by default runs a young collection every 700 allocations, and a full one
# (every live object scanned) every 100 of those. A service with thousands of answers in
# flight keeps many objects alive, so full collections come often and cost much: in the
# 5,000-chat benchmark they took 2.1-2.4 s of a 14 s run. Rarer collections (young every
# 2,000 allocations, full every 400) cut that to 0.7-0.9 s with no rise in peak memory.
COLLECTOR_THRESHOLDS = (2000, 20, 20)

# How long /readyz waits for the database. A network partition drops packets rather than
# refusing them, and a connection attempt then waits for the driver's own timeout (asyncpg:
# 60 s): the probe (Kubernetes gives it 3 s) would time out instead of hearing why, and a
# shutdown would wait for the hung probes.
READINESS_TIMEOUT = 2.0


def tune_collector() -> None:
    """Set the garbage collector for a long-running service (`relaybot run`, the benchmark).

    A process-wide setting, so the runner applies it, not `open_core`: a program embedding
    the core keeps its own.
    """
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


@dataclass(slots=True)
class Core:
    """Everything an adapter needs; created by `open_core`."""

    settings: Settings
    http: HTTPClient
    engine: AsyncEngine
    store: Store
    client: OpenAIClient
    service: ConversationService
    # The newer migration /readyz last warned about (it warns once, not on every probe).
    newer_schema_seen: str | None = field(default=None, repr=False)
    # Readiness checks given up on (a database that does not answer), still being cancelled.
    _abandoned: set[asyncio.Task[Any]] = field(default_factory=set, repr=False)

    async def readiness_problem(self) -> str | None:
        """None when the database answers and is migrated to head (or past it), else what
        is wrong; "database unreachable: timeout" when it does not answer within
        READINESS_TIMEOUT.

        A revision this code does not know was made by newer code: during a rolling release
        the migration job runs before the old replicas are replaced, and they still work on
        the newer schema (migrations add), so they stay ready; a warning says so, once.
        Only a database behind the code (never migrated, or at an older revision it ships)
        is not ready.
        """
        done, problem = await answered_within(
            self._database_problem(), READINESS_TIMEOUT, self._abandoned
        )
        return problem if done else "database unreachable: timeout"

    async def _database_problem(self) -> str | None:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            current = await migrate.current_revision(self.engine)
        except Exception as exc:  # any driver error means "not ready"
            return f"database unreachable: {type(exc).__name__}"
        head = migrate.head_revision()
        if current == head:
            return None
        if current is not None and not migrate.is_known(current):
            if self.newer_schema_seen != current:
                self.newer_schema_seen = current
                log.warning(
                    "the database is at migration %s, newer than this code (%s): "
                    "serving on it; replace this version with the one that migrated it",
                    current,
                    head,
                )
            return None
        return f"database at migration {current}, code expects {head}"


class DatabaseInUse(ConfigError):
    """Another process has this SQLite file open as a core: one process per file."""


# The SQLite files this process holds the lock of: their lock file, and how many cores hold it.
# A second core in the same process (a test, an embedding program) shares the lock; another
# process is refused.
_held_locks: dict[Path, tuple[int, int]] = {}
_held_locks_guard = threading.Lock()


def lock_sqlite_file(url: str) -> Path | None:
    """Take the lock of the SQLite file `url` names (`<file>.lock` beside it), or raise
    DatabaseInUse when another process holds it. Two processes on one file would each resume
    the other's answers in progress (SQLite start-up resumes everything), answering and
    billing them twice. Returns the lock file to give to `unlock_sqlite_file`; None for
    PostgreSQL and in-memory SQLite, which need no lock."""
    database = sqlite_file(url)
    if database is None:
        return None
    lock_path = Path(f"{database.resolve()}.lock")
    with _held_locks_guard:
        held = _held_locks.get(lock_path)
        if held is not None:
            _held_locks[lock_path] = (held[0], held[1] + 1)
            return lock_path
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"cannot create {lock_path} ({exc.strerror or type(exc).__name__}): relaybot "
                "needs to write in the folder of its SQLite file"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DatabaseInUse(
                f"another relaybot process is using {database}: one process per SQLite file; "
                "use PostgreSQL for several"
            ) from None
        _held_locks[lock_path] = (fd, 1)
    return lock_path


def unlock_sqlite_file(lock_path: Path | None) -> None:
    """Let go of a lock `lock_sqlite_file` took (the last core of this process releases it)."""
    if lock_path is None:
        return
    with _held_locks_guard:
        fd, count = _held_locks[lock_path]
        if count > 1:
            _held_locks[lock_path] = (fd, count - 1)
            return
        del _held_locks[lock_path]
        os.close(fd)  # closing the only descriptor releases the lock


@asynccontextmanager
async def open_core(settings: Settings, *, migrate_db: bool | None = None) -> AsyncIterator[Core]:
    """Open the core; migrates the database first unless told not to."""
    engine = create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    # PostgreSQL: a second pool for the steps after an event is recorded (commits that do not
    # wait for the disk; see core.db.database.Database.run).
    turns = None
    if engine.dialect.name != "sqlite":
        turns = create_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            synchronous_commit=False,
        )
    http = build_http_client(settings)
    store: Store | None = None
    lock: Path | None = None
    try:
        # A wrong RELAYBOT_DATABASE_URL or a server that is down: one line saying so.
        await check_reachable(engine)
        # One process per SQLite file, held until the core is closed.
        lock = lock_sqlite_file(settings.database_url)
        if settings.auto_migrate if migrate_db is None else migrate_db:
            await migrate.upgrade(engine, newer_ok=True)
        store = Store(engine, turns)
        api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        client = OpenAIClient(
            http,
            base_url=settings.openai_base_url,
            api_key=api_key,
            max_retries=settings.max_retries,
            stream_idle_timeout=settings.stream_idle_timeout,
            first_token_timeout=settings.first_token_timeout,
        )
        service = ConversationService(settings, store, client)
        yield Core(settings, http, engine, store, client, service)
    finally:
        try:
            await http.aclose()
            if store is not None:
                await store.close()
            if turns is not None:
                await turns.dispose()
            await engine.dispose()
        finally:
            unlock_sqlite_file(lock)
