"""A Bot API that answers late: what may have arrived is never sent a second time.

A send whose answer does not come in time (a read timeout) may still have been carried out
by Telegram: sent again, the person saw it twice. The adapter's timeout is shortened here
(`send_timeout`) so that the fake only has to be slow for a moment.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot

SEND_TIMEOUT = 0.5
pytestmark = pytest.mark.adapter(send_timeout=SEND_TIMEOUT)


async def late(
    bot: Bot, method: str, text: str, chat_id: int = PRIVATE_CHAT, timeouts: int = 1
) -> None:
    """Deliver `text`; calls of `method` are answered only after the adapter gave up on
    the first (once `timeouts` send timeouts have passed)."""
    tg = bot.telegram
    gate = tg.hold(method)
    update_id = await tg.push_update(tg.text_update(chat_id, text))
    await tg.wait_delivered(update_id)
    await tg.wait_until(lambda: tg.held(method) == 1)
    # The adapter timed out; Telegram carries the call out later.
    await asyncio.sleep(SEND_TIMEOUT * timeouts + 0.3)
    gate.set()
    await bot.adapter.idle()
    await asyncio.sleep(0.1)  # the late call, let through, is carried out
    assert tg.held(method) == 0


async def test_a_reply_answered_late_is_not_sent_again(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        await late(bot, "sendMessage", "/help")

    (help_text,) = bot.telegram.texts(PRIVATE_CHAT)  # once, and no error notice after it
    assert "/image" in help_text
    assert len(bot.telegram.calls("/sendMessage")) == 1
    assert "it may have arrived, so it is not sent again" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_picture_answered_late_is_not_sent_again(bot: Bot) -> None:
    await late(bot, "sendPhoto", "/image a lighthouse")

    log = bot.telegram.chat_log(PRIVATE_CHAT)
    assert [m.kind for m in log] == ["photo"], "one picture, not two, and no notice"
    assert bot.telegram.calls("/sendDocument") == []


async def test_a_preview_answered_late_gets_no_more_previews_and_the_answer_comes_once(
    bot: Bot,
) -> None:
    tg = bot.telegram
    bot.openai.chunk_delay = 0.1
    words = " ".join(f"word{i}" for i in range(40))
    bot.openai.queue_reply(words)

    # Telegram stays slow while the answer streams on: a preview sent meanwhile would be a
    # new message again (the first one's id is unknown), each left behind half written.
    await late(bot, "sendMessage", "@relay_test_bot count", chat_id=GROUP, timeouts=3)

    # The late preview arrived (we never learnt its id); nothing else was sent for it but
    # the finished answer.
    preview, answer = tg.texts(GROUP)
    assert words.startswith(preview) and preview != words
    assert answer == words
    assert len(tg.calls("/sendMessage")) == 2


async def test_a_send_whose_connection_was_dropped_unanswered_is_sent_again(bot: Bot) -> None:
    # A keep-alive connection the server (or a proxy) had closed: nothing was carried out.
    bot.telegram.hang_up_next("sendMessage")

    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "hello"))

    assert bot.telegram.texts(PRIVATE_CHAT) == ["echo: hello"]
    assert len(bot.telegram.calls("/sendMessage")) == 2


async def test_the_model_is_asked_while_telegram_is_still_showing_typing(bot: Bot) -> None:
    """Showing "typing…" is decoration: a Bot API slow to show it keeps no model waiting."""
    tg = bot.telegram
    gate = tg.hold("sendChatAction")
    await tg.push_update(tg.text_update(PRIVATE_CHAT, "hi"))

    await bot.openai.wait_for("/chat/completions", within=10)  # sendChatAction still held
    gate.set()
    await bot.adapter.idle()
    assert tg.texts(PRIVATE_CHAT) == ["echo: hi"]
