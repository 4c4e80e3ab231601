"""What reaches the model with a Telegram message: the message it replies to, who wrote it,
the files it carries; and what a topic's or a private chat's settings commands say."""

from __future__ import annotations

from core.testing.fake_openai import message_text
from tests.bots.telegram.conftest import ADA, GROUP, PRIVATE_CHAT, Bot

BOB = 2002


def last_user_turn(bot: Bot) -> dict:
    return bot.openai.chat_requests()[-1]["messages"][-1]


async def test_a_question_about_someones_message_reads_that_message(bot: Bot) -> None:
    tg = bot.telegram
    claim = tg.message(
        GROUP, from_user=tg.user(BOB, "Bob", "bob"), text="The Great Wall is visible from the Moon"
    )
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot is this true?", reply_to=claim))

    assert message_text(last_user_turn(bot)["content"]) == (
        "> The Great Wall is visible from the Moon\n\nis this true?"
    )
    # A bare mention in reply to a question asks the bot to answer it.
    question = tg.message(GROUP, from_user=tg.user(BOB, "Bob", "bob"), text="Who wrote Dune?")
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot", reply_to=question))

    assert tg.texts(GROUP)[-1] == "echo: > Who wrote Dune?"
    assert message_text(last_user_turn(bot)["content"]) == "> Who wrote Dune?"


async def test_a_reply_to_the_bots_answer_is_not_quoted_again(bot: Bot) -> None:
    await bot.deliver(bot.telegram.text_update(GROUP, "@relay_test_bot name a fruit"))
    answer = bot.telegram.chat_log(GROUP)[-1]

    await bot.deliver(bot.telegram.text_update(GROUP, "another one?", reply_to=answer))

    messages = bot.openai.chat_requests()[-1]["messages"]
    assert [message_text(m["content"]) for m in messages[1:]] == [
        "name a fruit",
        "echo: name a fruit",
        "another one?",
    ]


async def test_people_with_names_in_other_scripts_stay_apart(bot: Bot) -> None:
    tg = bot.telegram
    for user_id, first_name, text in ((3003, "Иван", "привет"), (4004, "李明", "你好")):
        await bot.deliver(
            tg.text_update(
                GROUP,
                f"@relay_test_bot {text}",
                from_user=tg.user(user_id, first_name, username=None),
            )
        )
    turns = [m for m in bot.openai.chat_requests()[-1]["messages"] if m["role"] == "user"]
    assert [t.get("name") for t in turns] == ["Ivan", "LiMing"]


async def test_a_text_file_is_read_and_a_pdf_is_refused_not_ignored(bot: Bot) -> None:
    tg = bot.telegram
    code = b"def add(a, b):\n    return a - b\n"
    await bot.deliver(
        tg.document_update(
            PRIVATE_CHAT,
            code,
            file_name="calc.py",
            mime_type="text/x-python",
            caption="why does add(2, 2) give 0?",
        )
    )
    assert message_text(last_user_turn(bot)["content"]) == (
        "calc.py:\n```\ndef add(a, b):\n    return a - b\n```\n\nwhy does add(2, 2) give 0?"
    )
    asked = len(bot.openai.chat_requests())

    await bot.deliver(
        tg.document_update(
            PRIVATE_CHAT,
            b"%PDF-1.7 ...",
            file_name="report.pdf",
            mime_type="application/pdf",
            caption="summarise this report",
        )
    )
    assert tg.texts(PRIVATE_CHAT)[-1].startswith("I can't read report.pdf")
    assert len(bot.openai.chat_requests()) == asked, "no answer made up without the file"


async def test_a_topic_that_drops_its_own_choice_is_told_what_it_uses(bot: Bot) -> None:
    tg = bot.telegram
    tg.chat_admins[GROUP] = {ADA}
    bot.openai.models.append("gpt-4o")
    await bot.deliver(tg.text_update(GROUP, "/model gpt-4o"))
    await bot.deliver(tg.text_update(GROUP, "/system You are a pirate."))
    await bot.deliver(tg.text_update(GROUP, "/model default", message_thread_id=7))
    await bot.deliver(tg.text_update(GROUP, "/system default", message_thread_id=7))
    await bot.deliver(tg.text_update(GROUP, "/system", message_thread_id=7))

    said = tg.texts(GROUP, thread_id=7)
    assert said[0] == (
        "This chat's own model choice is removed: it uses gpt-4o again, as chosen for the "
        "whole group or channel."
    )
    assert said[1] == (
        "This chat's own system prompt is removed: it uses the one set for the whole group "
        "or channel again."
    )
    assert said[2].startswith(
        "Current system prompt (the one set for the whole group or channel):\nYou are a pirate."
    )
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot ahoy", message_thread_id=7))
    request = bot.openai.chat_requests()[-1]
    assert request["model"] == "gpt-4o"
    assert request["messages"][0]["content"] == "You are a pirate."


async def test_voicemode_in_a_private_chat_says_it_is_for_groups(bot: Bot) -> None:
    bot.telegram.chat_admins[GROUP] = {ADA}
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "/voicemode transcript"))
    await bot.deliver(bot.telegram.text_update(GROUP, "/voicemode loud"))

    assert bot.telegram.texts(PRIVATE_CHAT)[-1].startswith(
        "Here I answer every voice note. /voicemode is for groups"
    )
    assert bot.telegram.texts(GROUP)[-1].startswith("Send /voicemode transcript")


async def test_retry_of_a_picture_question_asks_for_the_picture_again(
    bot: Bot, photo: bytes
) -> None:
    tg = bot.telegram
    await bot.deliver(tg.photo_update(PRIVATE_CHAT, photo, caption="what is in this photo?"))
    first = bot.openai.chat_requests()[-1]["messages"][-1]["content"]
    # The picture goes to the model with the question, and nothing else beside them.
    assert [part["type"] for part in first] == ["text", "image_url"]
    assert first[0]["text"] == "what is in this photo?"
    await bot.deliver(tg.photo_update(PRIVATE_CHAT, photo))
    only_picture = bot.openai.chat_requests()[-1]["messages"][-1]["content"]
    assert [part["type"] for part in only_picture] == ["image_url"]
    asked = len(bot.openai.chat_requests())

    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/retry"))

    assert tg.texts(PRIVATE_CHAT)[-1] == (
        "I no longer have the picture that message came with. Please send it again."
    )
    assert len(bot.openai.chat_requests()) == asked
    # The answer it had is kept: the next question still has it in its history.
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "thanks"))
    history = bot.openai.chat_requests()[-1]["messages"]
    assert [m["role"] for m in history[1:]] == ["user", "assistant", "user", "assistant", "user"]
    assert message_text(history[2]["content"]) == tg.texts(PRIVATE_CHAT)[0]


async def test_a_group_upgraded_to_a_supergroup_keeps_its_settings_and_history(
    bot: Bot,
) -> None:
    tg = bot.telegram
    old, new = -4001, -1004001
    tg.chat_admins[old] = {ADA}
    await bot.deliver(tg.text_update(old, "/system You are a pirate.", chat_type="group"))
    await bot.deliver(tg.text_update(old, "@relay_test_bot the treasure is on Skull Island"))
    # Telegram's service messages: in the old group, then in the new supergroup.
    await bot.deliver(tg.update(tg.message(old, chat_type="group", migrate_to_chat_id=new)))
    await bot.deliver(tg.update(tg.message(new, migrate_from_chat_id=old)))

    await bot.deliver(tg.text_update(new, "@relay_test_bot where is the treasure?"))

    messages = bot.openai.chat_requests()[-1]["messages"]
    assert messages[0]["content"] == "You are a pirate."
    assert [message_text(m["content"]) for m in messages[1:]] == [
        "the treasure is on Skull Island",
        "echo: the treasure is on Skull Island",
        "where is the treasure?",
    ]
    assert tg.texts(new) == ["echo: where is the treasure?"], "no answer to the service messages"
