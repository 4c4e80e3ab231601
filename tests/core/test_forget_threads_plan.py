"""/forget with threads finds the chat's rows through the chat-key indexes, on every backend.

It matched the threads with substr(key, 1, n) = 'CHAT_KEY:', which no index serves: each
/forget said at a chat's top level read the whole of messages, chats, inbound_events and
usage (about a second at 1.5 million messages; on SQLite inside the write transaction, other
chats' answers waiting on its lock). Each statement it runs is explained here: SQLite must
SEARCH (never SCAN) and PostgreSQL, with sequential scans priced out, must still look up a
range of an index (substr allowed none, nor does a collation other than the index's).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, insert, select

from core.db import migrate
from core.db.models import Chat, InboundEvent, Message, UsageRecord
from core.db.store import create_engine
from core.privacy import forget_chat

KEY = "test:C1"
NEIGHBOURS = ("test:C10", "test:C1-x", "test:C1;x", "test:c1:1", "test:C", "test:C2:1")


async def test_forget_with_threads_reads_the_chat_key_indexes_only(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await migrate.upgrade(engine)
        keys = [KEY, f"{KEY}:1", f"{KEY}:2", *NEIGHBOURS]
        rows = list(enumerate(keys * 3))
        async with engine.begin() as conn:
            await conn.execute(insert(Chat), [{"key": k, "platform": "test"} for k in keys])
            await conn.execute(
                insert(Message),
                [
                    {
                        "chat_key": k,
                        "role": "user",
                        "content": "hi",
                        "token_count": 1,
                        "encoding": "x",
                    }
                    for _, k in rows
                ],
            )
            await conn.execute(
                insert(InboundEvent),
                [
                    {"event_key": f"e{n}", "chat_key": k, "sender_id": "u", "status": "done"}
                    for n, k in rows
                ],
            )
            await conn.execute(
                insert(UsageRecord),
                [
                    {"platform": "test", "chat_key": k, "model": "m", "kind": "chat"}
                    for _, k in rows
                ],
            )

        ran: list[tuple[str, Any]] = []

        def record(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
            ran.append((statement, params))

        event.listen(engine.sync_engine, "before_cursor_execute", record)
        try:
            done = await forget_chat(engine, KEY, threads=True)
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", record)
        assert (done.messages, done.events, done.usage_anonymised, done.threads) == (9, 9, 9, 2)
        async with engine.connect() as conn:
            left = set((await conn.execute(select(Message.chat_key))).scalars())
            assert left == set(NEIGHBOURS)

        postgres = engine.dialect.name == "postgresql"
        queries = [
            (s, p) for s, p in ran if s.lstrip().split()[0] in ("SELECT", "DELETE", "UPDATE")
        ]
        assert len(queries) == 5  # the threads' keys, then chats, messages, events, usage
        async with engine.connect() as conn:
            if postgres:
                await conn.exec_driver_sql("SET enable_seqscan = off")
            for statement, params in queries:
                explain = "EXPLAIN (COSTS OFF) " if postgres else "EXPLAIN QUERY PLAN "
                plan = [
                    str(row[-1]) for row in await conn.exec_driver_sql(explain + statement, params)
                ]
                if postgres:
                    # Priced out, a sequential scan gives way to reading a whole index
                    # (a scan with no Index Cond): neither will do.
                    assert not any("Seq Scan" in line for line in plan), (statement, plan)
                    scans = [i for i, line in enumerate(plan) if "Index Scan" in line]
                    assert scans, (statement, plan)
                    assert all("Index Cond" in plan[i + 1] for i in scans), (statement, plan)
                    assert any(">=" in line for line in plan if "Index Cond" in line), plan
                else:
                    assert not any(line.startswith("SCAN") for line in plan), (statement, plan)
                    assert any("key>? AND " in line for line in plan), plan
    finally:
        await engine.dispose()
