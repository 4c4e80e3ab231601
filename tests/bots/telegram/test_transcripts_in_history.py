"""A group that posts transcripts keeps them: a later question about a voice note has it."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.db.models import InboundEvent
from core.testing.fake_openai import message_text
from tests.bots.telegram.conftest import GROUP, Bot

GROUP_KEY = f"telegram:{GROUP}"
SAID = "The release moves to Thursday at ten, and Maria runs the demo."


@pytest.mark.telegram_settings(group_voice_transcript_only=True)
@pytest.mark.bot_user(can_read_all_group_messages=True)  # BotFather: /setprivacy -> Disable
async def test_a_question_in_reply_to_a_transcript_is_asked_with_the_transcript(
    bot: Bot, voice_note: bytes
) -> None:
    tg = bot.telegram
    bot.openai.transcript = SAID
    bob = tg.user(2002, "Bob", "bob")
    await bot.deliver(tg.voice_update(GROUP, voice_note))
    (posted,) = tg.chat_log(GROUP)
    assert posted.text == SAID
    assert bot.openai.chat_requests() == [], "a transcript asks the model nothing"

    # Bob replies to the bot's transcript: the model reads what was said, and who said it.
    await bot.deliver(
        tg.text_update(GROUP, "is that the final date?", reply_to=posted, from_user=bob)
    )

    (request,) = bot.openai.chat_requests()
    said, asked = request["messages"][-2:]
    assert (said["role"], message_text(said["content"])) == ("user", SAID)
    assert (asked["role"], message_text(asked["content"]), asked.get("name")) == (
        "user",
        "is that the final date?",
        "bob",
    )
    assert said.get("name") not in (None, "bob"), "the voice note's speaker is named"
    assert tg.texts(GROUP)[-1] == "echo: is that the final date?"
    # Stored once, its event closed with it: a restart does not post the transcript again.
    rows = [(r.role, r.content) for r in reversed(await bot.stored(GROUP_KEY))]
    assert rows[0] == ("user", SAID)
    async with bot.core.engine.connect() as conn:
        statuses = (await conn.execute(select(InboundEvent.status))).scalars().all()
    assert set(statuses) == {"done"}


@pytest.mark.telegram_settings(group_voice_transcript_only=True)
@pytest.mark.bot_user(can_read_all_group_messages=True)
async def test_retry_after_a_transcript_regenerates_the_last_answer(
    bot: Bot, voice_note: bytes
) -> None:
    tg = bot.telegram
    bot.openai.transcript = SAID
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot name a colour"))
    await bot.deliver(tg.voice_update(GROUP, voice_note, from_user=tg.user(2002, "Bob", "bob")))

    await bot.deliver(tg.text_update(GROUP, "/retry"))

    # The question asked again is the last one put to the bot, not Bob's voice note.
    retried = bot.openai.chat_requests()[-1]["messages"][-1]
    assert message_text(retried["content"]) == "name a colour"
    assert tg.texts(GROUP) == ["echo: name a colour", SAID, "echo: name a colour"]
