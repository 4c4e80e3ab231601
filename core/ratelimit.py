"""Requests per minute per person, counted in the database so every replica shares them.

A true sliding window: a request is let through when fewer than `limit` of the person's
requests were let through in the last 60 seconds, and refused otherwise, with the wait until
the oldest of those leaves the window. Each request let through is one row (subject, the
millisecond it came at; `hits` counts those of the same millisecond). A person never has more
rows than `limit` (plus one lock row, below): a request let through takes over the person's
oldest row once that has left the window, instead of adding one; refused requests are never
written. Rows of people who went quiet are deleted by `purge` (the hourly maintenance).

Replicas share the rows, and one person's requests are decided one at a time: each first
upserts the person's lock row (window -1), which holds a row lock until it commits
(PostgreSQL; SQLite has one writer at a time anyway), then counts and writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import case, delete, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased
from sqlalchemy.sql import Executable

from core.db.models import RateLimitWindow

WINDOW_SECONDS = 60
# The `window` of each person's lock row; the others hold epoch milliseconds.
LOCK_ROW = -1


class RateLimiter:
    """A shared sliding-window limiter; `limit` 0 turns it off."""

    def __init__(
        self,
        engine: AsyncEngine,
        limit: int,
        *,
        window: int = WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._dialect = engine.dialect.name
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    def _upsert(self, subject: str, window: int, hits: object) -> Executable:
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        stmt = insert(RateLimitWindow).values(subject=subject, window=window, hits=1)
        return stmt.on_conflict_do_update(
            index_elements=[RateLimitWindow.subject, RateLimitWindow.window],
            set_={"hits": hits},
        )

    async def hit(self, subject: str) -> float | None:
        """Count one request; None when allowed, else how many seconds to wait (whole, >= 1)."""
        if self.limit <= 0:
            return None
        now = round(self.clock() * 1000)
        # Rows at or before `cutoff` have left the window.
        cutoff = now - self.window * 1000
        row = RateLimitWindow
        async with self._session() as session:
            # Locks this person's requests against each other, on every replica.
            await session.execute(self._upsert(subject, LOCK_ROW, 0))
            inside, rows, oldest, newest = (
                await session.execute(
                    select(
                        func.coalesce(func.sum(case((row.window > cutoff, row.hits), else_=0)), 0),
                        func.count(),
                        func.min(row.window),
                        func.max(row.window),
                    ).where(row.subject == subject, row.window != LOCK_ROW)
                )
            ).one()
            if int(inside) < self.limit:
                await self._admit(session, subject, now, cutoff, int(rows), oldest, newest)
                await session.commit()
                return None
            wait = await self._wait(session, subject, now, cutoff, int(inside))
            await session.commit()
            return wait

    async def _admit(
        self,
        session: AsyncSession,
        subject: str,
        now: int,
        cutoff: int,
        rows: int,
        oldest: int | None,
        newest: int | None,
    ) -> None:
        row = RateLimitWindow
        if newest == now:  # another request this very millisecond
            await session.execute(self._upsert(subject, now, row.hits + 1))
            return
        if rows >= self.limit and oldest is not None and oldest <= cutoff:
            # Take over the oldest row, gone from the window: no more rows than `limit`.
            # (Maintenance may have just deleted it; then a new row is added after all.)
            taken = await session.execute(
                update(row)
                .where(row.subject == subject, row.window == oldest)
                .values(window=now, hits=1)
            )
            if int(getattr(taken, "rowcount", 0) or 0):
                return
        await session.execute(self._upsert(subject, now, row.hits + 1))

    async def _wait(
        self, session: AsyncSession, subject: str, now: int, cutoff: int, inside: int
    ) -> float:
        """Seconds until the request that frees a place leaves the window."""
        row = RateLimitWindow
        must_leave = inside - self.limit + 1
        oldest = (
            await session.execute(
                select(row.window, row.hits)
                .where(row.subject == subject, row.window > cutoff)
                .order_by(row.window)
                .limit(must_leave)
            )
        ).all()
        left = 0
        frees = now
        for window, hits in oldest:
            left += int(hits)
            frees = int(window) + self.window * 1000
            if left >= must_leave:
                break
        return float(max(1, -(-(frees - now) // 1000)))

    async def purge(self) -> int:
        """Delete the rows of requests gone from the window, and the lock rows of people with
        none left; returns how many went."""
        cutoff = round(self.clock() * 1000) - self.window * 1000
        row = RateLimitWindow
        # Two transactions: a request holding its lock row may be waiting for one of the
        # old rows (to take it over); deleting both in one would be a deadlock.
        async with self._session() as session:
            old = await session.execute(
                delete(row).where(row.window != LOCK_ROW, row.window <= cutoff)
            )
            await session.commit()
        other = aliased(RateLimitWindow)
        async with self._session() as session:
            idle = await session.execute(
                delete(row).where(
                    row.window == LOCK_ROW,
                    ~exists().where(other.subject == row.subject, other.window != LOCK_ROW),
                )
            )
            await session.commit()
        return sum(int(getattr(r, "rowcount", 0) or 0) for r in (old, idle))
