"""What people see for messages that are no text: GIFs, videos, stickers, locations and
the like, files Telegram names no type or name of, and service messages (pins, joins...)."""

from __future__ import annotations

from typing import Any

import pytest

from core.testing.fake_openai import DEFAULT_TRANSCRIPT
from tests.bots.telegram.conftest import ADA, GROUP, PRIVATE_CHAT, Bot

CANNOT_READ = "I can only read text, voice or audio messages and images."
MP4 = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64
M4A = b"\x00\x00\x00\x18ftypM4A " + b"\x00" * 64


def _transcribed(bot: Bot) -> list[str]:
    """The names of the files sent for transcription."""
    return [str(r.form["file"]["filename"]) for r in bot.openai.calls("/audio/transcriptions")]


async def test_a_gif_is_not_transcribed_but_said_to_be_unreadable(bot: Bot) -> None:
    await bot.deliver(bot.telegram.animation_update(PRIVATE_CHAT, MP4))

    assert bot.telegram.texts(PRIVATE_CHAT) == [CANNOT_READ]
    assert _transcribed(bot) == []
    assert bot.openai.chat_requests() == []


async def test_a_transcript_group_transcribes_voice_but_not_gifs_or_videos(
    bot: Bot, voice_note: bytes
) -> None:
    tg = bot.telegram
    tg.chat_admins[GROUP] = {ADA}
    await bot.deliver(tg.text_update(GROUP, "/voicemode transcript"))
    # Nobody addresses the bot: only what was said aloud is transcribed.
    await bot.deliver(tg.animation_update(GROUP, MP4))
    await bot.deliver(tg.video_update(GROUP, MP4))
    await bot.deliver(tg.voice_update(GROUP, voice_note))

    setting, transcript = tg.chat_log(GROUP)
    assert "transcript" in setting.text
    assert transcript.text == DEFAULT_TRANSCRIPT
    assert [name.rsplit(".", 1)[-1] for name in _transcribed(bot)] == ["ogg"]


async def test_a_video_sent_to_the_bot_has_its_sound_transcribed_and_answered(bot: Bot) -> None:
    # OpenAI's transcription takes MP4: a video addressed to the bot is heard, as before.
    await bot.deliver(bot.telegram.video_update(PRIVATE_CHAT, MP4, file_name="talk.mp4"))

    assert _transcribed(bot) == ["talk.mp4"]
    assert bot.telegram.texts(PRIVATE_CHAT) == [f"echo: {DEFAULT_TRANSCRIPT}"]


async def test_an_audio_file_without_a_name_is_uploaded_under_its_own_type(bot: Bot) -> None:
    await bot.deliver(bot.telegram.audio_update(PRIVATE_CHAT, M4A, file_name=None))

    (name,) = _transcribed(bot)
    assert name.endswith(".m4a"), f"an audio/mp4 (M4A) file uploaded as {name}"
    assert bot.telegram.texts(PRIVATE_CHAT) == [f"echo: {DEFAULT_TRANSCRIPT}"]


async def test_a_document_of_no_stated_type_is_known_by_its_name(
    bot: Bot, voice_note: bytes
) -> None:
    update = bot.telegram.document_update(
        PRIVATE_CHAT, voice_note, file_name="recording.oga", mime_type=None
    )
    await bot.deliver(update)

    assert _transcribed(bot) == ["recording.ogg"]
    assert bot.telegram.texts(PRIVATE_CHAT) == [f"echo: {DEFAULT_TRANSCRIPT}"]


CONTENT: dict[str, dict[str, Any]] = {
    "location": {"location": {"latitude": 38.72, "longitude": -9.14}},
    "venue": {
        "location": {"latitude": 38.72, "longitude": -9.14},
        "venue": {
            "location": {"latitude": 38.72, "longitude": -9.14},
            "title": "Café",
            "address": "Rua Augusta 1",
        },
    },
    "contact": {"contact": {"phone_number": "+351000000", "first_name": "Bea"}},
    "poll": {
        "poll": {
            "id": "1",
            "question": "Lunch?",
            "options": [
                {"persistent_id": "a", "text": "yes", "voter_count": 0},
                {"persistent_id": "b", "text": "no", "voter_count": 0},
            ],
            "total_voter_count": 0,
            "is_closed": False,
            "is_anonymous": True,
            "type": "regular",
            "allows_multiple_answers": False,
            "allows_revoting": False,
            "members_only": False,
        }
    },
    "dice": {"dice": {"emoji": "🎲", "value": 4}},
}


async def test_a_sticker_or_a_location_sent_to_the_bot_is_said_to_be_unreadable(
    bot: Bot,
) -> None:
    tg = bot.telegram
    await bot.deliver(tg.sticker_update(PRIVATE_CHAT))
    for content in CONTENT.values():
        await bot.deliver(tg.update(tg.message(PRIVATE_CHAT, **content)))

    assert tg.texts(PRIVATE_CHAT) == [CANNOT_READ] * (1 + len(CONTENT))
    assert bot.openai.chat_requests() == []
    assert tg.downloads == [], "nothing was fetched to find that out"


async def test_a_sticker_in_reply_to_the_bot_in_a_group_is_said_to_be_unreadable(
    bot: Bot,
) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot tell a joke"))
    joke = tg.chat_log(GROUP)[-1]
    await bot.deliver(tg.sticker_update(GROUP, emoji="😂", reply_to=joke))
    await bot.deliver(tg.sticker_update(GROUP))  # addressed to nobody: none of our business

    assert tg.texts(GROUP) == ["echo: tell a joke", CANNOT_READ]
    assert len(bot.openai.chat_requests()) == 1


SERVICE: dict[str, dict[str, Any]] = {
    "auto-delete timer": {
        "message_auto_delete_timer_changed": {"message_auto_delete_time": 86400}
    },
    "new member": {"new_chat_members": [{"id": 3003, "is_bot": False, "first_name": "Cy"}]},
    "member left": {"left_chat_member": {"id": 3003, "is_bot": False, "first_name": "Cy"}},
    "topic created": {"forum_topic_created": {"name": "Plans", "icon_color": 7322096}},
    "topic closed": {"forum_topic_closed": {}},
    "video chat": {"video_chat_started": {}},
    "title": {"new_chat_title": "Book Club"},
    # A group's move to a new id gets no answer either, and takes its history along
    # (test_what_a_message_carries.py).
    "migrated from": {"migrate_from_chat_id": -4001},
}


@pytest.mark.parametrize("chat", [PRIVATE_CHAT, GROUP], ids=["private", "group"])
async def test_service_messages_get_no_answer(bot: Bot, chat: int) -> None:
    tg = bot.telegram
    text = "hello" if chat > 0 else "@relay_test_bot hello"
    await bot.deliver(tg.text_update(chat, text))
    answer = tg.chat_log(chat)[-1]
    # The person pins the bot's answer; in groups, people come and go, topics open...
    await bot.deliver(tg.update(tg.message(chat, pinned_message=tg.message_dict(answer))))
    for content in SERVICE.values():
        await bot.deliver(tg.update(tg.message(chat, **content)))

    assert tg.texts(chat) == ["echo: hello"]
    assert len(bot.openai.chat_requests()) == 1
    assert len(await bot.stored(f"telegram:{chat}")) == 2
