"""Telegram refusing a finished answer: its last send fails, or one part of a long answer
fails while the rest streams in. The model's work is kept (as a partial answer) and billed
all the same, the person sees no answer with a hole in it, and one notice tells them how to
get the answer."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from core.db.models import UsageRecord
from tests.bots.telegram.conftest import PRIVATE_CHAT, Bot, stored_turns

pytestmark = pytest.mark.usefixtures("quick_backoff")  # Telegram's 5xx back-off
ANSWER = "Green tea is best brewed at about eighty degrees for two or three minutes."
TOLD = "Telegram did not take the whole answer. Send /retry in a minute to get it again."


async def _chat_usage(bot: Bot) -> list[Any]:
    async with bot.core.engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    select(UsageRecord).where(
                        UsageRecord.chat_key == f"telegram:{PRIVATE_CHAT}",
                        UsageRecord.kind == "chat",
                    )
                )
            ).all()
        )


@pytest.mark.parametrize(
    "refusal",
    ["bad-gateway", "flood-wait"],
    ids=["telegram-fails-every-try", "telegram-asks-for-a-minute"],
)
async def test_an_answer_telegram_would_not_take_is_kept_billed_and_the_person_told_to_retry(
    bot: Bot, refusal: str
) -> None:
    tg = bot.telegram
    bot.openai.queue_reply(ANSWER)
    if refusal == "bad-gateway":
        tg.fail_next("sendMessage", error_code=502, description="Bad Gateway", times=4)
    else:
        tg.rate_limit_next("sendMessage", retry_after=61)  # longer than an answer waits
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "how hot should green tea be?"))

    assert tg.texts(PRIVATE_CHAT) == [TOLD]
    assert await stored_turns(bot) == [
        ("user", "how hot should green tea be?", "ok"),
        ("assistant", ANSWER, "partial"),
    ]
    (usage,) = await _chat_usage(bot)
    assert usage.completion_tokens > 0

    # /retry gets the answer (the one that never arrived makes way for it).
    bot.openai.queue_reply(ANSWER)
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/retry"))
    assert tg.texts(PRIVATE_CHAT) == [TOLD, ANSWER]
    assert await stored_turns(bot) == [
        ("user", "how hot should green tea be?", "ok"),
        ("assistant", ANSWER, "ok"),
    ]
    assert len(await _chat_usage(bot)) == 2


@pytest.mark.telegram_settings(reply_tokens=8000)
async def test_after_a_part_of_a_long_answer_fails_no_later_part_is_sent(bot: Bot) -> None:
    tg = bot.telegram
    words = " ".join(f"word{i}" for i in range(1500))  # three messages and more
    bot.openai.queue_reply(words)
    bot.openai.chunk_delay = 0.005
    # The first part's send fails, every time, while the model goes on writing.
    tg.fail_next("sendMessage", error_code=502, description="Bad Gateway", times=4)
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "count to fifteen hundred"))

    # No later part stands there without its beginning: one notice says what happened.
    assert tg.texts(PRIVATE_CHAT) == ["The answer was cut short: " + TOLD]
    (question, (role, content, status)) = await stored_turns(bot)
    assert question == ("user", "count to fifteen hundred", "ok")
    assert (role, status) == ("assistant", "partial")
    assert content.startswith("word0 word1 ") and words.startswith(content)
    assert len(await _chat_usage(bot)) == 1
