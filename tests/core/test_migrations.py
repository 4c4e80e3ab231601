"""Migrations build the schema the models describe, and undo it, on every backend."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import inspect

from core.db import migrate
from core.db.store import create_engine

# Each test migrates a database from nothing itself.
pytestmark = pytest.mark.empty_database


async def _tables(engine) -> set[str]:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda c: inspect(c).get_table_names())
    return set(names) - {"alembic_version"}


async def test_upgrade_check_downgrade(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        assert await migrate.current_revision(engine) is None
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
        assert await _tables(engine) == {
            "budget_overrides",
            "chats",
            "chat_leases",
            "inbound_events",
            "messages",
            "rate_limit_windows",
            "spend_totals",
            "usage",
        }
        # `alembic check`: the models and the migrations describe the same schema.
        await migrate.check(engine)
        await migrate.downgrade(engine, "base")
        assert await _tables(engine) == set()
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()


async def test_replicas_starting_together_migrate_once(database_url: str) -> None:
    import asyncio

    import pytest

    if not database_url.startswith("postgresql"):
        pytest.skip("replicas share PostgreSQL; SQLite is one process")
    engines = [create_engine(database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(migrate.upgrade(e) for e in engines))
        assert await migrate.current_revision(engines[0]) == migrate.head_revision()
    finally:
        for engine in engines:
            await engine.dispose()


def _alembic(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("alembic")]


async def test_reading_the_revision_logs_nothing_migrating_says_what_it_does(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # /readyz reads the revision on every probe: two INFO lines from Alembic each time filled
    # the log. `relaybot db upgrade` (and the migration at start) still logs its steps.
    engine = create_engine(database_url)
    try:
        with caplog.at_level(logging.INFO, logger="alembic"):
            assert await migrate.current_revision(engine) is None
            assert _alembic(caplog) == []
            await migrate.upgrade(engine)
            assert any(m.startswith("Running upgrade") for m in _alembic(caplog))
            caplog.clear()
            assert await migrate.current_revision(engine) == migrate.head_revision()
            assert _alembic(caplog) == []
    finally:
        await engine.dispose()


async def test_model_names_of_any_length_after_0012_and_back(database_url: str) -> None:
    # vLLM names a model by its path: longer than the 128 characters chats.model and
    # usage.model held before 0012 (PostgreSQL refused to record such a model's usage).
    from sqlalchemy import insert, select

    from core.db.models import Chat, UsageRecord

    long = "/srv/models/hub/models--org--name/snapshots/" + "0123456789abcdef" * 10
    engine = create_engine(database_url)
    try:
        await migrate.upgrade(engine, "0011")
        async with engine.begin() as conn:
            await conn.execute(
                insert(Chat).values(key="console:old", platform="console", model="gpt-4o")
            )
            await conn.execute(
                insert(UsageRecord).values(platform="console", model="gpt-4o", kind="chat")
            )
        await migrate.upgrade(engine)
        await migrate.check(engine)
        async with engine.begin() as conn:
            await conn.execute(
                insert(Chat).values(key="console:new", platform="console", model=long)
            )
            await conn.execute(
                insert(UsageRecord).values(platform="console", model=long, kind="chat")
            )
        chats = select(Chat.key, Chat.model).order_by(Chat.key)
        usage = select(UsageRecord.model).order_by(UsageRecord.id)
        async with engine.connect() as conn:
            assert (await conn.execute(chats)).all() == [
                ("console:new", long),
                ("console:old", "gpt-4o"),
            ]
            assert (await conn.execute(usage)).scalars().all() == ["gpt-4o", long]
        # Back at 0011 the rows stay, a long name cut to what the old columns hold.
        await migrate.downgrade(engine, "0011")
        async with engine.connect() as conn:
            assert (await conn.execute(chats)).all() == [
                ("console:new", long[:128]),
                ("console:old", "gpt-4o"),
            ]
            assert (await conn.execute(usage)).scalars().all() == ["gpt-4o", long[:128]]
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()


async def test_chat_keys_in_byte_order_after_0015_and_back(database_url: str) -> None:
    # /forget finds a chat's threads as the range of keys ['KEY:', 'KEY;'), exact in byte
    # order only: from 0015 PostgreSQL's chat-key columns are collated "C" (SQLite compares
    # BINARY already, and its columns stay as they were).
    from sqlalchemy import insert, select

    from core.db.models import Chat, Message

    columns = {
        "chats": "key",
        "chat_leases": "chat_key",
        "inbound_events": "chat_key",
        "messages": "chat_key",
        "usage": "chat_key",
    }

    async def collations() -> set[str | None]:
        async with engine.connect() as conn:
            found = await conn.run_sync(
                lambda c: {
                    column["type"].collation
                    for table, name in columns.items()
                    for column in inspect(c).get_columns(table)
                    if column["name"] == name
                }
            )
        return set(found)

    engine = create_engine(database_url)
    postgres = database_url.startswith("postgresql")
    try:
        await migrate.upgrade(engine, "0014")
        assert await collations() == {None}
        async with engine.begin() as conn:
            await conn.execute(insert(Chat).values(key="test:a:1", platform="test"))
            await conn.execute(
                insert(Message).values(
                    chat_key="test:a:1", role="user", content="hi", token_count=1, encoding="x"
                )
            )
        await migrate.upgrade(engine)
        await migrate.check(engine)
        assert await collations() == ({"C"} if postgres else {None})
        async with engine.connect() as conn:
            threads = select(Message.chat_key).where(
                Message.chat_key >= "test:a:", Message.chat_key < "test:a;"
            )
            assert (await conn.execute(threads)).scalars().all() == ["test:a:1"]
        await migrate.downgrade(engine, "0014")
        assert await collations() == {None}
        async with engine.connect() as conn:
            assert (await conn.execute(select(Chat.key))).scalars().all() == ["test:a:1"]
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()
