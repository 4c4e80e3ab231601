"""A basic group upgraded to a supergroup while the bot is answering in it: the exchange
being answered moves with the group once it is stored, so the supergroup's conversation
keeps it, and the model is asked once, with the question."""

from __future__ import annotations

import asyncio

from core.testing.fake_openai import message_text
from tests.bots.telegram.conftest import ADA, Bot

OLD, NEW = -4001, -1004001


async def test_a_group_upgraded_while_the_model_thinks_keeps_the_exchange(bot: Bot) -> None:
    tg = bot.telegram
    tg.chat_admins[OLD] = {ADA}
    bot.openai.think_seconds = 1.5
    question = "@relay_test_bot the treasure is on Skull Island"
    await tg.push_update(tg.text_update(OLD, question, chat_type="group"))
    for _ in range(250):
        if bot.openai.chat_requests():
            break
        await asyncio.sleep(0.02)
    assert bot.openai.chat_requests()
    # Telegram upgrades the group as its answer is being made: a service message in each.
    tg.migrate(OLD, NEW)
    await bot.deliver(tg.update(tg.message(OLD, chat_type="group", migrate_to_chat_id=NEW)))
    await bot.deliver(tg.update(tg.message(NEW, migrate_from_chat_id=OLD)))
    await bot.adapter.idle()
    # The move follows the answer's store.
    for _ in range(250):
        if await bot.core.store.count_messages(f"telegram:{NEW}") >= 2:
            break
        await asyncio.sleep(0.02)
    bot.openai.think_seconds = 0

    await bot.deliver(tg.text_update(NEW, "@relay_test_bot where is the treasure?"))

    requests = bot.openai.chat_requests()
    assert len(requests) == 2
    assert [message_text(m["content"]) for m in requests[-1]["messages"][1:]] == [
        "the treasure is on Skull Island",
        "echo: the treasure is on Skull Island",
        "where is the treasure?",
    ]
    assert tg.texts(NEW) == [
        "echo: the treasure is on Skull Island",
        "echo: where is the treasure?",
    ]
