"""Alembic migrations, run programmatically on the app's own engine."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations
from core.errors import ConfigError

# Alembic's default version table (migrations/env.py keeps it).
VERSION_TABLE = "alembic_version"


def alembic_config(url: str = "") -> Config:
    """An Alembic config pointing at the packaged migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _on(conn: Connection, action: str, revision: str) -> None:
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
_MIGRATION_LOCK = 0x72656C6179


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply migrations up to `revision` (one process at a time on PostgreSQL)."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
            )
        await conn.run_sync(_on, "upgrade", revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Revert migrations down to `revision` ("base" for an empty database)."""
    async with engine.begin() as conn:
        await conn.run_sync(_on, "downgrade", revision)


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
def head_revision() -> str | None:
    """The newest revision the code ships (read once: /readyz asks on every probe)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
