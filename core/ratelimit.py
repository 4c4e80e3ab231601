"""Requests per minute per person, counted in the database so every replica shares them.

Each request adds one to its subject's counter for the current minute with one atomic upsert
(INSERT ... ON CONFLICT DO UPDATE ... RETURNING, on SQLite and PostgreSQL alike). The rate is
the sliding-window estimate: this minute's count plus the previous minute's count weighted by
how much of it still lies within the last 60 seconds, so a burst across a minute boundary is
caught too. A refused request is taken back out of the counter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from core.db.models import RateLimitWindow

WINDOW_SECONDS = 60


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

    async def hit(self, subject: str) -> float | None:
        """Count one request; None when allowed, else roughly how many seconds to wait."""
        if self.limit <= 0:
            return None
        now = self.clock()
        current = int(now // self.window)
        elapsed = now - current * self.window
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        stmt = insert(RateLimitWindow).values(subject=subject, window=current, hits=1)
        upsert = stmt.on_conflict_do_update(
            index_elements=[RateLimitWindow.subject, RateLimitWindow.window],
            set_={"hits": RateLimitWindow.hits + 1},
        ).returning(RateLimitWindow.hits)
        async with self._session() as session:
            hits = int((await session.execute(upsert)).scalar_one())
            previous = (
                await session.execute(
                    select(RateLimitWindow.hits).where(
                        RateLimitWindow.subject == subject, RateLimitWindow.window == current - 1
                    )
                )
            ).scalar()
            await session.commit()
        before = int(previous or 0)
        weight = 1.0 - elapsed / self.window
        if before * weight + hits <= self.limit:
            return None
        async with self._session() as session:
            await session.execute(
                update(RateLimitWindow)
                .where(RateLimitWindow.subject == subject, RateLimitWindow.window == current)
                .values(hits=RateLimitWindow.hits - 1)
            )
            await session.commit()
        return self._wait(before, hits - 1, elapsed)

    def _wait(self, before: int, hits: int, elapsed: float) -> float:
        """Seconds until one more request fits, if nothing else arrives meanwhile."""
        room = self.limit - 1
        if hits <= room and before > 0:
            # before * (1 - t / window) + hits <= room, for t within this window
            t = self.window * (1 - (room - hits) / before)
            return max(1.0, math.ceil(t - elapsed))
        # This minute alone is full: wait for it to become the previous one and fade.
        t = self.window * (1 - room / hits) if hits else 0.0
        return max(1.0, math.ceil(self.window - elapsed + t))

    async def purge(self) -> int:
        """Delete counters too old to matter; returns how many went."""
        oldest = int(self.clock() // self.window) - 1
        async with self._session() as session:
            result = await session.execute(
                delete(RateLimitWindow).where(RateLimitWindow.window < oldest)
            )
            await session.commit()
            return int(getattr(result, "rowcount", 0) or 0)
