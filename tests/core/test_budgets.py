"""Budgets: a request that would go over one is refused before any model call."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import timedelta

import pytest
from sqlalchemy import event, select

from core.accounting import day_start, month_start
from core.app import Core, open_core
from core.config import ModerationPolicy, Settings
from core.db import migrate
from core.db.models import BudgetOverride, UsageRecord, utcnow
from core.db.store import create_engine
from core.pricing import money
from core.privacy import run_maintenance
from core.testing.fake_openai import FakeOpenAI
from core.testing.sink import RecordingSink
from core.types import ChatRef, IncomingMessage, Sender

_ids = itertools.count(1)
# $1 per 1,000 tokens each way: one short exchange costs about a cent.
PRICES = {"gpt-4o-mini": {"input": 1000, "output": 1000}}


def message(text: str, user: str = "u1", chat: str = "c1") -> IncomingMessage:
    return IncomingMessage(
        chat=ChatRef("test", chat),
        sender=Sender(user, user.title()),
        event_key=f"budget:{next(_ids)}",
        text=text,
    )


def budgeted(settings: Settings, **update: object) -> Settings:
    base: dict[str, object] = {
        "prices": json.dumps(PRICES),
        "system_prompt": "Be brief.",
        "reply_tokens": 5,
        "moderation": ModerationPolicy.OFF,
        "admins": "test:boss",
    }
    base.update(update)
    return settings.model_copy(update=base)


async def say(core: Core, text: str, user: str = "u1", chat: str = "c1") -> str:
    sink = RecordingSink()
    await core.service.handle(message(text, user, chat), sink)
    return "\n".join(sink.texts)


async def spent_by(core: Core, user: str) -> float:
    return (await core.service.policy.accounting.for_user("test", user)).today.cost_usd


async def test_a_daily_budget_runs_out_mid_day(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(budgeted(settings, budget_user_daily=0.05)) as core:
        answers = [await say(core, f"question {i}") for i in range(10)]
        refused = [a for a in answers if not a.startswith("echo:")]
        assert refused, answers
        first_refusal = answers.index(refused[0])
        # Everything after the first refusal is refused too, and none reached the model.
        assert all(not a.startswith("echo:") for a in answers[first_refusal:])
        assert len(fake_openai.chat_requests()) == first_refusal
        spent = await spent_by(core, "u1")
    text = refused[0]
    assert text.startswith("Sorry, that would go over your daily budget of $0.05")
    assert f"{money(spent)} spent, {money(0.05 - spent)} left." in text
    assert "It resets at 00:00 UTC (in " in text
    # The estimate kept the spend close to the budget (never a whole request past it).
    assert 0.03 < spent <= 0.05 + 0.02


async def test_budget_zero_means_no_access(settings: Settings, fake_openai: FakeOpenAI) -> None:
    # Free models too: 0 is "no access", not "no limit".
    async with open_core(budgeted(settings, budget_user_daily=0.0, prices="{}")) as core:
        refused = await say(core, "hello")
        free = await say(core, "/help")
    assert refused == "You have no budget for this bot. Ask one of its admins if you need one."
    assert "/usage" in free
    assert not fake_openai.chat_requests()
    assert not fake_openai.calls("/moderations")


async def test_a_chat_budget_stops_everyone_in_that_chat(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(budgeted(settings, budget_chat_monthly=0.015)) as core:
        assert (await say(core, "hi", user="u1", chat="group")).startswith("echo:")
        second = await say(core, "hello", user="u2", chat="group")
        elsewhere = await say(core, "hello", user="u2", chat="dm")
    assert second.startswith("Sorry, that would go over this chat's monthly budget of $0.01")
    assert "It resets on " in second and "-01 at 00:00 UTC" in second
    assert elsewhere.startswith("echo:")


async def test_a_global_budget_stops_the_whole_bot(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(budgeted(settings, budget_global_daily=0.015)) as core:
        assert (await say(core, "hi", user="u1", chat="a")).startswith("echo:")
        refused = await say(core, "hi", user="u2", chat="b")
    assert refused.startswith("Sorry, that would go over the bot's daily budget")


async def test_yesterdays_spend_does_not_count_today(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(budgeted(settings, budget_user_daily=0.05)) as core:
        await core.store.add_usage(
            created_at=utcnow() - timedelta(days=1, minutes=1),
            platform="test",
            chat_key="test:c1",
            user_id="u1",
            model="gpt-4o-mini",
            kind="chat",
            cost_usd=10.0,
        )
        assert (await say(core, "hello")).startswith("echo:")


async def test_an_admin_sets_a_persons_budget(settings: Settings, fake_openai: FakeOpenAI) -> None:
    async with open_core(budgeted(settings, budget_user_daily=5.0)) as core:
        notice = await say(core, "/budget user test:u1 daily 0", user="boss", chat="admin")
        assert notice == "The daily budget of test:u1 is now $0 (no access)."
        assert (await say(core, "hello")).startswith("You have no budget")
        # Other people keep the configured budget.
        assert (await say(core, "hello", user="u2", chat="c2")).startswith("echo:")
        # The override lives in the database, so every replica sees it.
        async with core.store._session() as session:
            row = (await session.execute(select(BudgetOverride))).scalar_one()
        assert (row.scope, row.subject, row.period, row.amount_usd, row.set_by) == (
            "user",
            "test:u1",
            "day",
            0.0,
            "test:boss",
        )
        await say(core, "/budget user test:u1 day off", user="boss", chat="admin")
        assert (await say(core, "hello")).startswith("echo:")
        back = await say(core, "/budget user test:u1 day default", user="boss", chat="admin")
        assert "back to the configured one" in back
        mine = await say(core, "/budget")
    assert mine.startswith("Your daily budget: $0.0")
    assert "of $5.00 spent" in mine


async def test_only_admins_set_budgets(settings: Settings, fake_openai: FakeOpenAI) -> None:
    async with open_core(budgeted(settings, budget_user_daily=0.0)) as core:
        refused = await say(core, "/budget user test:u1 daily off")
        async with core.store._session() as session:
            assert (await session.execute(select(BudgetOverride))).first() is None
        bad = await say(core, "/budget user test:u1 weekly 5", user="boss", chat="admin")
    assert refused == "Sorry, only the bot's admins can do that."
    assert bad.startswith("Usage: /budget")


@pytest.mark.parametrize("command", ["/image a cat", "/retry"])
async def test_paid_commands_are_budgeted_too(
    settings: Settings, fake_openai: FakeOpenAI, command: str
) -> None:
    async with open_core(budgeted(settings, budget_user_monthly=0.0)) as core:
        text = await say(core, command)
    assert text.startswith("You have no budget")
    assert not fake_openai.calls("/images/generations")


async def test_many_messages_at_once_read_the_admin_budgets_once(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """When the cached budgets run out under load, one read serves every waiting message
    (each reading on its own queued them for one SQLite connection: minutes, then errors)."""
    async with open_core(budgeted(settings, budget_user_daily=5.0)) as core:
        budgets = core.service.policy.budgets
        await say(core, "/budget user test:u1 daily 0", user="boss", chat="admin")
        reads = 0

        def count(conn: object, cursor: object, statement: str, *args: object) -> None:
            nonlocal reads
            if statement.lstrip().startswith("SELECT") and "FROM budget_overrides" in statement:
                reads += 1

        event.listen(core.engine.sync_engine, "before_cursor_execute", count)
        budgets.OVERRIDES_TTL = 0.0  # every message finds the cached copy out of date
        answers = await asyncio.gather(
            *(say(core, f"q{i}", user=f"p{i}", chat=f"c{i}") for i in range(40)),
            say(core, "hello", user="u1", chat="cu1"),
        )
    assert all(a.startswith("echo: q") for a in answers[:-1])
    assert answers[-1].startswith("You have no budget")  # the admin's override still holds
    assert 1 <= reads < 10


def _spent_line(answer: str, head: str) -> str:
    """What one line of /budget says was spent ("Your daily budget: $5.00 of ...")."""
    line = next(line for line in answer.splitlines() if line.startswith(head))
    return line.split(": ", 1)[1].split(" of ", 1)[0]


@pytest.mark.empty_database
async def test_an_upgrade_counts_what_was_spent_before_it(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """Budgets read day totals since migration 0010: spend recorded before the upgrade
    still counts, per person, per chat and for the bot, and last month's does not."""
    engine = create_engine(settings.database_url)
    now = utcnow()
    today = day_start(now) + (now - day_start(now)) / 2
    spent = [
        # (user, chat, when, dollars)
        ("u1", "test:c1", today, 3.0),
        ("u1", "test:c2", today, 2.0),
        ("u1", "test:c1", month_start(now) - timedelta(days=9), 50.0),
        ("u2", "test:c1", today, 1.0),
        (None, None, today, 4.0),  # a forgotten chat's
    ]
    try:
        await migrate.upgrade(engine, "0009")
        async with engine.begin() as conn:
            await conn.execute(
                UsageRecord.__table__.insert(),
                [
                    {
                        "created_at": when,
                        "platform": "test",
                        "chat_key": chat,
                        "user_id": user,
                        "model": "gpt-4o-mini",
                        "kind": "chat",
                        "prompt_tokens": 0,
                        "completion_tokens": 0,
                        "cached_tokens": 0,
                        "audio_seconds": 0.0,
                        "images": 0,
                        "cost_usd": dollars,
                    }
                    for user, chat, when, dollars in spent
                ],
            )
    finally:
        await engine.dispose()
    limits = {"budget_user_daily": 100.0, "budget_chat_daily": 100.0}
    async with open_core(budgeted(settings, budget_global_monthly=100.0, **limits)) as core:
        answer = await say(core, "/budget", user="u1", chat="c1")
    assert _spent_line(answer, "Your daily budget") == "$5.00"
    assert _spent_line(answer, "This chat's daily budget") == "$4.00"
    assert _spent_line(answer, "The bot's monthly budget") == "$10.00"


async def test_forgetting_a_chat_leaves_its_spend_in_the_budgets(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """/forget leaves the chat's usage naming nobody, but what it cost still counts toward
    its person's, its chat's and the bot's budgets: forgetting hands out no fresh budget.
    /usage lists the usage rows, which no longer count it for the person."""
    limits = {"budget_user_daily": 100.0, "budget_chat_daily": 100.0, "budget_global_daily": 100.0}
    async with open_core(budgeted(settings, **limits)) as core:
        await say(core, "hello there", user="u1", chat="c1")
        await say(core, "and hello here", user="u1", chat="c2")
        before = await say(core, "/budget", user="u1", chat="c1")
        assert (await say(core, "/forget", user="u1", chat="c1")).startswith("Done.")
        after = await say(core, "/budget", user="u1", chat="c1")
        listed = await spent_by(core, "u1")
        total = (await core.service.policy.accounting.total()).today.cost_usd
    for head in ("Your daily budget", "This chat's daily budget", "The bot's daily budget"):
        assert _spent_line(after, head) == _spent_line(before, head) != "$0.00", head
    assert _spent_line(after, "The bot's daily budget") == money(total)
    assert 0 < listed < _dollars(_spent_line(after, "Your daily budget"))


def _dollars(text: str) -> float:
    return float(text.lstrip("$").replace(",", ""))


async def test_replicas_spending_at_once_lose_no_spend(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """Two replicas answer one person in many chats at once: every cost reaches the day
    totals the budgets read (each is an atomic add on the database, not read-then-write)."""
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("replicas share PostgreSQL; SQLite is one process")
    limits = {"budget_user_daily": 100.0, "budget_global_monthly": 100.0}
    async with (
        open_core(budgeted(settings, **limits)) as one,
        open_core(budgeted(settings, **limits)) as two,
    ):
        answers = await asyncio.gather(
            *(say(core, f"q{i}", chat=f"c{i}") for i in range(30) for core in (one, two))
        )
        assert all(a.startswith("echo:") for a in answers)
        shown = await say(two, "/budget")
        spent = await spent_by(one, "u1")
        total = (await one.service.policy.accounting.total()).month.cost_usd
    assert spent > 0
    assert _spent_line(shown, "Your daily budget") == money(spent)
    assert _spent_line(shown, "The bot's monthly budget") == money(total)


async def test_maintenance_prunes_old_day_totals_and_budgets_still_count_this_month(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """Day totals are kept for this month and the last (budgets read this month's), so the
    table does not grow with the bot's age; the usage rows stay for /usage."""
    now = utcnow()
    start = month_start(now)
    async with open_core(budgeted(settings, budget_user_monthly=100.0)) as core:
        for when, dollars in ((start - timedelta(days=40), 1.0), (start - timedelta(days=1), 2.0)):
            await core.store.add_usage(
                created_at=when,
                platform="test",
                chat_key="test:c1",
                user_id="u1",
                model="gpt-4o-mini",
                kind="chat",
                cost_usd=dollars,
            )
        assert (await say(core, "hello")).startswith("echo:")
        before = await say(core, "/budget")
        purged = await run_maintenance(core.engine, core.settings)
        after = await say(core, "/budget")
        usage = await core.service.policy.accounting.for_user("test", "u1")
    assert purged.spend_days == 3  # the person's, the chat's and the bot's day of 40 days ago
    assert _spent_line(after, "Your monthly budget") == money(usage.month.cost_usd)
    assert _spent_line(after, "Your monthly budget") == _spent_line(before, "Your monthly budget")
    assert usage.all_time.cost_usd > 3.0  # both old requests still in /usage


async def test_the_estimate_prices_the_chats_own_model(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """A chat switched to a dear model is stopped by the estimate before any call; the same
    question at the default model's price goes ahead."""
    prices = json.dumps({**PRICES, "gpt-4o": {"input": 100_000, "output": 100_000}})
    async with open_core(budgeted(settings, prices=prices, budget_chat_daily=0.05)) as core:
        switched = await say(core, "/model gpt-4o", user="boss", chat="c1")
        assert "gpt-4o" in switched
        dear = await say(core, "hello", chat="c1")
        cheap = await say(core, "hello", chat="c2")
    assert dear.startswith("Sorry, that would go over this chat's daily budget of $0.05")
    assert cheap.startswith("echo:")
    assert [r["model"] for r in fake_openai.chat_requests()] == ["gpt-4o-mini"]


async def test_an_image_model_priced_by_tokens_alone_is_budgeted_by_its_output(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """A model the operator priced per token (no per-image table): an image's estimate is
    its output tokens at that price ($40 per 1M: 1,056 tokens, about 4 cents), so a
    budget of one cent refuses /image before the image is made (it was estimated free)."""
    prices = {**PRICES, "my-image": {"input": 5, "output": 40}}
    tight = budgeted(
        settings, prices=json.dumps(prices), image_model="my-image", budget_user_daily=0.01
    )
    async with open_core(tight) as core:
        text = await say(core, "/image a lighthouse")
    assert "daily budget of $0.01" in text
    assert not fake_openai.calls("/images/generations")
