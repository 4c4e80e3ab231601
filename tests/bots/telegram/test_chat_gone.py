"""A chat that changes under an answer: upgraded to a supergroup, or closed to the bot."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from core.db.models import InboundEvent
from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot

BASIC_GROUP = -4001
SUPERGROUP = -1004001


async def test_an_answer_for_a_group_upgraded_meanwhile_goes_to_the_supergroup(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    tg = bot.telegram
    update = tg.text_update(BASIC_GROUP, "@relay_test_bot hi", chat_type="group")
    tg.migrate(BASIC_GROUP, SUPERGROUP)  # after the person wrote, before the bot answers

    with caplog.at_level(logging.INFO):
        await bot.deliver(update)

    assert tg.texts(SUPERGROUP) == ["echo: hi"]
    assert tg.texts(BASIC_GROUP) == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_notice_for_a_group_upgraded_meanwhile_goes_to_the_supergroup(bot: Bot) -> None:
    tg = bot.telegram
    update = tg.text_update(BASIC_GROUP, "/help@relay_test_bot", chat_type="group")
    tg.migrate(BASIC_GROUP, SUPERGROUP)

    await bot.deliver(update)

    (help_text,) = tg.texts(SUPERGROUP)
    assert "/image" in help_text


async def statuses(bot: Bot) -> list[str]:
    async with bot.core.engine.connect() as conn:
        result = await conn.execute(select(InboundEvent.status).order_by(InboundEvent.id))
        return list(result.scalars().all())


@pytest.mark.parametrize(
    ("chat", "text", "refusal"),
    [
        (GROUP, "@relay_test_bot hi", "Forbidden: bot was kicked from the supergroup chat"),
        (PRIVATE_CHAT, "hi", "Forbidden: bot was blocked by the user"),
        (PRIVATE_CHAT, "/help", "Forbidden: bot was blocked by the user"),
    ],
    ids=["kicked-streamed", "blocked-streamed", "blocked-notice"],
)
async def test_a_chat_closed_to_the_bot_mid_answer_is_one_log_line_and_no_retries(
    bot: Bot, caplog: pytest.LogCaptureFixture, chat: int, text: str, refusal: str
) -> None:
    tg = bot.telegram
    bot.openai.chunk_delay = 0.02
    for method in ("sendMessage", "sendMessageDraft", "editMessageText"):
        tg.fail_next(method, error_code=403, description=refusal, times=10)

    with caplog.at_level(logging.INFO):
        await bot.deliver(tg.text_update(chat, text))

    assert tg.texts(chat) == []
    gone = [r for r in caplog.records if "cannot write to Telegram chat" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.WARNING
    assert refusal.removeprefix("Forbidden: ") in gone[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.exc_info], "no traceback"
    assert "could not deliver a notice" not in caplog.text
    # No error notice was tried after the refusal; the message is closed for good.
    refused = [c for c in tg.api_calls if c.error_code == 403]
    assert len(refused) == 1
    assert await statuses(bot) == ["done"]
