"""A mention of the bot leaves the message: only the mention, the rest as it was written."""

from __future__ import annotations

from core.testing.fake_openai import message_text
from tests.bots.telegram.conftest import GROUP, Bot

CODE = "def f(x):\n    if x:\n        return 1\n    return 2"


def last_user_turn(bot: Bot) -> str:
    return message_text(bot.openai.chat_requests()[-1]["messages"][-1]["content"])


async def test_code_pasted_under_a_mention_keeps_its_indentation(bot: Bot) -> None:
    text = f"@relay_test_bot why does this fail?\n```\n{CODE}\n```"

    await bot.deliver(bot.telegram.text_update(GROUP, text))

    assert last_user_turn(bot) == f"why does this fail?\n```\n{CODE}\n```"


async def test_a_mention_on_a_line_of_its_own_goes_with_its_line(bot: Bot) -> None:
    text = "what does this print?\n    x = 1\n@relay_test_bot\n    print(x)  # spaced  out"

    await bot.deliver(bot.telegram.text_update(GROUP, text))

    assert last_user_turn(bot) == "what does this print?\n    x = 1\n    print(x)  # spaced  out"


async def test_a_mention_inside_a_sentence_takes_one_space_with_it(bot: Bot) -> None:
    await bot.deliver(bot.telegram.text_update(GROUP, "hey @relay_test_bot, what's\t2 + 2?"))
    assert last_user_turn(bot) == "hey what's\t2 + 2?"

    await bot.deliver(bot.telegram.text_update(GROUP, "what is a  monad @relay_test_bot"))
    assert last_user_turn(bot) == "what is a  monad"
