"""`relaybot export` from a Telegram group: voice notes' transcripts are the speakers'
turns, and an exchange about a picture (not kept) is left out."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from core.export import export_openai_jsonl
from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot

SAID = "The release moves to Thursday at ten, and Maria runs the demo."


async def exported(bot: Bot, chat: str) -> list[dict[str, Any]]:
    out = io.StringIO()
    await export_openai_jsonl(
        bot.core.engine,
        out,
        default_system_prompt=bot.core.settings.system_prompt,
        chats=[chat],
    )
    (line,) = out.getvalue().splitlines()
    return list(json.loads(line)["messages"])


@pytest.mark.telegram_settings(group_voice_transcript_only=True)
@pytest.mark.bot_user(can_read_all_group_messages=True)
async def test_a_transcript_the_group_was_posted_is_in_the_example(
    bot: Bot, voice_note: bytes
) -> None:
    tg = bot.telegram
    bot.openai.transcript = SAID
    await bot.deliver(tg.voice_update(GROUP, voice_note))
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot when is the release?"))

    messages = await exported(bot, f"telegram:{GROUP}")
    assert [m["role"] for m in messages] == ["system", "user", "user", "assistant"]
    assert messages[1]["content"] == SAID  # what the answer was about
    assert messages[3]["content"] == "echo: when is the release?"


async def test_an_exchange_about_a_picture_is_left_out(bot: Bot, photo: bytes) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "hello"))
    await bot.deliver(tg.photo_update(PRIVATE_CHAT, photo, caption="what is in this photo?"))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "thanks"))

    messages = await exported(bot, f"telegram:{PRIVATE_CHAT}")
    assert [m["content"] for m in messages[1:]] == [
        "hello",
        "echo: hello",
        "thanks",
        "echo: thanks",
    ]
