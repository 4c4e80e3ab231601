"""Alembic migrations, run programmatically on the app's own engine."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations


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
    return MigrationContext.configure(conn).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, None when never migrated."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


@functools.cache
def head_revision() -> str | None:
    """The newest revision the code ships (read once: /readyz asks on every probe)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
