"""A forwarded voice note is someone else's recording: the model reads its transcript
quoted under who spoke it, not as the forwarder's own words."""

from __future__ import annotations

import time
from typing import Any

import pytest

from core.testing.fake_openai import DEFAULT_TRANSCRIPT
from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot

QUOTED = f"Forwarded from Bea:\n> {DEFAULT_TRANSCRIPT}"


def forwarded_voice(bot: Bot, chat_id: int, voice_note: bytes) -> dict[str, Any]:
    update = bot.telegram.voice_update(chat_id, voice_note)
    update["message"]["forward_origin"] = {
        "type": "user",
        "date": int(time.time()) - 60,
        "sender_user": bot.telegram.user(2002, "Bea", "bea"),
    }
    return update


async def test_a_forwarded_voice_note_is_heard_as_the_speakers_words(
    bot: Bot, voice_note: bytes
) -> None:
    await bot.deliver(forwarded_voice(bot, PRIVATE_CHAT, voice_note))

    request = bot.openai.chat_requests()[-1]
    assert request["messages"][-1]["content"] == QUOTED
    (answer,) = bot.telegram.texts(PRIVATE_CHAT)
    assert answer.startswith("echo: Forwarded from Bea:")


@pytest.mark.telegram_settings(group_voice_transcript_only=True)
async def test_a_forwarded_voice_notes_transcript_is_kept_under_the_speakers_name(
    bot: Bot, voice_note: bytes
) -> None:
    tg = bot.telegram
    await bot.deliver(forwarded_voice(bot, GROUP, voice_note))
    # The transcript posted under the voice note is the recording's words, as they are.
    assert tg.texts(GROUP) == [DEFAULT_TRANSCRIPT]

    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot who said that?"))
    heard = bot.openai.chat_requests()[-1]["messages"][-2]
    assert heard["content"] == QUOTED  # kept in the history as Bea's, quoted
