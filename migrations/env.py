"""Alembic environment: runs on a connection handed in by core.db.migrate, or on the URL."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from core.config import Settings, normalize_database_url
from core.db.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_on_url(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    """Use the caller's connection when given (the app and tests), else open the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    # The URL given (in the forms RELAYBOT_DATABASE_URL takes), else the configured one.
    url = config.get_main_option("sqlalchemy.url") or Settings().database_url
    asyncio.run(_run_on_url(normalize_database_url(url)))


if context.is_offline_mode():
    context.configure(
        url=normalize_database_url(
            config.get_main_option("sqlalchemy.url") or Settings().database_url
        ),
        target_metadata=target_metadata,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
