"""Which Telegram updates reach the core, and how they look there (a pure translation)."""

from __future__ import annotations

from typing import Any

from telegram import Bot, Update

from bots.telegram.convert import BotIdentity, to_incoming
from core.testing.fake_telegram import FakeTelegram
from core.types import AttachmentKind, Fetch

ME = BotIdentity(id=123456789, username="relay_test_bot")
TG = FakeTelegram()
BOT = Bot("123456789:TEST-fake-token-not-real")


def _no_fetch(file_id: str, size: int | None) -> Fetch:
    async def fetch() -> bytes:
        raise AssertionError("nothing is downloaded while converting")

    return fetch


def convert(update: dict[str, Any], **kwargs: Any) -> Any:
    return to_incoming(Update.de_json(update, BOT), ME, _no_fetch, **kwargs)


def test_private_text_is_direct_and_keyed_by_chat_and_message() -> None:
    update = TG.text_update(42, "hello")
    msg = convert(update)
    assert msg.is_direct and msg.addressed_to_bot
    assert msg.chat.key == "telegram:42"
    assert msg.event_key == f"telegram:42:{update['message']['message_id']}"
    assert msg.text == "hello"


def test_group_commands_lose_the_bot_name_and_other_bots_commands_are_ignored() -> None:
    assert convert(TG.text_update(-5, "/image@relay_test_bot a cat")).text == "/image a cat"
    assert convert(TG.text_update(-5, "/image@other_bot a cat")) is None
    assert convert(TG.text_update(-5, "/help")).text == "/help"


def test_group_mentions_are_stripped_and_chatter_is_dropped() -> None:
    msg = convert(TG.text_update(-5, "hey @relay_test_bot, what's up?"))
    assert msg.text == "hey what's up?"
    assert not msg.is_direct
    assert convert(TG.text_update(-5, "hey @someone_else")) is None
    assert convert(TG.text_update(-5, "email me at ann@relay_test_bot.org")) is None


def test_forum_topics_are_threads_but_plain_replies_are_not() -> None:
    msg = convert(TG.text_update(-5, "/help", message_thread_id=77))
    assert msg.chat.thread_id == "77"
    assert msg.chat.key == "telegram:-5:77"


def test_bots_are_never_answered() -> None:
    robot = {"id": 999, "is_bot": True, "first_name": "Other"}
    assert convert(TG.text_update(42, "hi", from_user=robot)) is None


def test_a_voice_note_carries_size_duration_and_an_oga_name() -> None:
    msg = convert(TG.voice_update(42, b"OggS...", duration=3, file_size=12345))
    (audio,) = msg.attachments
    assert audio.kind is AttachmentKind.AUDIO
    assert audio.filename.endswith(".oga")
    assert audio.size == 12345
    assert audio.duration_seconds == 3
    assert audio.ref


def test_the_largest_photo_size_is_used() -> None:
    update = TG.photo_update(42, b"\xff\xd8full", width=800, height=600)
    (image,) = convert(update).attachments
    sizes = update["message"]["photo"]
    assert image.kind is AttachmentKind.IMAGE
    assert image.ref == sizes[-1]["file_id"]


def test_a_reply_to_media_carries_that_media() -> None:
    voice = TG.voice_update(-5, b"OggS...")["message"]
    msg = convert(TG.text_update(-5, "/translate", reply_to=voice))
    assert [a.kind for a in msg.attachments] == [AttachmentKind.AUDIO]


def test_group_voice_notes_reach_the_core_only_in_transcript_mode() -> None:
    update = TG.voice_update(-5, b"OggS...")
    assert convert(update) is None
    msg = convert(update, group_voice=True)
    assert msg is not None and not msg.addressed_to_bot


def test_only_our_commands_address_us_bare_in_a_group() -> None:
    assert convert(TG.text_update(-5, "/roll 2d6")) is None, "a dice bot's command"
    assert convert(TG.text_update(-5, "/roll@relay_test_bot")).text == "/roll"
    assert convert(TG.text_update(42, "/roll")).addressed_to_bot


def test_service_messages_are_dropped_and_stickers_are_unreadable_files() -> None:
    assert convert(TG.update(TG.message(42, new_chat_title="Plans"))) is None
    sticker = convert(TG.sticker_update(42))
    assert [(a.kind, a.filename) for a in sticker.attachments] == [
        (AttachmentKind.FILE, "the sticker")
    ]
