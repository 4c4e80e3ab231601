"""Commands are registered with Telegram and work in private chats."""

from __future__ import annotations

from core.commands import COMMANDS
from tests.bots.telegram.conftest import PRIVATE_CHAT, Bot


async def test_commands_are_registered_with_telegram(bot: Bot) -> None:
    names = {c["command"] for c in bot.telegram.commands}
    assert names == {"start", *COMMANDS}
    assert {"help", "reset", "system", "model", "image", "edit", "translate", "retry"} <= names


async def test_start_greets_and_reset_forgets(bot: Bot) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/start"))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "remember kiwi"))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/reset"))

    texts = tg.texts(PRIVATE_CHAT)
    assert texts[0].startswith("I'm relaybot")
    assert texts[-1] == "History cleared. Let's start over."
    assert await bot.stored(f"telegram:{PRIVATE_CHAT}") == []


async def test_retry_regenerates_the_last_answer(bot: Bot) -> None:
    tg = bot.telegram
    bot.openai.queue_reply("first try")
    bot.openai.queue_reply("second try")
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "tell me something"))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/retry"))

    assert tg.texts(PRIVATE_CHAT) == ["first try", "second try"]
