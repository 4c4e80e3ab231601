"""A message's statements read its own chat's rows, however many other chats there are.

PostgreSQL plans a prepared statement once and, after five runs, may keep that generic plan
for good. Planned while a table looked small (a new deployment, or a burst of new chats
faster than autovacuum's next ANALYZE), a lookup could become a sequential scan, or use an
index that reads every waiting event of every chat: each message then cost more with each
chat. This replays every statement real messages sent (and what an adapter runs per
streamed answer, a resumed event first, and the heartbeat that keeps a process's claims
alive every few seconds), with their real parameters: planned on an empty
database, then run on one where 2,000 other chats each have a message waiting (and 20,000
events are finished, 20,000 requests were paid for and a month of budget totals kept),
counting the rows each statement read. Budgets apply to the messages (a person's, a chat's
and the bot's), so their reads and the totals' updates are among the statements.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

from core.app import open_core
from core.config import Settings
from core.db import migrate
from core.db.store import create_engine
from core.testing.fake_openai import FakeOpenAI
from core.testing.sink import RecordingSink
from core.types import ChatRef, IncomingMessage, Sender
from tests.conftest import reset_postgres

OTHER_CHATS = 2000
FINISHED = 20000
PAID = 20000
_TABLES = ("chats", "inbound_events", "messages", "chat_leases", "usage", "spend_totals")
_CONTROL = ("begin", "commit", "rollback", "savepoint", "release", "set ", "show ")
_PINGS = ("", ";", "select 1")


def _message(n: int, chat: str) -> IncomingMessage:
    return IncomingMessage(
        chat=ChatRef("test", chat),
        sender=Sender("u1", "Alice"),
        event_key=f"reads:{n}",
        text=f"question {n}",
    )


async def _empty(url: str) -> None:
    """A fresh schema, never analyzed (autovacuum off), as a new deployment starts."""
    await reset_postgres(url)
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    conn = await asyncpg.connect(_plain(url))
    try:
        for table in _TABLES:
            await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
    finally:
        await conn.close()


async def _fill(url: str) -> None:
    """2,000 other chats, each with a stored turn and a message waiting, and 20,000 finished
    events: a burst faster than autovacuum's next ANALYZE."""
    conn = await asyncpg.connect(_plain(url))
    try:
        await conn.execute(
            "INSERT INTO chats (key, platform, history_rev, created_at, updated_at) "
            "SELECT 'test:other' || g, 'test', g, now(), now() FROM generate_series(1, $1) g",
            OTHER_CHATS,
        )
        await conn.execute(
            "INSERT INTO messages (chat_key, role, content, token_count, encoding, status, "
            "created_at) SELECT 'test:other' || g, 'user', 'hi', 1, 'o200k_base', 'ok', now() "
            "FROM generate_series(1, $1) g",
            OTHER_CHATS,
        )
        await conn.execute(
            "INSERT INTO inbound_events (event_key, chat_key, sender_id, status, received_at, "
            "payload, attempts) SELECT 'other:' || g, 'test:other' || g, 'u2', 'received', "
            "now(), '{}', 0 FROM generate_series(1, $1) g",
            OTHER_CHATS,
        )
        await conn.execute(
            "INSERT INTO inbound_events (event_key, chat_key, sender_id, status, received_at, "
            "attempts) SELECT 'done:' || g, 'test:other' || (g % 100), 'u2', 'done', now(), 1 "
            "FROM generate_series(1, $1) g",
            FINISHED,
        )
        await conn.execute(
            "INSERT INTO usage (created_at, platform, chat_key, user_id, model, kind, "
            "prompt_tokens, completion_tokens, cached_tokens, audio_seconds, images, cost_usd) "
            "SELECT now(), 'test', 'test:other' || (g % $2), 'u' || (g % 100), 'gpt-4o-mini', "
            "'chat', 10, 10, 0, 0, 0, 0.001 FROM generate_series(1, $1) g",
            PAID,
            OTHER_CHATS,
        )
        await conn.execute(
            "INSERT INTO spend_totals (scope, subject, day, cost_usd) "
            "SELECT 'chat', 'test:other' || g, CAST(now() AS DATE) - d, 0.01 "
            "FROM generate_series(1, $1) g, generate_series(0, 29) d",
            OTHER_CHATS,
        )
    finally:
        await conn.close()


def _plain(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _rows_read(conn: asyncpg.Connection) -> int:
    """Rows this transaction has read from the tables (sequentially or through an index)."""
    value = await conn.fetchval(
        "SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0) "
        "FROM pg_stat_xact_user_tables WHERE relname = ANY($1::text[])",
        list(_TABLES),
    )
    return int(value)


async def _run_all(
    conn: asyncpg.Connection, sent: list[tuple[str, tuple[Any, ...]]]
) -> dict[str, int]:
    """Run each statement in a transaction rolled back; the rows each read."""
    read: dict[str, int] = {}
    for query, args in sent:
        transaction = conn.transaction()
        await transaction.start()
        try:
            before = await _rows_read(conn)
            await conn.fetch(query, *args)
            read[query] = max(read.get(query, 0), await _rows_read(conn) - before)
        finally:
            await transaction.rollback()
    return read


async def _replay(url: str, sent: list[tuple[str, tuple[Any, ...]]]) -> dict[str, int]:
    """The statements prepared and planned on an empty database, then run again once it is
    full: the rows each read then."""
    await _empty(url)
    conn = await asyncpg.connect(_plain(url))
    try:
        # Plans made once and kept, as PostgreSQL settles on for a prepared statement run
        # often (plan_cache_mode auto takes the generic plan after five runs when its
        # estimate is no worse). Filling the tables does not make it plan again (an
        # ANALYZE would, when autovacuum gets to it).
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await _run_all(conn, sent)
        await _fill(url)
        return await _run_all(conn, sent)
    finally:
        await conn.close()


async def test_each_statement_of_a_message_reads_only_its_own_chat(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's plans; SQLite plans each statement as it runs")
    sent: list[tuple[str, tuple[Any, ...]]] = []

    def keep(query: str, args: Any) -> None:
        plain = query.strip().lower()
        if plain not in _PINGS and not plain.startswith(_CONTROL):
            sent.append((query, tuple(args or ())))

    def watch(dbapi: Any, record: Any, _proxy: Any) -> None:
        # The per-message statements go to asyncpg directly (core.db.database.fetch); the
        # rest through SQLAlchemy (its cursor event, below).
        if not record.info.get("reads_logged"):
            dbapi.driver_connection.add_query_logger(lambda r: keep(r.query, r.args))
            record.info["reads_logged"] = True

    def cursor(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        keep(statement, params)

    budgets = {
        f"budget_{scope}_{period}": 100.0
        for scope in ("user", "chat", "global")
        for period in ("daily", "monthly")
    }
    async with open_core(settings.model_copy(update=budgets)) as core:
        for engine in {core.store.db.engine, core.store.db.turns_engine}:
            event.listen(engine.sync_engine, "checkout", watch)
            event.listen(engine.sync_engine, "before_cursor_execute", cursor)
        sink = RecordingSink()
        await core.service.handle(_message(1, "new"), sink)  # a chat's first message
        await core.service.handle(_message(2, "new"), sink)  # and one with history
        assert sink.texts == ["echo: question 1", "echo: question 2"]
        # What an adapter runs per streamed answer, a resumed event before its answer, and
        # the heartbeat.
        await core.service.inbox.remember_reply("reads:2", ["m1"])
        await core.service.inbox.user_turn_stored("reads:2")
        await core.service.inbox.renew([1, 2], ["test:new"])
        per_message = sent[:]
    assert len(per_message) >= 6, per_message

    read = await _replay(settings.database_url, per_message)
    # A few rows each (the chat, its lease, its newest turn, the event): nothing that grows
    # with the 2,000 other chats and their waiting messages.
    heavy = {query[:120]: rows for query, rows in read.items() if rows > 20}
    assert not heavy, heavy
