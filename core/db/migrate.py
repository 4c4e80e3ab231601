"""Alembic migrations, run programmatically on the app's own engine."""

from __future__ import annotations

import functools
import io
import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations
from core.errors import ConfigError

# Alembic's default version table (migrations/env.py keeps it).
VERSION_TABLE = "alembic_version"


def alembic_config(url: str = "") -> Config:
    """An Alembic config pointing at the packaged migrations. What Alembic's commands
    print themselves ("No new upgrade operations detected.") is dropped: `relaybot db`
    says what happened in its own lines, which an operator or a script reads."""
    cfg = Config(stdout=io.StringIO())
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def newer_than_code(current: str) -> str:
    """What an operator is told when the database is at a migration this code lacks."""
    return (
        f"the database is at migration {current}, newer than this relaybot knows (its "
        f"newest is {head_revision()}): a newer version migrated it; run that version"
    )


def _on(conn: Connection, action: str, revision: str, newer_ok: bool = False) -> None:
    # Alembic would say only "Can't locate revision identified by ...".
    current = _current(conn)
    if current is not None and not is_known(current):
        if not newer_ok:
            raise ConfigError(newer_than_code(current))
        # A start during a rolling release, after the new release's migration ran: this
        # code still works on the newer schema (migrations add), as /readyz says.
        log.warning("%s; serving on it meanwhile", newer_than_code(current))
        return
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    if action == "upgrade":
        command.upgrade(cfg, revision)
    elif action == "downgrade":
        command.downgrade(cfg, revision)
    elif action == "check":
        command.check(cfg)
    else:  # pragma: no cover - programming error
        raise ValueError(action)


# Replicas starting together on PostgreSQL take turns migrating (any fixed number will do).
log = logging.getLogger("relaybot.db")

_MIGRATION_LOCK = 0x72656C6179


def _begin_immediate(conn: Connection) -> None:
    # SQLAlchemy's recipe for real SQLite transactions, second half: emit our own BEGIN.
    # IMMEDIATE takes the write lock at once, so a second migrator waits (busy_timeout) and
    # then reads the revision the first one committed, instead of both reading "empty".
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_atomic(conn: Connection, action: str, revision: str, newer_ok: bool) -> None:
    """Migrate in one SQLite transaction that covers the DDL too.

    The sqlite3 driver (and aiosqlite over it) in its default ("legacy") mode emits BEGIN
    only before INSERT/UPDATE/DELETE: each CREATE TABLE commits on its own, so a migration
    interrupted part-way left tables without their recorded revision, and migrators started
    together raced ("table chats already exists"). SQLAlchemy's documented fix ("Enabling
    Non-Legacy SQLite Transactional Modes": the driver's isolation_level None, and BEGIN
    emitted on begin) is applied to this one connection only; the application's engine
    keeps its settings, restored before the connection goes back to the pool.
    """
    driver: Any = conn.connection.dbapi_connection
    if conn.in_transaction():  # (autobegun by an earlier statement: nothing was written)
        conn.rollback()
    legacy = driver.isolation_level
    driver.isolation_level = None  # the driver emits no BEGIN of its own
    event.listen(conn, "begin", _begin_immediate)
    try:
        with conn.begin():
            _on(conn, action, revision, newer_ok)
    finally:
        event.remove(conn, "begin", _begin_immediate)
        driver.isolation_level = legacy


async def _migrate(
    engine: AsyncEngine, action: str, revision: str, newer_ok: bool = False
) -> None:
    if engine.dialect.name == "sqlite":
        async with engine.connect() as conn:
            await conn.run_sync(_sqlite_atomic, action, revision, newer_ok)
        return
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
            )
        await conn.run_sync(_on, action, revision, newer_ok)


async def upgrade(engine: AsyncEngine, revision: str = "head", *, newer_ok: bool = False) -> None:
    """Apply migrations up to `revision`, all or nothing, one process at a time (PostgreSQL:
    an advisory lock; SQLite: the write lock, taken first).

    A database at a migration this code does not ship (a newer release's) is refused with
    one line, unless `newer_ok` (a start that migrates by itself): then a warning."""
    await _migrate(engine, "upgrade", revision, newer_ok)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Revert migrations down to `revision` ("base" for an empty database), all or nothing."""
    await _migrate(engine, "downgrade", revision)


async def check(engine: AsyncEngine) -> None:
    """Raise if the models differ from what the migrations build (`alembic check`)."""
    async with engine.connect() as conn:
        await conn.run_sync(_on, "check", "head")


def _current(conn: Connection) -> str | None:
    # Read Alembic's table directly: a MigrationContext logs two INFO lines each time it is
    # made ("Context impl ...", "Will assume transactional DDL"), and /readyz asks on every
    # probe. Migrating (`upgrade`, `downgrade`) still logs what it does.
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    versions = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(versions) > 1:  # as Alembic's get_current_revision: one line of history only
        raise RuntimeError(f"the database is at several migrations at once: {versions}")
    return versions[0] if versions else None


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, None when never migrated (logs nothing)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


NOT_MIGRATED = "the database has no relaybot tables yet; run `relaybot db upgrade`"


async def require_migrated(engine: AsyncEngine) -> None:
    """Raise ConfigError (one line saying what to run) when the database was never migrated:
    started with --no-migrate or RELAYBOT_AUTO_MIGRATE=false, every query would fail."""
    if await current_revision(engine) is None:
        raise ConfigError(NOT_MIGRATED)


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


@functools.cache
def head_revision() -> str | None:
    """The newest revision the code ships (read once: /readyz asks on every probe)."""
    return _scripts().get_current_head()


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every revision this code ships."""
    return frozenset(script.revision for script in _scripts().walk_revisions())


def is_known(revision: str) -> bool:
    """Whether this code ships `revision`. One it does not know was made by newer code
    (a release whose migration already ran: this code still works on it, migrations add)."""
    return revision in known_revisions()
