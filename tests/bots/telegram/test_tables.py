"""Markdown tables, and formatting Telegram refuses for other reasons than its syntax."""

from __future__ import annotations

import logging

import pytest

from tests.bots.telegram.conftest import PRIVATE_CHAT, Bot


async def test_a_table_is_shown_as_aligned_columns(bot: Bot) -> None:
    bot.openai.queue_reply(
        "Cities:\n\n| City | Pop (M) |\n|------|--------:|\n"
        "| Oslo | 0.7 |\n| 東京 | **13.9** |\n\nThat is all."
    )
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "table please"))

    (msg,) = bot.telegram.chat_log(PRIVATE_CHAT)
    assert msg.text == (
        "Cities:\n\nCity | Pop (M)\n-----+--------\nOslo |     0.7\n東京 |    13.9\n\nThat is all."
    )
    (pre,) = [e for e in msg.entities if e["type"] == "pre"]
    assert msg.text[pre["offset"] :].startswith("City")


async def test_a_table_longer_than_a_message_repeats_its_head_row_in_the_next(bot: Bot) -> None:
    rows = "\n".join(f"|row{i}|value{i}|" for i in range(320))  # few words: no max_tokens cut
    bot.openai.queue_reply("|Name|Value|\n|---|---|\n" + rows)
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "a long table"))

    log = bot.telegram.chat_log(PRIVATE_CHAT)
    assert len(log) == 2
    for msg in log:
        assert msg.text.startswith("Name   | Value\n-------+---------\nrow")
        assert "|---" not in msg.text
        assert [e["type"] for e in msg.entities] == ["pre"]
    shown = "\n".join(msg.text for msg in log)
    assert all(f"row{i} " in shown for i in range(320))
    assert log[-1].text.endswith("row319 | value319")


@pytest.mark.parametrize("answer", ["#", "![](https://example.com/a.png)", "` `"])
async def test_an_answer_whose_formatting_shows_nothing_is_sent_as_it_was_written(
    bot: Bot, answer: str
) -> None:
    bot.openai.queue_reply(answer)
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "say something odd"))

    assert bot.telegram.texts(PRIVATE_CHAT) == [answer]


@pytest.mark.parametrize("method", ["sendMessage", "editMessageText"])
@pytest.mark.parametrize(
    "refusal", ["Bad Request: ENTITIES_TOO_LONG", "Bad Request: message text is empty"]
)
async def test_formatting_telegram_refuses_falls_back_to_plain_text(
    bot: Bot, caplog: pytest.LogCaptureFixture, method: str, refusal: str
) -> None:
    # Real Telegram refuses a text whose entities are too long in all (many long links:
    # tdlib/telegram-bot-api#165) with ENTITIES_TOO_LONG, not a parse error.
    links = "\n".join(f"- [source {i}](https://example.com/{'a' * 150}/{i})" for i in range(20))
    answer = "Sources:\n\n" + links
    bot.openai.queue_reply(answer)
    bot.telegram.fail_next(method, description=refusal)

    with caplog.at_level(logging.WARNING):
        # editMessageText: a group's answer is a message edited as it streams.
        chat = PRIVATE_CHAT if method == "sendMessage" else -1002003004005
        text = "sources?" if method == "sendMessage" else "@relay_test_bot sources?"
        await bot.deliver(bot.telegram.text_update(chat, text))

    texts = bot.telegram.texts(chat)
    assert len(texts) == 1
    assert "source 19" in texts[0] and "[source" in texts[0]
    assert "Telegram refused our HTML" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
