"""What the Telegram adapter tells the core of a text a client may have cut (a paste longer
than a message may be): a pure translation."""

from __future__ import annotations

from typing import Any

from telegram import Bot as TelegramBot
from telegram import Update

from bots.telegram.convert import CUT_TEXT_UTF16, BotIdentity, to_incoming
from core.testing.fake_telegram import FakeTelegram
from core.types import NEXT_MESSAGE, Fetch, IncomingMessage

ME = BotIdentity(id=123456789, username="relay_test_bot")
TG = FakeTelegram()
PTB = TelegramBot("123456789:TEST-fake-token-not-real")


def _no_fetch(file_id: str, size: int | None) -> Fetch:
    async def fetch() -> bytes:
        raise AssertionError("nothing is downloaded while converting")

    return fetch


def convert(update: dict[str, Any], bot: BotIdentity = ME) -> IncomingMessage | None:
    return to_incoming(Update.de_json(update, PTB), bot, _no_fetch)


def test_a_text_as_long_as_a_cut_part_names_the_message_that_would_continue_it() -> None:
    # A supergroup numbers its own messages: the rest comes with the next id.
    update = TG.text_update(-100500, "@relay_test_bot " + "x" * CUT_TEXT_UTF16)
    msg = convert(update)
    assert msg is not None
    assert msg.continuation_id == str(update["message"]["message_id"] + 1)
    # Private chats and basic groups share the bot's one sequence: the rest is the chat's
    # next message, sent right after (the platform's date).
    for chat_id, kind in ((42, "private"), (-4005, "group")):
        update = TG.text_update(chat_id, "@relay_test_bot " + "x" * CUT_TEXT_UTF16, chat_type=kind)
        msg = convert(update)
        assert msg is not None and msg.continuation_id == NEXT_MESSAGE
        assert msg.sent_at == update["message"]["date"]
    # UTF-16 units, as Telegram counts them: each of these counts twice.
    wide = convert(TG.text_update(42, "🔥" * (CUT_TEXT_UTF16 // 2)))
    assert wide is not None and wide.continuation_id is not None
    shorter = convert(TG.text_update(42, "x" * (CUT_TEXT_UTF16 - 1)))
    assert shorter is not None and shorter.continuation_id is None


def test_a_group_shows_the_core_its_chatter_only_with_privacy_mode_off() -> None:
    chatter = TG.text_update(-5, "the rest of a paste, mentioning nobody")
    # Privacy mode on: Telegram brings no chatter, and what comes anyway is not the core's.
    assert convert(chatter) is None
    reads_all = BotIdentity(id=ME.id, username=ME.username, reads_all_group_messages=True)
    msg = convert(chatter, reads_all)
    assert msg is not None and not msg.addressed_to_bot
