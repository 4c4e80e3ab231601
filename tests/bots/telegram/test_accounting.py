"""Usage, budgets and privacy as a Telegram user meets them."""

from __future__ import annotations

import pytest

from tests.bots.telegram.conftest import PRIVATE_CHAT, Bot


async def test_usage_shows_what_the_person_spent(bot: Bot) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "how far is the moon?"))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/usage"))

    report = tg.texts(PRIVATE_CHAT)[-1]
    assert report.startswith("Your usage:")
    assert "today" in report and "this month" in report and "all time" in report


@pytest.mark.telegram_settings(budget_user_daily=0.0)
async def test_a_user_with_no_budget_gets_one_polite_line_and_no_model_call(bot: Bot) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "hello?"))

    (line,) = tg.texts(PRIVATE_CHAT)
    assert "budget" in line.lower()
    assert bot.openai.chat_requests() == []
    assert bot.openai.calls("/moderations") == []


async def test_forget_deletes_the_chat_history(bot: Bot) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "my secret is swordfish"))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/forget"))

    assert tg.texts(PRIVATE_CHAT)[-1].startswith("Done. I deleted everything")
    assert await bot.stored(f"telegram:{PRIVATE_CHAT}") == []
