"""Usage queries: spend per person, chat and in total, today, this month and all time (UTC)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from core.db.models import UsageRecord, utcnow
from core.pricing import money
from core.types import ChatRef

FORGOTTEN = "(forgotten)"


def day_start(now: datetime) -> datetime:
    """Midnight UTC starting `now`'s day."""
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: datetime) -> datetime:
    """Midnight UTC on the first of `now`'s month."""
    return day_start(now).replace(day=1)


def next_day(now: datetime) -> datetime:
    """When today's budgets reset."""
    return day_start(now) + timedelta(days=1)


def next_month(now: datetime) -> datetime:
    """When this month's budgets reset."""
    start = month_start(now)
    return (start + timedelta(days=32)).replace(day=1)


@dataclass(frozen=True, slots=True)
class Spend:
    """Cost and request count of one period."""

    cost_usd: float = 0.0
    requests: int = 0


@dataclass(frozen=True, slots=True)
class Summary:
    """Spend of one subject (a person, a chat, everything) today, this month and all time."""

    today: Spend
    month: Spend
    all_time: Spend
    prompt_tokens: int = 0
    completion_tokens: int = 0
    audio_seconds: float = 0.0
    images: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Row:
    """One line of a breakdown: who (a person "platform:id" or a chat key) and their summary."""

    who: str
    summary: Summary


def _columns(now: datetime) -> list[ColumnElement[Any]]:
    today, month = day_start(now), month_start(now)
    cost = UsageRecord.cost_usd

    def since(start: datetime, value: Any, zero: Any) -> ColumnElement[Any]:
        return func.coalesce(
            func.sum(case((UsageRecord.created_at >= start, value), else_=zero)), 0
        )

    return [
        since(today, cost, 0.0),
        since(today, 1, 0),
        since(month, cost, 0.0),
        since(month, 1, 0),
        func.coalesce(func.sum(cost), 0.0),
        func.count(UsageRecord.id),
        func.coalesce(func.sum(UsageRecord.prompt_tokens), 0),
        func.coalesce(func.sum(UsageRecord.completion_tokens), 0),
        func.coalesce(func.sum(UsageRecord.audio_seconds), 0.0),
        func.coalesce(func.sum(UsageRecord.images), 0),
    ]


def _summary(values: Any) -> Summary:
    v = list(values)
    return Summary(
        today=Spend(float(v[0]), int(v[1])),
        month=Spend(float(v[2]), int(v[3])),
        all_time=Spend(float(v[4]), int(v[5])),
        prompt_tokens=int(v[6]),
        completion_tokens=int(v[7]),
        audio_seconds=float(v[8]),
        images=int(v[9]),
    )


def user_key(platform: str, user_id: str) -> str:
    """How people are named in config, commands and reports: "platform:user_id"."""
    return f"{platform}:{user_id}"


def budget_chat(chat_key: str) -> str:
    """The chat a chat budget counts for: the channel or group itself when `chat_key` is
    one of its threads or topics, else `chat_key`."""
    return ChatRef.parent_of(chat_key) or chat_key


def spend_subjects(
    platform: str, user_id: str | None, chat_key: str | None
) -> list[tuple[str, str]]:
    """Whose budgets a request's cost counts against, as (scope, subject): the person's,
    the chat's (a channel's or group's, for all its threads: `budget_chat`) and the bot's
    (a forgotten chat's usage has no person or chat)."""
    subjects: list[tuple[str, str]] = []
    if user_id is not None:
        subjects.append(("user", user_key(platform, user_id)))
    if chat_key is not None:
        subjects.append(("chat", budget_chat(chat_key)))
    subjects.append(("global", ""))
    return subjects


def spend_day(created_at: datetime) -> date:
    """The UTC day a usage row counts for (SQLite gives stored UTC times back naive)."""
    if created_at.tzinfo is not None:
        created_at = created_at.astimezone(UTC)
    return created_at.date()


class Accounting:
    """Read-only queries over the usage table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    async def _one(self, *where: ColumnElement[bool], now: datetime | None) -> Summary:
        query = select(*_columns(now or utcnow())).where(*where)
        async with self._session() as session:
            return _summary((await session.execute(query)).one())

    async def for_user(self, platform: str, user_id: str, now: datetime | None = None) -> Summary:
        """One person's spend (across all their chats on that platform)."""
        return await self._one(
            UsageRecord.platform == platform, UsageRecord.user_id == user_id, now=now
        )

    async def for_chat(self, chat_key: str, now: datetime | None = None) -> Summary:
        """One chat's spend (everyone in it)."""
        return await self._one(UsageRecord.chat_key == chat_key, now=now)

    async def total(self, now: datetime | None = None) -> Summary:
        """Everything the bot spent (forgotten chats included, anonymously)."""
        return await self._one(now=now)

    async def by_user(self, now: datetime | None = None, limit: int | None = None) -> list[Row]:
        """Spend per person, dearest (all time) first."""
        query = (
            select(UsageRecord.platform, UsageRecord.user_id, *_columns(now or utcnow()))
            .group_by(UsageRecord.platform, UsageRecord.user_id)
            .order_by(func.sum(UsageRecord.cost_usd).desc(), UsageRecord.platform)
        )
        if limit is not None:
            query = query.limit(limit)
        async with self._session() as session:
            rows = (await session.execute(query)).all()
        return [
            Row(user_key(r[0], r[1]) if r[1] is not None else FORGOTTEN, _summary(r[2:]))
            for r in rows
        ]

    async def by_chat(self, now: datetime | None = None, limit: int | None = None) -> list[Row]:
        """Spend per chat, dearest (all time) first."""
        query = (
            select(UsageRecord.chat_key, *_columns(now or utcnow()))
            .group_by(UsageRecord.chat_key)
            .order_by(func.sum(UsageRecord.cost_usd).desc(), UsageRecord.chat_key)
        )
        if limit is not None:
            query = query.limit(limit)
        async with self._session() as session:
            rows = (await session.execute(query)).all()
        return [Row(r[0] if r[0] is not None else FORGOTTEN, _summary(r[1:])) for r in rows]

    async def report(self, now: datetime | None = None) -> dict[str, Any]:
        """Everything `relaybot usage --json` prints."""
        now = now or utcnow()
        return {
            "generated_at": now.isoformat(),
            "currency": "USD",
            "periods": {
                "today_since": day_start(now).isoformat(),
                "month_since": month_start(now).isoformat(),
            },
            "total": (await self.total(now)).as_dict(),
            "users": [{"user": r.who, **r.summary.as_dict()} for r in await self.by_user(now)],
            "chats": [{"chat": r.who, **r.summary.as_dict()} for r in await self.by_chat(now)],
        }


def render_table(report: dict[str, Any]) -> str:
    """`relaybot usage` as a plain-text table: people, then chats, then the total."""
    total = {"who": "TOTAL", **report["total"]}
    names = [str(r["user"]) for r in report["users"]] + [str(r["chat"]) for r in report["chats"]]
    width = max([5, *(len(n) for n in names)])

    def block(title: str, key: str, rows: list[dict[str, Any]]) -> list[str]:
        head = (
            f"{title:<{width}}  {'today':>11}  {'this month':>11}  {'all time':>11}"
            f"  {'requests':>8}  {'tokens in':>10}  {'tokens out':>10}"
        )
        lines = [head, "-" * len(head)]
        for r in rows:
            lines.append(
                f"{r[key]!s:<{width}}  {money(r['today']['cost_usd']):>11}"
                f"  {money(r['month']['cost_usd']):>11}  {money(r['all_time']['cost_usd']):>11}"
                f"  {r['all_time']['requests']:>8}  {r['prompt_tokens']:>10}"
                f"  {r['completion_tokens']:>10}"
            )
        if not rows:
            lines.append("(no usage yet)")
        return lines

    parts = [
        *block("user", "user", report["users"]),
        "",
        *block("chat", "chat", report["chats"]),
        "",
        *block("", "who", [total])[2:],
        "",
        f"Costs in USD; today and this month in UTC (since {report['periods']['today_since']}"
        f" and {report['periods']['month_since']}).",
    ]
    return "\n".join(parts)
