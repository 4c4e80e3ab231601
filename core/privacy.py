"""Privacy: /forget erases a chat, and the retention job deletes old history.

What /forget deletes: the chat's history, its settings (system prompt, model), its finished
inbound events (which hold message payloads) and the /forget event itself. Its usage rows are
kept for the bot's totals but lose the chat key and the user id, so they name nobody. The
budgets' day totals of the chat and of its people stay (a key, a day and an amount, no
content) until `purge_spend_totals` ages them out: what was spent still counts toward this
day's and month's budgets, or /forget would hand out a fresh budget.
Events of the chat that are still waiting to be answered stay until they are answered; an
answer being made while its chat is forgotten is not stored, and its event goes with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    SQLColumnExpression,
    and_,
    delete,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from core.accounting import month_start
from core.config import Settings
from core.db.models import (
    IN_HAND,
    OPEN_STATUSES,
    Chat,
    InboundEvent,
    Message,
    SpendTotal,
    UsageRecord,
    utcnow,
)
from core.db.store import new_revision
from core.ratelimit import RateLimiter

log = logging.getLogger("relaybot.privacy")

MAINTENANCE_INTERVAL = 3600.0
# Rows retention deletes per transaction: the first pass over a long history (retention just
# turned on) lets answers write between batches instead of holding the database for seconds
# (SQLite: its one write lock, past the busy timeout a message waits).
RETENTION_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Forgotten:
    """How many rows /forget deleted or anonymised."""

    messages: int
    events: int
    usage_anonymised: int
    settings: bool
    threads: int = 0  # conversations in the chat's threads forgotten with it


def _count(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def forget_chat(
    engine: AsyncEngine, chat_key: str, event_key: str | None = None, *, threads: bool = False
) -> Forgotten:
    """Erase everything stored about one chat, in one transaction.

    `threads`: the conversations in the chat's threads too (keys `CHAT_KEY:THREAD`, see
    `ChatRef.key`), in the same transaction.
    """
    # The threads' keys are those from 'CHAT_KEY:' up to (not including) 'CHAT_KEY;' (';'
    # follows ':'): a range the key's index serves (substr(key, 1, n) read every row of all
    # four tables, on SQLite holding the write lock meanwhile). Exact under binary ordering:
    # SQLite's; on PostgreSQL the columns' collation "C" (migration 0015), named here as well
    # so that no other collation can ever narrow or widen the range.
    first, after = f"{chat_key}:", f"{chat_key};"
    postgres = engine.dialect.name == "postgresql"

    def of(column: SQLColumnExpression[Any]) -> ColumnElement[bool]:
        """Rows of the chat (and of its threads)."""
        if not threads:
            return column == chat_key
        ordered = column.collate("C") if postgres else column
        return or_(column == chat_key, and_(ordered >= first, ordered < after))

    session_factory = async_sessionmaker(engine, expire_on_commit=False)
    async with session_factory() as session:
        forgotten_threads = 0
        if threads:
            keys = await session.execute(
                union(
                    select(Message.chat_key).where(of(Message.chat_key)),
                    select(Chat.key).where(of(Chat.key)),
                )
            )
            forgotten_threads = len({key for (key,) in keys} - {chat_key})
        # The chats' rows first: an answer being stored in one of them meanwhile holds its
        # row (PostgreSQL), so it is either stored before (and its turn deleted below) or
        # finds the row gone and stores nothing (`Store.append_messages`).
        chats = await session.execute(delete(Chat).where(of(Chat.key)))
        messages = await session.execute(delete(Message).where(of(Message.chat_key)))
        # Events in hand (waiting their turn, or being answered) stay for their worker; a
        # deferred one (a voice note kept for a later attempt) goes with the chat, or the
        # sweep would post its transcript into the history just forgotten.
        finished: ColumnElement[bool] = InboundEvent.status.not_in(IN_HAND)
        if event_key is not None:
            finished = or_(finished, InboundEvent.event_key == event_key)
        events = await session.execute(
            delete(InboundEvent).where(of(InboundEvent.chat_key), finished)
        )
        # The usage rows name nobody from now on; the budgets' day totals are left alone.
        usage = await session.execute(
            update(UsageRecord).where(of(UsageRecord.chat_key)).values(chat_key=None, user_id=None)
        )
        await session.commit()
    return Forgotten(
        _count(messages), _count(events), _count(usage), _count(chats) > 0, forgotten_threads
    )


@dataclass(frozen=True, slots=True)
class Purged:
    """What one retention run deleted."""

    messages: int
    events: int
    rate_windows: int
    spend_days: int


async def purge_expired(
    engine: AsyncEngine, retention_days: int | None, now: datetime | None = None
) -> tuple[int, int]:
    """Delete history and finished inbound events older than `retention_days` (None: keep),
    the oldest RETENTION_BATCH rows per transaction (found through their time's index)."""
    if retention_days is None:
        return 0, 0
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    messages = events = 0
    while True:
        async with engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(Message.id, Message.chat_key)
                    .where(Message.created_at < cutoff)
                    .order_by(Message.created_at)
                    .limit(RETENTION_BATCH)
                )
            ).all()
            if rows:
                # Chats losing rows get a new history revision: their windows held in
                # memory are stale.
                keys = sorted({row.chat_key for row in rows})
                await conn.execute(
                    update(Chat).where(Chat.key.in_(keys)).values(history_rev=new_revision())
                )
                await conn.execute(delete(Message).where(Message.id.in_([r.id for r in rows])))
        messages += len(rows)
        if len(rows) < RETENTION_BATCH:
            break
    while True:
        async with engine.begin() as conn:
            ids = (
                (
                    await conn.execute(
                        select(InboundEvent.id)
                        .where(
                            InboundEvent.received_at < cutoff,
                            InboundEvent.status.not_in(OPEN_STATUSES),
                        )
                        .order_by(InboundEvent.received_at)
                        .limit(RETENTION_BATCH)
                    )
                )
                .scalars()
                .all()
            )
            if ids:
                await conn.execute(delete(InboundEvent).where(InboundEvent.id.in_(ids)))
        events += len(ids)
        if len(ids) < RETENTION_BATCH:
            break
    return messages, events


async def purge_spend_totals(engine: AsyncEngine, now: datetime | None = None) -> int:
    """Delete the budgets' day totals before last month: budgets read this month's only (the
    usage rows they were added from stay, for /usage and the operator)."""
    this_month = month_start(now or utcnow())
    last_month = month_start(this_month - timedelta(days=1)).date()
    async with engine.begin() as conn:
        result = await conn.execute(delete(SpendTotal).where(SpendTotal.day < last_month))
    return _count(result)


async def run_maintenance(engine: AsyncEngine, settings: Settings) -> Purged:
    """One pass of the periodic job: retention, stale rate-limit counters, old day totals."""
    messages, events = await purge_expired(engine, settings.retention_days)
    windows = await RateLimiter(engine, settings.rate_limit_per_minute).purge()
    spend_days = await purge_spend_totals(engine)
    if messages or events:
        log.info(
            "retention removed old rows",
            extra={"messages": messages, "events": events, "days": settings.retention_days},
        )
    return Purged(messages, events, windows, spend_days)


async def maintenance_loop(
    engine: AsyncEngine,
    settings: Settings,
    stop: asyncio.Event,
    interval: float = MAINTENANCE_INTERVAL,
) -> None:
    """Run `run_maintenance` at once, then every `interval` seconds until `stop` is set."""
    while True:
        try:
            await run_maintenance(engine, settings)
        except Exception:
            log.exception("maintenance run failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
        if stop.is_set():
            return
