"""A forwarded message is someone else's words: the model reads them quoted, under who
wrote them, and a forwarded command is not carried out."""

from __future__ import annotations

import time
from typing import Any

from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot


def forwarded(bot: Bot, text: str, origin: dict[str, Any]) -> dict[str, Any]:
    message = bot.telegram.message(PRIVATE_CHAT, text=text, forward_origin=origin)
    return bot.telegram.update(message)


def last_user_turn(bot: Bot) -> Any:
    return bot.openai.chat_requests()[-1]["messages"][-1]["content"]


async def test_a_forwarded_message_is_quoted_under_who_wrote_it(bot: Bot) -> None:
    origin = {
        "type": "user",
        "date": int(time.time()) - 60,
        "sender_user": bot.telegram.user(2002, "Bea", "bea"),
    }
    await bot.deliver(forwarded(bot, "Meeting moved to 3pm.\nBring the slides.", origin))

    assert last_user_turn(bot) == (
        "Forwarded from Bea:\n> Meeting moved to 3pm.\n> Bring the slides."
    )
    assert len(bot.telegram.chat_log(PRIVATE_CHAT)) == 1


async def test_a_forwarded_command_is_read_not_carried_out(bot: Bot) -> None:
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "Remember: my name is Ada"))
    origin = {
        "type": "channel",
        "date": int(time.time()) - 60,
        "chat": {"id": -1009998887776, "type": "channel", "title": "Ops news"},
        "message_id": 7,
    }
    await bot.deliver(forwarded(bot, "/reset", origin))

    messages = bot.openai.chat_requests()[-1]["messages"]
    assert messages[-1]["content"] == "Forwarded from Ops news:\n> /reset"
    # Nothing was reset: the earlier turn is still sent.
    assert any(m["content"] == "Remember: my name is Ada" for m in messages)


BEA = {"id": 2002, "is_bot": False, "first_name": "Bea", "username": "bea"}


async def test_a_forward_that_mentions_the_bot_is_not_answered_in_a_group(bot: Bot) -> None:
    # The forwarder shows the group what someone wrote; the "@" in it asks the bot nothing.
    tg = bot.telegram
    origin = {"type": "user", "date": int(time.time()) - 60, "sender_user": BEA}
    text = "Try @relay_test_bot, it summarises long threads for us"
    message = tg.message(GROUP, text=text, forward_origin=origin, entities=tg.auto_entities(text))

    await bot.deliver(tg.update(message))

    assert tg.texts(GROUP) == []
    assert bot.openai.chat_requests() == []


async def test_a_forwarded_mention_of_the_bot_is_quoted_as_written(bot: Bot) -> None:
    tg = bot.telegram
    origin = {"type": "user", "date": int(time.time()) - 60, "sender_user": BEA}
    text = "Try @relay_test_bot, it summarises long threads for us"
    message = tg.message(
        PRIVATE_CHAT, text=text, forward_origin=origin, entities=tg.auto_entities(text)
    )

    await bot.deliver(tg.update(message))

    assert last_user_turn(bot) == (
        "Forwarded from Bea:\n> Try @relay_test_bot, it summarises long threads for us"
    )
