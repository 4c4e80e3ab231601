"""An answer of nothing but spaces and newlines is an empty answer, and said to be one."""

from __future__ import annotations

from core.errors import EmptyAnswer
from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot


async def test_a_blank_answer_in_a_private_chat_is_said_to_be_empty(bot: Bot) -> None:
    bot.openai.queue_reply("  \n\n   \n")

    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "Say nothing at all"))

    assert [m.text for m in bot.telegram.chat_log(PRIVATE_CHAT)] == [EmptyAnswer.user_message]
    # Nothing blank joins the history: the question stands alone, for a retry to answer.
    assert [m.role for m in await bot.stored(f"telegram:{PRIVATE_CHAT}")] == ["user"]


async def test_a_blank_answer_in_a_group_is_said_to_be_empty(bot: Bot) -> None:
    bot.openai.queue_reply("\n \n")

    await bot.deliver(bot.telegram.text_update(GROUP, "@relay_test_bot say nothing"))

    assert [m.text for m in bot.telegram.chat_log(GROUP)] == [EmptyAnswer.user_message]
