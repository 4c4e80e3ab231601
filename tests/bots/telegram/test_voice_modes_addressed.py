"""Voice notes in a group that posts transcripts: what the bot says to whom.

A voice note nobody addressed to the bot gets its transcript and nothing else, not even a
refusal; a question to the bot about a voice note gets an answer; every input is moderated
exactly once.
"""

from __future__ import annotations

import logging

import pytest

from core.testing.fake_openai import DEFAULT_TRANSCRIPT, message_text
from tests.bots.telegram.conftest import ADA, GROUP, PRIVATE_CHAT, Bot

GROUP_KEY = f"telegram:{GROUP}"
BOB = 2002  # a member of the group


def _bob(bot: Bot) -> dict[str, object]:
    return bot.telegram.user(BOB, "Bob", "bob")


def _transcriptions(bot: Bot) -> int:
    return len(bot.openai.calls("/audio/transcriptions"))


@pytest.mark.telegram_settings(group_voice_transcript_only=True, allowed_users=f"telegram:{ADA}")
async def test_voice_notes_of_a_member_not_allowed_pass_without_a_refusal(
    bot: Bot, voice_note: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    tg = bot.telegram
    with caplog.at_level(logging.INFO, logger="relaybot.service"):
        for _ in range(2):
            await bot.deliver(tg.voice_update(GROUP, voice_note, from_user=_bob(bot)))

    # Bob asked the bot nothing: no "this bot is private" under each of his voice notes.
    assert tg.chat_log(GROUP) == []
    assert _transcriptions(bot) == 0, "nothing is transcribed for someone not allowed"
    assert await bot.stored(GROUP_KEY) == []
    assert "unaddressed message refused quietly: AccessDenied" in caplog.text

    # Ada's voice note still gets its transcript; Bob, speaking to the bot, is told.
    await bot.deliver(tg.voice_update(GROUP, voice_note))
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot hello?", from_user=_bob(bot)))
    assert tg.texts(GROUP) == [
        DEFAULT_TRANSCRIPT,
        "Sorry, this bot is private. Ask its operator to let you in.",
    ]


@pytest.mark.telegram_settings(group_voice_transcript_only=True, rate_limit_per_minute=1)
async def test_voice_notes_past_the_rate_limit_pass_without_a_refusal(
    bot: Bot, voice_note: bytes
) -> None:
    tg = bot.telegram
    for _ in range(3):
        await bot.deliver(tg.voice_update(GROUP, voice_note, from_user=_bob(bot)))

    assert tg.texts(GROUP) == [DEFAULT_TRANSCRIPT], "no 'slow down' under the others"
    assert _transcriptions(bot) == 1


@pytest.mark.telegram_settings(group_voice_transcript_only=True, budget_user_daily=0.0)
async def test_voice_notes_over_budget_pass_without_a_refusal(bot: Bot, voice_note: bytes) -> None:
    tg = bot.telegram
    await bot.deliver(tg.voice_update(GROUP, voice_note, from_user=_bob(bot)))

    assert tg.chat_log(GROUP) == []
    assert _transcriptions(bot) == 0

    # Asked, the bot says why it does not answer.
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot hello?", from_user=_bob(bot)))
    (refusal,) = tg.texts(GROUP)
    assert "budget" in refusal.lower()


@pytest.mark.telegram_settings(group_voice_transcript_only=True)
async def test_a_question_in_reply_to_a_voice_note_is_answered_with_its_transcript(
    bot: Bot, voice_note: bytes
) -> None:
    tg = bot.telegram
    voice = tg.voice_update(GROUP, voice_note, from_user=_bob(bot))
    await bot.deliver(voice)
    question = tg.text_update(
        GROUP, "@relay_test_bot summarise this in French please", reply_to=voice["message"]
    )
    await bot.deliver(question)

    transcript, answer = tg.chat_log(GROUP)
    assert transcript.text == DEFAULT_TRANSCRIPT
    asked = f"summarise this in French please\n\n{DEFAULT_TRANSCRIPT}"
    assert answer.text == f"echo: {asked}", "the model answered the question, not a transcript"
    assert answer.reply_to == question["message"]["message_id"]
    (request,) = bot.openai.chat_requests()
    assert message_text(request["messages"][-1]["content"]) == asked
    stored = [(row.role, row.content) for row in reversed(await bot.stored(GROUP_KEY))]
    # (The transcript the group was given is history too, as Bob's turn.)
    assert stored == [
        ("user", DEFAULT_TRANSCRIPT),
        ("user", asked),
        ("assistant", f"echo: {asked}"),
    ]


@pytest.mark.telegram_settings(group_voice_transcript_only=True)
async def test_a_voice_note_captioned_with_a_question_to_the_bot_is_answered(
    bot: Bot, voice_note: bytes
) -> None:
    tg = bot.telegram
    asking = tg.voice_update(
        GROUP, voice_note, caption="@relay_test_bot answer this question please"
    )
    await bot.deliver(asking)
    # A bare mention asks for nothing more than the group's usual transcript.
    bare = tg.voice_update(GROUP, voice_note, caption="@relay_test_bot")
    await bot.deliver(bare)

    answer, transcript = tg.chat_log(GROUP)
    assert answer.text == f"echo: answer this question please\n\n{DEFAULT_TRANSCRIPT}"
    assert answer.reply_to == asking["message"]["message_id"]
    assert transcript.text == DEFAULT_TRANSCRIPT
    assert transcript.reply_to == bare["message"]["message_id"]
    assert len(bot.openai.chat_requests()) == 1


async def test_a_captioned_voice_note_is_moderated_once_for_each_part(
    bot: Bot, voice_note: bytes
) -> None:
    await bot.deliver(
        bot.telegram.voice_update(PRIVATE_CHAT, voice_note, caption="what do you think?")
    )

    answer = f"echo: what do you think?\n\n{DEFAULT_TRANSCRIPT}"
    assert bot.telegram.texts(PRIVATE_CHAT) == [answer]
    moderated = [text for r in bot.openai.calls("/moderations") for text in r.json["input"]]
    # The transcript was checked as it was heard; the caption and the answer on their own.
    assert sorted(moderated) == sorted([DEFAULT_TRANSCRIPT, "what do you think?", answer])


@pytest.mark.bot_user(can_read_all_group_messages=True)  # privacy mode off: sees all chatter
@pytest.mark.telegram_settings(group_voice_transcript_only=True)
async def test_chatter_in_reply_to_a_voice_note_does_not_have_it_heard_again(
    bot: Bot, voice_note: bytes
) -> None:
    tg = bot.telegram
    voice = tg.voice_update(GROUP, voice_note, from_user=_bob(bot))
    await bot.deliver(voice)
    await bot.deliver(tg.text_update(GROUP, "haha so true", reply_to=voice["message"]))
    photo = tg.photo_update(GROUP, b"\xff\xd8 not really a jpeg", from_user=_bob(bot))
    await bot.deliver(photo)
    await bot.deliver(tg.text_update(GROUP, "nice picture", reply_to=photo["message"]))

    # One transcript, under the voice note; the replies asked the bot nothing.
    assert tg.texts(GROUP) == [DEFAULT_TRANSCRIPT]
    assert _transcriptions(bot) == 1
    assert [(row.role, row.content) for row in await bot.stored(GROUP_KEY)] == [
        ("user", DEFAULT_TRANSCRIPT)
    ]
    assert bot.openai.chat_requests() == []
