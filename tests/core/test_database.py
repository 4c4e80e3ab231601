"""How the core reaches its database: dropped connections, bursts, one unit per step."""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
import time
from typing import Any

import pytest
from sqlalchemy import Connection, event, text
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import create_async_engine

from core.app import Core, open_core
from core.config import Settings
from core.db import database as database_module
from core.db.database import Database
from core.testing.fake_openai import FakeOpenAI
from core.testing.sink import RecordingSink
from core.types import ChatRef, IncomingMessage, Sender

_ids = itertools.count(1)


def message(text_: str, chat: str = "d1") -> IncomingMessage:
    return IncomingMessage(
        chat=ChatRef("test", chat),
        sender=Sender("u1", "Alice"),
        event_key=f"db:{next(_ids)}",
        text=text_,
    )


async def terminate_other_backends(url: str) -> int:
    """What a PostgreSQL restart or an idle timeout does to the core's pooled connections."""
    database = make_url(url).database
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            )
            return int(result.scalar_one())
    finally:
        await admin.dispose()


async def test_a_message_after_the_server_dropped_idle_connections_is_answered(
    core: Core, fake_openai: FakeOpenAI, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if core.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to drop connections")
    sink = RecordingSink()
    await core.service.handle(message("before"), sink)
    assert await terminate_other_backends(database_url) >= 1
    # Every pooled connection counts as idle now (the real threshold is seconds).
    monkeypatch.setattr(database_module, "IDLE_PING_SECONDS", 0.0)
    await asyncio.sleep(0.01)
    await core.service.handle(message("after"), sink)
    assert sink.texts == ["echo: before", "echo: after"]
    assert await core.store.count_messages("test:d1") == 4


async def test_each_chat_message_takes_a_few_statements_whatever_the_history(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    """The work per message is bounded: no statement per history row, none per page."""
    sink = RecordingSink()
    for i in range(5):
        await core.service.handle(message(f"warm {i}"), sink)
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    db = core.store.db
    # The SQLite thread's connection reports every statement it runs (SQLAlchemy's and the
    # ones run on it directly); PostgreSQL's two pools report theirs.
    sqlite_thread = db.thread_engine

    def trace(conn: Connection, callback: Any) -> None:
        conn.connection.driver_connection.set_trace_callback(callback)  # type: ignore[union-attr]

    def traced(statement: str) -> None:
        if not statement.startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            statements.append(statement)

    targets = [] if sqlite_thread else [db.engine.sync_engine, db.turns_engine.sync_engine]
    if sqlite_thread:
        await db.run(trace, traced)
    for target in targets:
        event.listen(target, "before_cursor_execute", count)
    # PostgreSQL's hottest statements go to asyncpg directly (`Database.fetch`): count those.
    fetch = db.fetch

    async def counted_fetch(statement: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(str(statement))
        return await fetch(statement, *args, **kwargs)

    db.fetch = counted_fetch  # type: ignore[method-assign]
    try:
        for i in range(10):
            await core.service.handle(message(f"turn {i} " + "word " * 50), sink)
    finally:
        del db.fetch
        if sqlite_thread:
            await db.run(trace, None)
        for target in targets:
            event.remove(target, "before_cursor_execute", count)
    per_message = len(statements) / 10
    assert per_message >= 3, statements  # every step was seen
    # Record the event, begin the chat's turn (and read its settings), store the user turn,
    # store the answer: four steps. PostgreSQL runs them as three statements (the record
    # takes the chat's turn when the chat is free); SQLite runs the two appends as a few
    # cheap statements in its thread (one of them adds a paid answer's cost to the budgets'
    # day totals).
    assert per_message <= (11 if core.engine.dialect.name == "sqlite" else 3)
    assert not any("messages.content" in s for s in statements), "history was read again"


async def test_a_burst_over_many_chats_is_answered_without_lock_errors(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    sinks = {f"b{i}": RecordingSink() for i in range(40)}
    await asyncio.gather(
        *(
            core.service.handle(message(f"{chat} says {n}", chat=chat), sink)
            for n in range(3)
            for chat, sink in sinks.items()
        )
    )
    for chat, sink in sinks.items():
        assert len(sink.texts) == 3, (chat, sink.texts)
        assert all(t.startswith("echo: ") for t in sink.texts)


async def test_lease_renewals_during_a_burst_never_fail_an_answer(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """The heartbeat renews every claim while hundreds of answers are being stored."""
    fake_openai.chunk_delay = 0.002
    async with open_core(settings.model_copy(update={"lease_seconds": 0.15})) as core:
        sinks = [RecordingSink() for _ in range(300)]
        await asyncio.gather(
            *(
                core.service.handle(message(f"hello {i}", chat=f"r{i}"), sink)
                for i, sink in enumerate(sinks)
            )
        )
        failed = [s.texts for s in sinks if s.texts != [s.texts[0]] or "echo" not in s.texts[0]]
        assert failed == []


async def test_a_replica_whose_message_was_taken_over_stores_nothing(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    """A replica that stalled past its lease must not store a turn its successor owns."""
    if not core.store.db.shared:
        pytest.skip("a SQLite process is alone: nobody can take its messages over")
    sink = RecordingSink()
    await core.service.handle(message("before"), sink)
    fake_openai.chunk_delay = 0.2
    fake_openai.queue_reply("a slow answer in several words")
    task = asyncio.create_task(core.service.handle(message("slow one"), sink))
    await fake_openai.wait_for("/chat/completions", count=2)

    # The model is asked while the person's turn is being stored: once that turn is in,
    # only the (slow) answer is left to this replica.
    async def stored() -> list[str]:
        return [r.content async for r in core.store.newest_messages("test:d1")]

    async with asyncio.timeout(10):
        while "slow one" not in await stored():  # noqa: ASYNC110 (the store signals nothing)
            await asyncio.sleep(0.01)
    # What another replica's sweeper does once this one's lease ran out.
    async with core.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE inbound_events SET claimed_by = 'w-successor' "
                "WHERE status = 'received' AND chat_key = 'test:d1'"
            )
        )
    await task
    rows = [r async for r in core.store.newest_messages("test:d1")]
    assert [r.content for r in reversed(rows)] == ["before", "echo: before", "slow one"]
    async with core.engine.connect() as conn:
        still = (
            await conn.execute(
                text("SELECT status, claimed_by FROM inbound_events WHERE chat_key = 'test:d1'")
            )
        ).all()
    assert ("received", "w-successor") in [tuple(r) for r in still]


async def test_a_stalled_replica_cannot_close_a_message_its_successor_answers(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    """Its failure (or its give-up) leaves the event to the replica that took it over."""
    inbox = core.service.inbox
    event_id = await inbox.record(message("taken over"))
    assert event_id is not None
    async with core.engine.begin() as conn:
        await conn.execute(
            text("UPDATE inbound_events SET claimed_by = 'w-successor' WHERE id = :id"),
            {"id": event_id},
        )
    await inbox.finish(event_id, "failed")
    async with core.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT status, claimed_by FROM inbound_events WHERE id = :id"),
                {"id": event_id},
            )
        ).one()
    assert tuple(row) == ("received", "w-successor")
    # Its own events it still closes.
    mine = await inbox.record(message("mine"))
    assert mine is not None
    await inbox.finish(mine, "done")
    async with core.engine.connect() as conn:
        status = (
            await conn.execute(
                text("SELECT status FROM inbound_events WHERE id = :id"), {"id": mine}
            )
        ).scalar()
    assert status == "done"


async def test_a_burst_with_redeliveries_answers_each_message_once(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    """A redelivered event's duplicate key fails its own unit only: every message of a
    burst is answered once, whichever units were committed together."""
    originals = [message(f"burst {i}", chat=f"g{i}") for i in range(60)]
    again = originals[::10]  # the platform delivers every tenth one twice, at the same time
    sinks = [RecordingSink() for _ in originals + again]
    handled = await asyncio.gather(
        *(core.service.handle(m, s) for m, s in zip(originals + again, sinks, strict=True))
    )
    assert handled.count(True) == 60
    for i, msg in enumerate(originals):
        copies = [sinks[i].texts] + [sinks[60 + k].texts for k, m in enumerate(again) if m is msg]
        assert [c for c in copies if c] == [[f"echo: burst {i}"]]
        assert await core.store.count_messages(f"test:g{i}") == 2


async def test_sqlite_units_queued_together_commit_together_and_fail_alone(
    core: Core,
) -> None:
    db = core.store.db
    engine = db.thread_engine
    if engine is None:
        pytest.skip("PostgreSQL runs each unit on its own pooled connection")
    commits: list[int] = []
    event.listen(engine, "commit", lambda _conn: commits.append(1))
    gate = threading.Event()

    def hold(conn: Connection) -> None:
        gate.wait(5)

    def add(conn: Connection, key: str) -> int:
        conn.execute(
            text(
                "INSERT INTO chats (key, platform, history_rev, created_at, updated_at) "
                "VALUES (:k, 'test', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            {"k": key},
        )
        return len(key)

    async def queued_behind_a_busy_thread(keys: list[str]) -> list[object]:
        gate.clear()
        held = asyncio.ensure_future(db.run(hold))
        await asyncio.sleep(0.05)  # the thread is busy: what follows queues up
        units = [asyncio.ensure_future(db.run(add, key)) for key in keys]
        await asyncio.sleep(0.05)
        gate.set()
        await held
        return await asyncio.gather(*units, return_exceptions=True)

    keys = [f"group-{i}" for i in range(20)]
    assert await queued_behind_a_busy_thread(keys) == [len(k) for k in keys]
    # The held unit's commit, then one for the 20 queued behind it.
    assert len(commits) == 2

    commits.clear()
    keys = [f"again-{i}" for i in range(20)] + ["group-3"]  # the last one is a duplicate
    results = await queued_behind_a_busy_thread(keys)
    assert results[:20] == [len(k) for k in keys[:20]]
    assert isinstance(results[20], IntegrityError)
    async with core.engine.connect() as conn:
        stored = await conn.execute(text("SELECT count(*) FROM chats WHERE key LIKE '%-%'"))
        assert stored.scalar_one() == 40
    # The duplicate made the group roll back; each unit then ran alone: the held unit's
    # commit and 20 more, nothing of the failed one.
    assert len(commits) == 21


async def test_a_steady_load_reuses_the_pools_connections(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """Hundreds of messages, 80 at a time: the database sees the pool's connections, not a
    new one (a new PostgreSQL backend) every few messages."""
    async with open_core(settings) as core:
        if not core.store.db.shared:
            pytest.skip("SQLite runs in one thread on one connection")
        opened: list[int] = []
        engines = {core.store.db.engine, core.store.db.turns_engine}
        for engine in engines:
            event.listen(engine.sync_engine, "connect", lambda *_: opened.append(1))
        sinks = [RecordingSink() for _ in range(240)]
        lanes = [sinks[i::80] for i in range(80)]

        async def lane(n: int, own: list[RecordingSink]) -> None:
            for k, sink in enumerate(own):
                await core.service.handle(message(f"load {n}.{k}", chat=f"l{n}"), sink)

        await asyncio.gather(*(lane(n, own) for n, own in enumerate(lanes)))
        assert all(s.texts and s.texts[0].startswith("echo: load") for s in sinks)
        assert len(opened) <= settings.db_pool_size * len(engines)


async def test_answers_cut_off_mid_step_give_every_connection_back(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """A shutdown that cancels answers in the middle of their database steps leaves no
    connection checked out (none leaks, none is left mid-statement for the next user)."""
    async with open_core(settings.model_copy(update={"shutdown_grace": 0})) as core:
        db = core.store.db
        if not db.shared:
            pytest.skip("SQLite runs its steps in its own thread, on one connection")
        fake_openai.chunk_delay = 0.01
        sinks = [RecordingSink() for _ in range(60)]
        jobs = await asyncio.gather(
            *(
                core.service.submit(message(f"cut {i}", chat=f"x{i}"), sink)
                for i, sink in enumerate(sinks)
            )
        )
        await asyncio.sleep(0)  # they are in their first steps, waiting for connections
        await core.service.shutdown(grace=0)
        fake_openai.chunk_delay = 0.0
        assert all(job is None or job.done() for job in jobs)
        pools = [db.engine.pool, db.turns_engine.pool]
        assert [pool.checkedout() for pool in pools] == [0, 0]  # type: ignore[attr-defined]
    # The released messages are answered by the next process, on healthy connections.
    async with open_core(settings) as core:
        restorer_sinks: list[RecordingSink] = []

        class Restorer:
            def restore(self, msg: IncomingMessage) -> tuple[IncomingMessage, RecordingSink]:
                sink = RecordingSink()
                restorer_sinks.append(sink)
                return msg, sink

        started = asyncio.get_running_loop().time()
        await core.service.resume({"test": Restorer()}, everything=True)
        await core.service.drain()
        answered = sum(1 for s in sinks if s.texts) + sum(1 for s in restorer_sinks if s.texts)
        assert answered >= 60
        # Not held back by leases the stopped process left (they would last a minute).
        assert asyncio.get_running_loop().time() - started < 20


async def test_times_are_stored_in_one_format_whichever_path_wrote_them(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    """Retention, usage windows and leases compare stored times in SQL: the per-message
    steps (on SQLite run without SQLAlchemy's execution layer) write them as it does."""
    if core.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL keeps times as timestamptz, not as text")
    await core.service.handle(message("what time is it"), RecordingSink())
    await core.store.add_usage(
        platform="test", chat_key="test:other", user_id="u", model="m", kind="chat"
    )

    def stored(conn: Connection) -> list[str]:
        rows = conn.execute(
            text(
                "SELECT CAST(created_at AS TEXT) FROM messages UNION ALL "
                "SELECT CAST(created_at AS TEXT) FROM usage UNION ALL "
                "SELECT CAST(received_at AS TEXT) FROM inbound_events UNION ALL "
                "SELECT CAST(finished_at AS TEXT) FROM inbound_events UNION ALL "
                "SELECT CAST(updated_at AS TEXT) FROM chats"
            )
        )
        return [row[0] for row in rows if row[0] is not None]

    times = await core.store.db.run(stored)
    assert len(times) >= 6
    shapes = {re.sub(r"\d", "9", t) for t in times}
    assert len(shapes) == 1, shapes


async def test_a_burst_never_starves_other_work_of_connections(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """The per-message statements keep some pooled connections in hand between messages,
    never more than half the pool: other work (settings, commands) still gets one."""
    async with open_core(settings.model_copy(update={"db_pool_size": 2})) as core:
        db = core.store.db
        if not db.shared:
            pytest.skip("SQLite runs its steps in its own thread, on one connection")
        sinks = [RecordingSink() for _ in range(30)]
        fake_openai.chunk_delay = 0.002
        burst = asyncio.gather(
            *(
                core.service.handle(message(f"burst {i}", chat=f"s{i}"), sink)
                for i, sink in enumerate(sinks)
            )
        )
        # Meanwhile, work that takes its connection from the pool itself, one at a time.
        for _ in range(10):
            await asyncio.wait_for(core.store.chat_settings("test:elsewhere"), 10)
        await burst
        assert [s.texts for s in sinks] == [[f"echo: burst {i}"] for i in range(30)]
        pools = [db.engine.pool, db.turns_engine.pool]
        # Idle now: at most one of each pool's two connections stays in hand.
        assert all(pool.checkedout() <= 1 for pool in pools)  # type: ignore[attr-defined]
        await core.service.shutdown(grace=0)
        assert [pool.checkedout() for pool in pools] == [0, 0]  # type: ignore[attr-defined]


async def test_a_connection_the_server_closed_is_not_used_again(
    core: Core, fake_openai: FakeOpenAI, database_url: str
) -> None:
    """The connections kept for the per-message statements are checked before use: one
    whose server went away a moment ago (not yet idle long enough to be pinged) is dropped
    and the message is answered on another."""
    if core.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to drop connections")
    sink = RecordingSink()
    for i in range(3):
        await core.service.handle(message(f"before {i}", chat=f"c{i}"), sink)
    assert await terminate_other_backends(database_url) >= 1
    await asyncio.sleep(0.2)  # the event loop reads each closed socket's end
    await core.service.handle(message("after"), sink)
    assert sink.texts == ["echo: before 0", "echo: before 1", "echo: before 2", "echo: after"]


async def test_statements_wait_for_a_kept_connection_and_a_cancelled_wait_leaks_none(
    settings: Settings,
) -> None:
    """With every kept connection busy, the next statement waits for one instead of taking
    more of the pool; a wait cancelled (a message given up at shutdown) leaves no
    connection checked out."""
    async with open_core(settings.model_copy(update={"db_pool_size": 2})) as core:
        db = core.store.db
        if not db.shared:
            pytest.skip("SQLite runs its steps in its own thread, on one connection")
        pool: Any = db.engine.pool
        slow = asyncio.create_task(db.fetch(text("SELECT pg_sleep(0.3)"), {}))
        await asyncio.sleep(0.1)
        waiting = asyncio.create_task(db.fetch(text("SELECT 2"), {}))
        given_up = asyncio.create_task(db.fetch(text("SELECT 3"), {}))
        await asyncio.sleep(0.05)
        assert pool.checkedout() == 1  # the other half of the pool stays free for `run`
        assert await core.store.chat_settings("test:elsewhere") is not None
        given_up.cancel()
        await slow
        assert [tuple(r) for r in await waiting] == [(2,)]
        with pytest.raises(asyncio.CancelledError):
            await given_up
        with pytest.raises(Exception, match="division by zero"):
            await db.fetch(text("SELECT 1 / 0"), {})
        assert [tuple(r) for r in await db.fetch(text("SELECT 4"), {})] == [(4,)]
        assert pool.checkedout() == 1
        await core.service.shutdown(grace=0)
        assert pool.checkedout() == 0


async def test_a_statement_waits_for_a_busy_connection_no_longer_than_the_pool_would(
    settings: Settings,
) -> None:
    """When the server stalls every kept connection, the next statement fails after the
    pool's timeout, as a checkout would, instead of waiting forever; later ones work."""
    if settings.database_url.startswith("sqlite"):
        pytest.skip("SQLite runs its steps in its own thread, on one connection")
    engine = create_async_engine(
        settings.database_url, pool_size=2, max_overflow=0, pool_timeout=0.3
    )
    db = Database(engine)
    try:
        stalled = asyncio.create_task(db.fetch(text("SELECT pg_sleep(1)"), {}))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(PoolTimeout, match=r"within 0\.3 s"):
            await db.fetch(text("SELECT 2"), {})
        assert time.monotonic() - started > 0.25  # it did wait for a connection first
        await stalled
        assert [tuple(r) for r in await db.fetch(text("SELECT 3"), {})] == [(3,)]
        assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    finally:
        await db.dispose()
        await engine.dispose()
