"""/budget and /usage naming a person or chat as PLATFORM:ID, however the platform is written.

RELAYBOT_ADMINS and the allow-lists take `Console:you` as console:you; /budget stored it as
typed, so an admin was told "now $0 (no access)" and the person went on being answered.
A platform relaybot does not run on (`telegarm:5`) was stored too, and never applied.
"""

from __future__ import annotations

import io

from sqlalchemy import func, select

from bots.console import run_console
from core.app import Core
from core.db.models import BudgetOverride
from core.testing.fake_openai import FakeOpenAI

UNKNOWN = (
    "! There is no platform telegarm: name people and chats as console:ID, slack:ID or "
    "telegram:ID."
)


async def chat(core: Core, *lines: str, name: str = "default", user: str = "you") -> str:
    out = io.StringIO()
    stdin = io.StringIO("".join(f"{x}\n" for x in lines))
    await run_console(core, chat=name, user=user, stdin=stdin, stdout=out)
    return out.getvalue()


async def stored_budgets(core: Core) -> int:
    async with core.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(BudgetOverride))).one()[0])


async def test_a_budget_naming_the_platform_in_capitals_applies_to_that_person(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    out = await chat(core, "/budget user Console:you day 0", "hello", "/budget")
    assert out.splitlines() == [
        "The daily budget of console:you is now $0 (no access).",
        "! You have no budget for this bot. Ask one of its admins if you need one.",
        "Your daily budget: $0 (no access)",
    ]
    assert not fake_openai.chat_requests()
    # Written either way, it is the same person's budget.
    back = await chat(core, "/budget user CONSOLE:you day default", "hello")
    assert back.splitlines() == [
        "The daily budget of console:you is back to the configured one.",
        "echo: hello",
    ]


async def test_a_chat_budget_naming_the_platform_in_capitals_applies_to_that_chat(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    out = await chat(core, "/budget chat Console:work day 0", name="admin")
    assert out.strip() == "The daily budget of chat console:work is now $0 (no access)."
    refused = await chat(core, "hello", name="work")
    assert refused.strip() == "! This chat has no budget for the bot. Ask one of its admins."
    assert not fake_openai.chat_requests()


async def test_usage_naming_the_platform_in_capitals_shows_that_persons_spend(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    await chat(core, "hello", user="ann")
    lower = await chat(core, "/usage console:ann")
    upper = await chat(core, "/usage Console:ann")
    assert lower.startswith("Usage of console:ann:\n  today")
    assert "(1 request)" in lower
    assert upper == lower


async def test_a_platform_relaybot_does_not_run_on_is_refused_and_nothing_is_stored(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    out = await chat(
        core,
        "/budget user telegarm:5 day 0",
        "/budget chat Telegarm:-100 month 1",
        "/usage telegarm:5",
    )
    assert out.splitlines() == [UNKNOWN, UNKNOWN, UNKNOWN]
    assert await stored_budgets(core) == 0
    # The platforms it does run on are taken, in any case.
    ok = await chat(core, "/budget user Telegram:5 day 1", "/budget user SLACK:U0ADA month 2")
    assert ok.splitlines() == [
        "The daily budget of telegram:5 is now $1.00.",
        "The monthly budget of slack:U0ADA is now $2.00.",
    ]
