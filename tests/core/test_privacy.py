"""Privacy: /forget leaves nothing behind, old history expires, logs hold no content."""

from __future__ import annotations

import asyncio
import itertools
import logging
from datetime import timedelta

import pytest
from sqlalchemy import inspect, select, text, update

from core import privacy
from core.app import Core, open_core
from core.config import Settings
from core.db.models import Message, SpendTotal, UsageRecord, utcnow
from core.privacy import maintenance_loop, run_maintenance
from core.testing.fake_openai import FakeOpenAI
from core.testing.sink import RecordingSink
from core.types import ChatRef, IncomingMessage, Sender

_ids = itertools.count(1)
SECRET = "my passport number is ZX9931"


def message(text: str, user: str = "alice77", chat: str = "chat-of-alice") -> IncomingMessage:
    return IncomingMessage(
        chat=ChatRef("test", chat),
        sender=Sender(user, "Alice Liddell" if user == "alice77" else user.title()),
        event_key=f"privacy:{next(_ids)}",
        text=text,
    )


async def every_row(core: Core) -> dict[str, list[str]]:
    """Every row of every table, as text, to search for traces."""
    async with core.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
        found: dict[str, list[str]] = {}
        for table in tables:
            rows = (await conn.execute(text(f'SELECT * FROM "{table}"'))).all()
            found[table] = [" | ".join(str(v) for v in row) for row in rows]
    return found


async def test_forget_leaves_nothing_behind(core: Core, fake_openai: FakeOpenAI) -> None:
    await core.service.handle(message(SECRET), RecordingSink())
    await core.service.handle(message("/system You are Alice's diary."), RecordingSink())
    await core.service.handle(message("/model gpt-4o"), RecordingSink())
    await core.service.handle(message("FLAGME and more"), RecordingSink())
    await core.service.handle(message("hello", user="bob", chat="chat-of-bob"), RecordingSink())
    before = await every_row(core)
    assert any("chat-of-alice" in row for row in before["messages"])
    sink = RecordingSink()
    await core.service.handle(message("/forget"), sink)
    assert sink.texts[0].startswith("Done. I deleted everything stored about this chat")
    after = await every_row(core)
    for table, rows in after.items():
        for row in rows:
            for trace in ("chat-of-alice", "alice77", "ZX9931", "Alice", "diary"):
                if table == "spend_totals" and trace in ("chat-of-alice", "alice77"):
                    continue  # the budgets' day totals: a key, a day and an amount stay
                assert trace not in row, (table, row)
    # What the chat cost still counts toward its person's and its chat's budgets.
    async with core.store._session() as session:
        kept = (await session.execute(select(SpendTotal.scope, SpendTotal.subject))).all()
    assert {("user", "test:alice77"), ("chat", "test:chat-of-alice")} <= set(kept)
    # Usage survives as anonymous totals; the other chat is untouched.
    async with core.store._session() as session:
        usage = (await session.execute(select(UsageRecord))).scalars().all()
    anonymous = [u for u in usage if u.chat_key is None]
    assert anonymous and all(u.user_id is None and u.cost_usd >= 0 for u in anonymous)
    assert any(u.chat_key == "test:chat-of-bob" for u in usage)
    assert await core.store.count_messages("test:chat-of-bob") == 2
    # The conversation starts over with the default settings.
    await core.service.handle(message("who am I?"), RecordingSink())
    last = fake_openai.chat_requests()[-1]
    assert last["model"] == core.settings.chat_model
    assert [m["content"] for m in last["messages"][1:]] == ["who am I?"]


async def test_history_older_than_the_retention_period_is_deleted(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    kept = settings.model_copy(update={"retention_days": 30})
    async with open_core(kept) as core:
        await core.service.handle(message("an old message"), RecordingSink())
        await core.service.handle(message("a new message"), RecordingSink())
        async with core.store._session() as session:
            await session.execute(
                update(Message)
                .where(Message.content.in_(["an old message", "echo: an old message"]))
                .values(created_at=utcnow() - timedelta(days=31))
            )
            await session.commit()
        purged = await run_maintenance(core.engine, kept)
        async with core.store._session() as session:
            left = (await session.execute(select(Message.content))).scalars().all()
    assert purged.messages == 2
    assert sorted(left) == ["a new message", "echo: a new message"]


async def test_without_retention_nothing_expires(core: Core, fake_openai: FakeOpenAI) -> None:
    await core.service.handle(message("keep me"), RecordingSink())
    async with core.store._session() as session:
        await session.execute(update(Message).values(created_at=utcnow() - timedelta(days=3650)))
        await session.commit()
    assert (await run_maintenance(core.engine, core.settings)).messages == 0
    assert await core.store.count_messages("test:chat-of-alice") == 2


async def test_no_content_is_logged_at_info(
    core: Core, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        await core.service.handle(message(SECRET), RecordingSink())
        await core.service.handle(message("/system secret persona ZX9931"), RecordingSink())
        await core.service.handle(message("/forget"), RecordingSink())
    assert caplog.records
    for record in caplog.records:
        shown = record.getMessage() + " " + " ".join(str(v) for v in vars(record).values())
        assert "ZX9931" not in shown, record


async def test_the_retention_job_runs_once_at_start(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    kept = settings.model_copy(update={"retention_days": 1})
    async with open_core(kept) as core:
        await core.service.handle(message("old"), RecordingSink())
        async with core.store._session() as session:
            await session.execute(update(Message).values(created_at=utcnow() - timedelta(days=2)))
            await session.commit()
        stop = asyncio.Event()
        stop.set()  # a runner shutting down right away still gets the first pass
        await asyncio.wait_for(maintenance_loop(core.engine, kept, stop, interval=3600), 10)
        assert await core.store.count_messages("test:chat-of-alice") == 0


async def test_retention_deletes_a_long_history_in_batches_and_the_chat_goes_on_without_it(
    settings: Settings, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More expired rows than one batch (retention turned on for a long history): every
    one goes, the newer ones stay, and the chat's next request no longer carries them."""
    monkeypatch.setattr(privacy, "RETENTION_BATCH", 3)
    kept = settings.model_copy(update={"retention_days": 30})
    async with open_core(kept) as core:
        for n in range(4):
            await core.service.handle(message(f"old question {n}"), RecordingSink())
        async with core.store._session() as session:
            await session.execute(update(Message).values(created_at=utcnow() - timedelta(days=31)))
            await session.commit()
        await core.service.handle(message("a new question"), RecordingSink())
        purged = await run_maintenance(core.engine, kept)
        assert purged.messages == 8
        await core.service.handle(message("and another"), RecordingSink())
        last = fake_openai.chat_requests()[-1]
    assert [m["content"] for m in last["messages"][1:]] == [
        "a new question",
        "echo: a new question",
        "and another",
    ]
