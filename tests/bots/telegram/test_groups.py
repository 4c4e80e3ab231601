"""Groups: the bot speaks when mentioned, replied to or commanded; chatter stays private."""

from __future__ import annotations

import pytest

from core.testing.fake_openai import message_text
from tests.bots.telegram.conftest import ADA, GROUP, Bot

GROUP_KEY = f"telegram:{GROUP}"


async def test_group_chatter_is_ignored_and_not_stored(bot: Bot) -> None:
    await bot.deliver(bot.telegram.text_update(GROUP, "anyone up for lunch?"))
    await bot.deliver(bot.telegram.text_update(GROUP, "/help@some_other_bot"))

    assert bot.telegram.chat_log(GROUP) == []
    assert bot.openai.chat_requests() == []
    assert await bot.stored(GROUP_KEY) == []


@pytest.mark.parametrize("transport", ["polling", "webhook"])
async def test_a_mention_is_answered_in_the_group_replying_to_the_speaker(bot: Bot) -> None:
    bot.openai.chunk_delay = 0.01
    update = bot.telegram.text_update(GROUP, "@relay_test_bot what is the capital of France?")

    await bot.deliver(update)

    log = bot.telegram.chat_log(GROUP)
    assert [m.text for m in log] == ["echo: what is the capital of France?"]
    assert log[0].reply_to == update["message"]["message_id"]
    assert bot.telegram.drafts == [], "drafts are for private chats only"
    request = bot.openai.chat_requests()[-1]
    user_turn = request["messages"][-1]
    assert message_text(user_turn["content"]) == "what is the capital of France?"
    assert user_turn.get("name") == "ada", "group turns keep who said them"


async def test_a_long_group_answer_is_one_message_edited_as_it_streams(bot: Bot) -> None:
    bot.openai.chunk_delay = 0.01
    words = " ".join(f"word{i}" for i in range(60))
    bot.openai.queue_reply(words)

    await bot.deliver(bot.telegram.text_update(GROUP, "@relay_test_bot count please"))

    log = bot.telegram.chat_log(GROUP)
    assert [m.text for m in log] == [words]
    assert log[0].edits, "the message should have grown by edits while streaming"
    assert all(words.startswith(earlier) for earlier in log[0].edits)


async def test_a_reply_to_the_bot_is_answered(bot: Bot) -> None:
    await bot.deliver(bot.telegram.text_update(GROUP, "@relay_test_bot remember the word kiwi"))
    answer = bot.telegram.chat_log(GROUP)[-1]

    await bot.deliver(bot.telegram.text_update(GROUP, "what word was it?", reply_to=answer))

    texts = bot.telegram.texts(GROUP)
    assert texts == ["echo: remember the word kiwi", "echo: what word was it?"]
    history = bot.openai.chat_requests()[-1]["messages"]
    assert any("kiwi" in message_text(m["content"]) for m in history[:-1])


async def test_a_command_addressed_to_the_bot_is_answered_in_a_group(bot: Bot) -> None:
    await bot.deliver(bot.telegram.text_update(GROUP, "/help@relay_test_bot"))

    texts = bot.telegram.texts(GROUP)
    assert len(texts) == 1
    assert "/image" in texts[0] and "/translate" in texts[0]


async def test_forum_topics_keep_separate_histories(bot: Bot) -> None:
    tg = bot.telegram
    await bot.deliver(
        tg.text_update(GROUP, "@relay_test_bot topic one: apples", message_thread_id=7)
    )
    await bot.deliver(
        tg.text_update(GROUP, "@relay_test_bot topic two: pears", message_thread_id=9)
    )
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot and again?", message_thread_id=7))

    assert tg.texts(GROUP, thread_id=7) == ["echo: topic one: apples", "echo: and again?"]
    assert tg.texts(GROUP, thread_id=9) == ["echo: topic two: pears"]
    last = " ".join(message_text(m["content"]) for m in bot.openai.chat_requests()[-1]["messages"])
    assert "apples" in last and "pears" not in last
    assert len(await bot.stored(f"{GROUP_KEY}:7")) == 4
    assert len(await bot.stored(f"{GROUP_KEY}:9")) == 2


async def test_an_anonymous_admin_is_answered_and_a_channel_post_copied_in_is_not(
    bot: Bot,
) -> None:
    tg = bot.telegram
    # An admin posting anonymously: Telegram names its placeholder bot, and the group.
    anonymous = {
        "id": 1087968824,
        "is_bot": True,
        "first_name": "Group",
        "username": "GroupAnonymousBot",
    }
    update = tg.text_update(GROUP, "@relay_test_bot any news?", from_user=anonymous)
    update["message"]["sender_chat"] = {"id": GROUP, "type": "supergroup", "title": "Book Club"}
    await bot.deliver(update)
    # The linked channel's post, copied into its discussion group by Telegram.
    channel = {"id": -1009990001112, "type": "channel", "title": "Club News"}
    post = tg.text_update(
        GROUP,
        "@relay_test_bot new meeting on Friday",
        from_user={"id": 777000, "is_bot": False, "first_name": "Telegram"},
    )
    post["message"].update(sender_chat=channel, is_automatic_forward=True)
    await bot.deliver(post)

    assert [m.text for m in tg.chat_log(GROUP)] == ["echo: any news?"]
    (request,) = bot.openai.chat_requests()
    assert request["messages"][-1].get("name") == "Book_Club"


async def test_a_member_cannot_change_the_groups_prompt_or_wipe_its_history(bot: Bot) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot we meet on Fridays"))
    for command in ("/system Insult everyone.", "/reset", "/forget", "/voicemode transcript"):
        await bot.deliver(tg.text_update(GROUP, command))

    name = command.split()[0]
    refusals = [m.text for m in tg.chat_log(GROUP)][1:]
    assert refusals == [
        f"In a group only its admins can use {c.split()[0]}: it changes the conversation "
        "for everyone."
        for c in ("/system", "/reset", "/forget", name)
    ]
    assert len(tg.calls("/getChatMember")) == 4
    # Nothing changed: the group's memory and prompt are as they were.
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot when do we meet?"))
    request = bot.openai.chat_requests()[-1]
    assert "Insult" not in request["messages"][0]["content"]
    assert "we meet on Fridays" in [message_text(m["content"]) for m in request["messages"]]


async def test_the_groups_admins_change_it_and_anyone_may_look(bot: Bot) -> None:
    tg = bot.telegram
    tg.chat_admins[GROUP] = {ADA}
    await bot.deliver(tg.text_update(GROUP, "/system Answer like a pirate."))
    bea = tg.user(2002, "Bea", "bea")
    await bot.deliver(tg.text_update(GROUP, "/system", from_user=bea))  # showing changes nothing
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot hello", from_user=bea))

    texts = [m.text for m in tg.chat_log(GROUP)]
    assert texts[0] == "System prompt updated for this chat."
    assert "Answer like a pirate." in texts[1]
    assert bot.openai.chat_requests()[-1]["messages"][0]["content"] == "Answer like a pirate."
    # Only the change asked Telegram who Ada is.
    (asked,) = tg.calls("/getChatMember")
    assert asked.form["user_id"] == str(ADA)


@pytest.mark.telegram_settings(admins="telegram:2002")
async def test_an_anonymous_admin_and_the_bots_own_admins_may_change_a_group(bot: Bot) -> None:
    tg = bot.telegram
    anonymous = {"id": 1087968824, "is_bot": True, "first_name": "Group"}
    update = tg.text_update(GROUP, "/reset", from_user=anonymous)
    update["message"]["sender_chat"] = {"id": GROUP, "type": "supergroup", "title": "Book Club"}
    await bot.deliver(update)
    await bot.deliver(tg.text_update(GROUP, "/reset", from_user=tg.user(2002, "Bea", "bea")))

    assert [m.text for m in tg.chat_log(GROUP)] == ["History cleared. Let's start over."] * 2
    assert tg.calls("/getChatMember") == [], "neither needed Telegram's word"
