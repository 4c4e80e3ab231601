"""How updates arrive: redeliveries are answered once, the webhook trusts only Telegram."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from telegram import Update

from tests.bots.telegram.conftest import PRIVATE_CHAT, WEBHOOK_SECRET, Bot


@pytest.mark.parametrize("transport", ["webhook"])
async def test_the_webhook_is_registered_with_its_secret(bot: Bot) -> None:
    assert bot.telegram.webhook is not None
    assert bot.telegram.webhook["url"] == "https://relaybot.example/telegram/webhook"
    assert bot.telegram.webhook["secret_token"] == WEBHOOK_SECRET
    assert bot.telegram.calls("/getUpdates") == [], "no polling in webhook mode"


@pytest.mark.parametrize("transport", ["webhook"])
@pytest.mark.parametrize("secret", ["wrong-secret", ""], ids=["wrong", "missing"])
async def test_a_webhook_call_without_the_right_secret_gets_403_and_no_work(
    bot: Bot, secret: str
) -> None:
    update = bot.telegram.text_update(PRIVATE_CHAT, "let me in")
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {}

    async with (
        aiohttp.ClientSession() as session,
        session.post(bot.webhook_url, json=update, headers=headers) as resp,
    ):
        assert resp.status == 403
    await bot.adapter.idle()

    assert bot.telegram.chat_log(PRIVATE_CHAT) == []
    assert bot.openai.requests == []
    assert await bot.stored(f"telegram:{PRIVATE_CHAT}") == []


@pytest.mark.parametrize("transport", ["webhook"])
async def test_a_webhook_redelivery_is_answered_once(bot: Bot) -> None:
    update = bot.telegram.text_update(PRIVATE_CHAT, "only once please")

    await bot.deliver(update)
    assert await bot.telegram.deliver_webhook(update) == 200, "Telegram must see success"
    await bot.adapter.idle()

    assert bot.telegram.texts(PRIVATE_CHAT) == ["echo: only once please"]
    assert len(bot.openai.chat_requests()) == 1


async def test_a_message_delivered_again_by_polling_is_answered_once(bot: Bot) -> None:
    update = bot.telegram.text_update(PRIVATE_CHAT, "only once please")
    await bot.deliver(update)
    again = {**update, "update_id": update["update_id"] + 1}
    await bot.deliver(again)

    assert bot.telegram.texts(PRIVATE_CHAT) == ["echo: only once please"]
    assert len(bot.openai.chat_requests()) == 1


@pytest.mark.parametrize("transport", ["polling", "webhook"])
async def test_the_bot_token_never_reaches_the_logs(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "hello"))

    assert bot.telegram.texts(PRIVATE_CHAT) == ["echo: hello"]
    assert caplog.records, "something was logged"
    assert bot.telegram.token not in caplog.text
    assert bot.telegram.token.split(":", 1)[1] not in caplog.text


async def test_a_stored_message_is_restored_with_working_downloads_after_a_restart(
    bot: Bot, voice_note: bytes
) -> None:
    from bots.telegram import TelegramSink
    from core.inbox import decode_message, encode_message

    update = bot.telegram.voice_update(PRIVATE_CHAT, voice_note)
    live = bot.adapter._translate(Update.de_json(update, bot.adapter.application.bot))
    assert live is not None
    stored = decode_message(live[0].event_key, encode_message(live[0]))

    restored = bot.adapter.restore(stored)

    assert restored is not None
    msg, sink = restored
    assert await msg.attachments[0].fetch() == voice_note
    assert isinstance(sink, TelegramSink)
    assert (sink.chat_id, sink.private) == (PRIVATE_CHAT, True)
    assert sink.reply_to == update["message"]["message_id"]
