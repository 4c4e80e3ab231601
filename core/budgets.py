"""Spending caps in dollars per person, per chat and for the whole bot, per day or month (UTC).

A configured budget (RELAYBOT_BUDGET_*) applies to every person or chat; an admin can replace
it for one person, one chat or the bot with /budget, stored in the database. A budget of 0
means no access; no budget means no limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.access import names_chat
from core.accounting import day_start, month_start, next_day, next_month, spend_subjects
from core.config import Settings
from core.db.models import BudgetOverride, utcnow
from core.db.store import Store
from core.errors import RelaybotError
from core.pricing import money
from core.types import IncomingMessage

SCOPES = ("user", "chat", "global")
PERIODS = ("day", "month")
PERIOD_WORDS = {"day": "daily", "month": "monthly"}
_WHOSE = {"user": "your", "chat": "this chat's", "global": "the bot's"}


class BudgetExceeded(RelaybotError):
    """A request would pass a budget; refused before any model call."""

    user_message = "This request would go over budget."


@dataclass(frozen=True, slots=True)
class Limit:
    """One budget that applies to a request."""

    scope: str
    period: str
    amount: float
    source: str  # "config" or "admin"


@dataclass(frozen=True, slots=True)
class Standing:
    """A limit with what was spent against it so far."""

    limit: Limit
    spent: float
    resets_at: datetime

    @property
    def left(self) -> float:
        """What may still be spent (never negative)."""
        return max(0.0, self.limit.amount - self.spent)


def until(moment: datetime, now: datetime) -> str:
    """ "in 5 h 12 min" style."""
    minutes = max(1, int((moment - now).total_seconds() // 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"in {days} d {hours} h"
    if hours:
        return f"in {hours} h {mins} min"
    return f"in {mins} min"


def when(moment: datetime, now: datetime) -> str:
    """When a budget resets, for people."""
    if moment - now <= (next_day(now) - now):
        return f"at 00:00 UTC ({until(moment, now)})"
    return f"on {moment:%Y-%m-%d} at 00:00 UTC ({until(moment, now)})"


def refusal(standing: Standing, now: datetime) -> str:
    """The one line a person sees when a budget stops them."""
    limit = standing.limit
    whose = _WHOSE[limit.scope]
    word = PERIOD_WORDS[limit.period]
    if limit.amount == 0:
        if limit.scope == "user":
            return "You have no budget for this bot. Ask one of its admins if you need one."
        if limit.scope == "chat":
            return "This chat has no budget for the bot. Ask one of its admins."
        return "The bot has no budget to answer right now. Its admins have been told."
    return (
        f"Sorry, that would go over {whose} {word} budget of {money(limit.amount)}: "
        f"{money(standing.spent)} spent, {money(standing.left)} left. "
        f"It resets {when(standing.resets_at, now)}."
    )


def describe(standing: Standing, now: datetime) -> str:
    """One line of /budget."""
    limit = standing.limit
    head = f"{_WHOSE[limit.scope]} {PERIOD_WORDS[limit.period]} budget".capitalize()
    if limit.amount == 0:
        return f"{head}: $0 (no access)"
    return (
        f"{head}: {money(standing.spent)} of {money(limit.amount)} spent, "
        f"{money(standing.left)} left; resets {when(standing.resets_at, now)}"
    )


_Overrides = dict[tuple[str, str, str], float | None]


class Budgets:
    """Looks up the budgets of a request and what was spent against them."""

    # Admins' budgets change rarely and are read on every message: each process keeps the
    # (small) table for a few seconds; its own changes take effect at once, other replicas'
    # within this many seconds.
    OVERRIDES_TTL = 5.0

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self._engine = store.engine
        self._store = store
        self._session = async_sessionmaker(store.engine, expire_on_commit=False)
        self._overrides: tuple[float, _Overrides] | None = None
        # The one read of the table in progress: when the cached copy runs out under load,
        # thousands of messages would each have read it (queueing for a connection, up to
        # the pool's timeout); they all wait for this one instead.
        self._reading: asyncio.Task[_Overrides] | None = None
        self._generation = 0  # moved by this process's own changes: a read begun before
        # one of them is not kept

    async def _all_overrides(self) -> _Overrides:
        """Every admin budget by (scope, subject, period), cached for OVERRIDES_TTL."""
        if self._overrides is not None:
            read_at, rows = self._overrides
            if time.monotonic() - read_at < self.OVERRIDES_TTL:
                return rows
        if self._reading is None:
            self._reading = asyncio.create_task(self._read_overrides(self._generation))
            self._reading.add_done_callback(self._read_done)
        # A waiter cancelled (its message dropped at shutdown) does not cancel the others'.
        return await asyncio.shield(self._reading)

    async def _read_overrides(self, generation: int) -> _Overrides:
        read_at = time.monotonic()
        query = select(
            BudgetOverride.scope,
            BudgetOverride.subject,
            BudgetOverride.period,
            BudgetOverride.amount_usd,
        )
        async with self._engine.connect() as conn:
            rows = {(r[0], r[1], r[2]): r[3] for r in await conn.execute(query)}
        if generation == self._generation:
            self._overrides = (read_at, rows)
        return rows

    def _read_done(self, task: asyncio.Task[_Overrides]) -> None:
        if self._reading is task:
            self._reading = None
        if not task.cancelled():
            task.exception()  # every waiter was told; not an unretrieved error

    def _changed(self) -> None:
        """This process changed the table: the next message reads it again."""
        self._generation += 1
        self._overrides = None
        self._reading = None

    def _configured(self, scope: str, period: str) -> float | None:
        value: float | None = getattr(self.settings, f"budget_{scope}_{PERIOD_WORDS[period]}")
        return value

    @staticmethod
    def _subjects(msg: IncomingMessage) -> dict[str, str]:
        # A chat budget is the channel's or group's, whichever of its threads or topics
        # the message is in.
        chat = msg.chat.parent_key or msg.chat.key
        return dict(spend_subjects(msg.chat.platform, msg.sender.id, chat))

    async def limits(self, msg: IncomingMessage) -> list[Limit]:
        """Every budget that applies to this message's sender and chat."""
        subjects = self._subjects(msg)
        every = await self._all_overrides()
        overrides = {
            (scope, period): amount
            for (scope, subject, period), amount in every.items()
            if subjects.get(scope) == subject
        }
        # A chat named by its own id where the platform qualifies it by its workspace
        # ("slack:C0123" for "slack:T0123:C0123"), as RELAYBOT_ALLOWED_CHATS takes it; the
        # chat's full key wins over it.
        chat_id = msg.chat.chat_id
        for (scope, subject, period), amount in every.items():
            platform, _, short = subject.partition(":")
            if (
                scope == "chat"
                and ("chat", period) not in overrides
                and platform == msg.chat.platform
                and short != chat_id
                and names_chat(platform, short, chat_id)
            ):
                overrides[("chat", period)] = amount
        found: list[Limit] = []
        for scope in SCOPES:
            for period in PERIODS:
                if (scope, period) in overrides:
                    amount = overrides[(scope, period)]
                    if amount is not None:
                        found.append(Limit(scope, period, amount, "admin"))
                    continue
                configured = self._configured(scope, period)
                if configured is not None:
                    found.append(Limit(scope, period, configured, "config"))
        return found

    async def _spent(
        self, scopes: set[str], msg: IncomingMessage, now: datetime
    ) -> dict[str, tuple[float, float]]:
        """(today, this month) spent by each scope's subject."""
        subjects = self._subjects(msg)
        return await self._store.spent(
            {scope: subjects[scope] for scope in scopes},
            day_start(now).date(),
            month_start(now).date(),
        )

    async def standings(self, msg: IncomingMessage, now: datetime | None = None) -> list[Standing]:
        """Each applicable budget with what was spent against it."""
        now = now or utcnow()
        limits = await self.limits(msg)
        if not limits:
            return []
        spent = await self._spent({limit.scope for limit in limits}, msg, now)
        result: list[Standing] = []
        for limit in limits:
            day, month = spent[limit.scope]
            if limit.period == "day":
                result.append(Standing(limit, day, next_day(now)))
            else:
                result.append(Standing(limit, month, next_month(now)))
        return result

    async def check(
        self,
        msg: IncomingMessage,
        estimate: float | Callable[[], Awaitable[float]],
        now: datetime | None = None,
    ) -> None:
        """Raise BudgetExceeded when spending `estimate` more would pass any budget.

        `estimate` may be a coroutine function: it is only called when a budget applies.
        """
        now = now or utcnow()
        standings = await self.standings(msg, now)
        if not standings:
            return
        if not isinstance(estimate, float | int):
            estimate = await estimate()
        blocked = [
            s for s in standings if s.limit.amount == 0 or s.spent + estimate > s.limit.amount
        ]
        if not blocked:
            return
        # Name the budget that holds the person back longest; "no access" beats everything.
        worst = max(blocked, key=lambda s: (s.limit.amount == 0, s.resets_at))
        raise BudgetExceeded(
            f"{worst.limit.scope} {worst.limit.period} budget",
            user_message=refusal(worst, now),
        )

    async def set_override(
        self, scope: str, subject: str, period: str, amount: float | None, set_by: str
    ) -> None:
        """Store an admin's budget (None: no limit) for one subject."""
        try:
            async with self._session() as session:
                row = await session.get(BudgetOverride, (scope, subject, period))
                if row is None:
                    row = BudgetOverride(scope=scope, subject=subject, period=period)
                    session.add(row)
                row.amount_usd = amount
                row.set_by = set_by
                row.updated_at = utcnow()
                await session.commit()
        finally:
            self._changed()

    async def clear_override(self, scope: str, subject: str, period: str) -> bool:
        """Go back to the configured budget; False when there was no override."""
        try:
            async with self._session() as session:
                result = await session.execute(
                    delete(BudgetOverride).where(
                        BudgetOverride.scope == scope,
                        BudgetOverride.subject == subject,
                        BudgetOverride.period == period,
                    )
                )
                await session.commit()
                return bool(getattr(result, "rowcount", 0))
        finally:
            self._changed()
