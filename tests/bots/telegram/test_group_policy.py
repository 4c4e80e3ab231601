"""Who may do what in a Telegram group: its budget, its usage, its admins, its menus."""

from __future__ import annotations

import json

import pytest
from telegram import (
    BotCommandScopeAllChatAdministrators,
    BotCommandScopeAllGroupChats,
    BotCommandScopeAllPrivateChats,
)

from core.commands import COMMANDS
from core.config import ModerationPolicy
from tests.bots.telegram.conftest import ADA, GROUP, Bot

BEA = 2002
# $1 per 1,000 tokens each way: one short exchange costs about a cent.
PRICED = {
    "prices": json.dumps({"gpt-4o-mini": {"input": 1000, "output": 1000}}),
    "system_prompt": "Be brief.",
    "reply_tokens": 5,
    "moderation": ModerationPolicy.OFF,
}
GROUP_ONLY_FOR_ADMINS = {"reset", "forget", "system", "voicemode"}


def bea(bot: Bot) -> dict[str, object]:
    return bot.telegram.user(BEA, "Bea", "bea")


# -- a group's budget covers all its topics ------------------------------------------------
@pytest.mark.telegram_settings(**PRICED, budget_chat_daily=0.015)
async def test_a_groups_budget_is_spent_in_any_of_its_topics(bot: Bot) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot hi", message_thread_id=7))
    # Bea asks in another topic of the same forum group: the group's budget is spent.
    await bot.deliver(
        tg.text_update(GROUP, "@relay_test_bot hello", from_user=bea(bot), message_thread_id=9)
    )

    assert tg.texts(GROUP, thread_id=7) == ["echo: hi"]
    (refused,) = tg.texts(GROUP, thread_id=9)
    assert refused.startswith("Sorry, that would go over this chat's daily budget of $0.01")
    assert len(bot.openai.chat_requests()) == 1


@pytest.mark.telegram_settings(admins=f"telegram:{ADA}")
async def test_budget_chat_here_in_a_topic_closes_the_whole_group(bot: Bot) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(GROUP, "/budget chat here day 0", message_thread_id=7))
    await bot.deliver(
        tg.text_update(
            GROUP, "@relay_test_bot still open?", from_user=bea(bot), message_thread_id=9
        )
    )
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot and here?", from_user=bea(bot)))

    assert tg.texts(GROUP, thread_id=7) == [
        f"The daily budget of chat telegram:{GROUP} is now $0 (no access)."
    ]
    closed = "This chat has no budget for the bot. Ask one of its admins."
    assert tg.texts(GROUP, thread_id=9) == [closed]
    assert tg.texts(GROUP)[-1] == closed
    assert bot.openai.chat_requests() == []


# -- /usage in a group shows only one's own ------------------------------------------------
@pytest.mark.telegram_settings(admins=f"telegram:{ADA}")
async def test_an_admins_usage_in_a_group_shows_only_their_own(bot: Bot) -> None:
    tg = bot.telegram
    # Bea talks to the bot privately (her private chat's id is her user id).
    await bot.deliver(tg.text_update(BEA, "my secret question", from_user=bea(bot)))
    await bot.deliver(tg.text_update(GROUP, "/usage"))
    await bot.deliver(tg.text_update(GROUP, f"/usage telegram:{BEA}"))
    await bot.deliver(tg.text_update(ADA, "/usage"))  # in private: everyone's, as before

    everyone, someone = tg.texts(GROUP)
    for text in (everyone, someone):
        assert text.startswith("Your usage:\n")
        assert str(BEA) not in text and "All users" not in text and "Chats" not in text
    assert everyone.endswith("Ask me in a private chat for everyone's usage.")
    assert someone.endswith("Ask me in a private chat for anyone else's usage.")
    in_private = tg.texts(ADA)[-1]
    assert "All users" in in_private and f"telegram:{BEA}" in in_private


# -- Telegram failing to say who the group's admins are ------------------------------------
async def test_a_failed_admin_check_refuses_a_group_wide_change(bot: Bot) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot we meet on Fridays"))
    tg.fail_next("getChatMember", description="Bad Request: member list is inaccessible")
    await bot.deliver(tg.text_update(GROUP, "/reset", from_user=bea(bot)))
    await bot.deliver(
        tg.text_update(GROUP, "@relay_test_bot when do we meet?", from_user=bea(bot))
    )

    texts = tg.texts(GROUP)
    assert texts[1] == (
        "I couldn't check whether you're one of this group's admins. Please try again in a moment."
    )
    # The history was not cleared: the next question still has Friday to go on.
    request = bot.openai.chat_requests()[-1]
    assert any("we meet on Fridays" in str(m["content"]) for m in request["messages"])


async def test_after_a_failed_admin_check_the_groups_admin_can_try_again(bot: Bot) -> None:
    tg = bot.telegram
    tg.chat_admins[GROUP] = {ADA}
    tg.fail_next("getChatMember", error_code=403, description="Forbidden: bot was kicked")
    await bot.deliver(tg.text_update(GROUP, "/reset"))
    await bot.deliver(tg.text_update(GROUP, "/reset"))

    assert tg.texts(GROUP) == [
        "I couldn't check whether you're one of this group's admins. "
        "Please try again in a moment.",
        "History cleared. Let's start over.",
    ]


# -- command menus by scope ----------------------------------------------------------------
async def test_each_kind_of_chat_gets_the_commands_it_can_use(bot: Bot) -> None:
    tg = bot.telegram
    private = set(tg.menu("private", chat_id=ADA, user_id=ADA))
    member = set(tg.menu("supergroup", chat_id=GROUP, user_id=BEA))
    admin = set(tg.menu("supergroup", chat_id=GROUP, user_id=ADA, admin=True))

    assert private == {"start", *COMMANDS} - {"voicemode"}
    assert member == set(COMMANDS) - GROUP_ONLY_FOR_ADMINS
    assert {"help", "model", "usage", "budget", "retry", "image"} <= member
    assert admin == set(COMMANDS)
    # Telegram keeps each scope's list: what the bot set is what it reads back.
    ptb = bot.adapter.application.bot
    for scope, expected in (
        (BotCommandScopeAllPrivateChats(), private),
        (BotCommandScopeAllGroupChats(), member),
        (BotCommandScopeAllChatAdministrators(), admin),
    ):
        assert {c.command for c in await ptb.get_my_commands(scope=scope)} == expected


# -- /help says what needs a group's admin -------------------------------------------------
async def test_help_tells_a_member_what_only_the_groups_admins_may_do(bot: Bot) -> None:
    tg = bot.telegram
    tg.chat_admins[GROUP] = {ADA}
    await bot.deliver(tg.text_update(GROUP, "/help", from_user=bea(bot)))
    await bot.deliver(tg.text_update(GROUP, "/help"))  # Ada, the group's admin
    await bot.deliver(tg.text_update(ADA, "/help"))  # her private chat with the bot

    for_bea, for_ada = tg.texts(GROUP)
    assert "/reset - forget this chat's history (group admins only)" in for_bea
    assert "/system - " in for_bea and "(setting it: group admins only)" in for_bea
    assert "/image - generate an image: /image PROMPT\n" in for_bea  # anyone's
    assert "admins only" not in for_ada and "/reset - forget this chat's history" in for_ada
    (in_private,) = tg.texts(ADA)
    assert "/voicemode" not in in_private and "/reset" in in_private  # groups' only


async def test_a_member_is_told_after_a_failed_admin_check_too(bot: Bot) -> None:
    tg = bot.telegram
    tg.fail_next("getChatMember", description="Bad Request: member list is inaccessible")
    await bot.deliver(tg.text_update(GROUP, "/help", from_user=bea(bot)))

    (shown,) = tg.texts(GROUP)
    assert "/forget - delete everything stored about this chat (group admins only)" in shown


@pytest.mark.telegram_settings(admins=f"telegram:{ADA}")
async def test_help_tells_who_may_pick_a_model_where_the_bot_has_admins(bot: Bot) -> None:
    tg = bot.telegram
    tg.chat_admins[GROUP] = {ADA, BEA}  # Bea runs the group, but is not the bot's admin
    await bot.deliver(tg.text_update(GROUP, "/help", from_user=bea(bot)))
    await bot.deliver(tg.text_update(GROUP, "/help"))  # Ada, the bot's admin
    await bot.deliver(tg.text_update(BEA, "/help", from_user=bea(bot)))  # Bea's private chat

    for_bea, for_ada = tg.texts(GROUP)
    assert "(picking one: the bot's admins only)" in for_bea
    assert "group admins only" not in for_bea  # the group's admin may do the rest
    assert "admins only" not in for_ada
    (in_private,) = tg.texts(BEA)
    assert "(picking one: the bot's admins only)" in in_private
