"""Commands in groups: Telegram hands every bot of a group everyone's bare commands."""

from __future__ import annotations

from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot

GROUP_KEY = f"telegram:{GROUP}"
UNKNOWN_ROLL = "Unknown command /roll. Send /help to see what I can do."


async def test_another_bots_bare_command_is_group_chatter(bot: Bot) -> None:
    tg = bot.telegram
    # A group shared with a dice bot: members type /roll and /roll 2d6 without its name.
    await bot.deliver(tg.text_update(GROUP, "/roll"))
    await bot.deliver(tg.text_update(GROUP, "/roll 2d6"))
    await bot.deliver(tg.text_update(GROUP, "/roll", chat_type="group"))

    assert tg.chat_log(GROUP) == []
    assert bot.openai.chat_requests() == []
    assert await bot.stored(GROUP_KEY) == []


async def test_our_commands_and_commands_aimed_at_us_are_still_answered_in_a_group(
    bot: Bot,
) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(GROUP, "/help"))  # one of ours, bare
    await bot.deliver(tg.text_update(GROUP, "/roll@relay_test_bot"))  # aimed at us
    # Chatter like any other: a mention or a reply to the bot addresses it.
    await bot.deliver(tg.text_update(GROUP, "/roll @relay_test_bot"))
    help_text = tg.chat_log(GROUP)[0]
    await bot.deliver(tg.text_update(GROUP, "/roll", reply_to=help_text))

    texts = tg.texts(GROUP)
    assert texts[0].startswith("I'm relaybot")
    assert texts[1:] == [UNKNOWN_ROLL] * 3
    assert bot.openai.chat_requests() == []


async def test_an_unknown_command_in_a_private_chat_is_still_explained(bot: Bot) -> None:
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "/roll"))

    assert bot.telegram.texts(PRIVATE_CHAT) == [UNKNOWN_ROLL]
