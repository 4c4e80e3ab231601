"""What the model reads of the message a person replies to: one of the bot's earlier
answers, the part of a message the person quoted, a message of another chat."""

from __future__ import annotations

import time

from core.testing.fake_openai import message_text
from tests.bots.telegram.conftest import ADA, GROUP, PRIVATE_CHAT, Bot

CHANNEL = {"id": -1009990001112, "type": "channel", "title": "Club News"}


def last_user_turn(bot: Bot) -> str:
    return message_text(bot.openai.chat_requests()[-1]["messages"][-1]["content"])


async def test_a_reply_to_an_earlier_answer_is_about_that_answer(bot: Bot) -> None:
    tg = bot.telegram
    bot.openai.queue_reply("Paris is the capital of France.")
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot capital of France?"))
    paris = tg.chat_log(GROUP)[-1]
    bot.openai.queue_reply("Berlin is the capital of Germany.")
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot capital of Germany?"))

    await bot.deliver(tg.text_update(GROUP, "how many people live there?", reply_to=paris))

    assert last_user_turn(bot) == (
        "> Paris is the capital of France.\n\nhow many people live there?"
    )
    assert tg.texts(GROUP)[-1] == (
        "echo: > Paris is the capital of France.\n\nhow many people live there?"
    )


async def test_a_reply_to_an_answer_from_before_a_reset_still_reads_it(bot: Bot) -> None:
    tg = bot.telegram
    tg.chat_admins[GROUP] = {ADA}
    bot.openai.queue_reply("Paris is the capital of France.")
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot capital of France?"))
    paris = tg.chat_log(GROUP)[-1]
    await bot.deliver(tg.text_update(GROUP, "/reset"))

    await bot.deliver(tg.text_update(GROUP, "how many people live there?", reply_to=paris))

    messages = bot.openai.chat_requests()[-1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user"], "the history was reset"
    assert last_user_turn(bot) == (
        "> Paris is the capital of France.\n\nhow many people live there?"
    )


async def test_a_reply_quoting_a_message_of_another_chat_reads_the_quote(bot: Bot) -> None:
    # "Reply in another chat": Telegram sends what was quoted, and where it is from, but no
    # reply_to_message (the bot may not see that chat at all).
    tg = bot.telegram
    origin = {"type": "channel", "date": int(time.time()) - 60, "chat": CHANNEL, "message_id": 5}
    message = tg.message(
        PRIVATE_CHAT,
        text="is this true?",
        external_reply={"origin": origin, "chat": CHANNEL, "message_id": 5},
        quote={"text": "The Great Wall is visible from the Moon", "position": 0},
    )

    await bot.deliver(tg.update(message))

    assert last_user_turn(bot) == "> The Great Wall is visible from the Moon\n\nis this true?"


async def test_a_reply_to_a_message_of_another_chat_without_a_quote_asks_as_is(bot: Bot) -> None:
    tg = bot.telegram
    origin = {"type": "channel", "date": int(time.time()) - 60, "chat": CHANNEL, "message_id": 5}
    message = tg.message(
        PRIVATE_CHAT,
        text="what do you think?",
        external_reply={"origin": origin, "chat": CHANNEL, "message_id": 5},
    )

    await bot.deliver(tg.update(message))

    assert last_user_turn(bot) == "what do you think?"


async def test_the_part_a_person_quoted_is_what_the_question_is_about(bot: Bot) -> None:
    tg = bot.telegram
    claims = tg.message(
        GROUP,
        from_user=tg.user(2002, "Bob", "bob"),
        text="The sky is green. Water is wet. Fire is cold.",
    )
    update = tg.text_update(GROUP, "@relay_test_bot is this true?", reply_to=claims)
    update["message"]["quote"] = {"text": "Water is wet.", "position": 18, "is_manual": True}

    await bot.deliver(update)

    assert last_user_turn(bot) == "> Water is wet.\n\nis this true?"


async def test_a_quoted_part_of_the_latest_answer_is_read_too(bot: Bot) -> None:
    tg = bot.telegram
    bot.openai.queue_reply("Paris has 2.1 million people. Berlin has 3.7 million.")
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "how big are Paris and Berlin?"))
    answer = tg.chat_log(PRIVATE_CHAT)[-1]
    update = tg.text_update(PRIVATE_CHAT, "source?", reply_to=answer)
    update["message"]["quote"] = {"text": "Berlin has 3.7 million.", "position": 30}

    await bot.deliver(update)

    assert last_user_turn(bot) == "> Berlin has 3.7 million.\n\nsource?"


async def test_a_reply_to_the_latest_answer_with_a_link_and_code_is_not_read_twice(
    bot: Bot,
) -> None:
    """The latest answer is the history's last turn: as Telegram shows it (a link's label
    without its address, code without its fence's language) it is still that turn."""
    tg = bot.telegram
    bot.openai.queue_reply(
        "See [the guide](https://example.com/guide) and run:\n\n```python\nprint(1)\n```"
    )
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "how do I start?"))
    answer = tg.chat_log(PRIVATE_CHAT)[-1]

    await bot.deliver(tg.text_update(PRIVATE_CHAT, "and then?", reply_to=answer))

    messages = bot.openai.chat_requests()[-1]["messages"]
    assert last_user_turn(bot) == "and then?"
    assert "example.com/guide" in str(messages[-2]["content"])  # the answer, in the history
