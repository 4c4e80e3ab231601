"""The webhook drops an update python-telegram-bot cannot parse instead of failing on it.

Telegram sends an update again after any answer but a 2xx (a 4xx too: "In case of an
unsuccessful request (a request with response HTTP status code different from 2XY), we will
repeat the request", Bot API, setWebhook), holding back that chat's later updates meanwhile.
Seen before: `"message": "..."` or `"message": 5` raised AttributeError, answered 500.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.bots.telegram.conftest import PRIVATE_CHAT, Bot

SECRET_WORDS = "something private"


def spoil_message_as_text(update: dict[str, Any]) -> None:
    update["message"] = SECRET_WORDS


def spoil_message_as_number(update: dict[str, Any]) -> None:
    update["message"] = 5


def spoil_chat(update: dict[str, Any]) -> None:
    update["message"]["chat"] = SECRET_WORDS


@pytest.mark.parametrize("transport", ["webhook"])
@pytest.mark.parametrize(
    ("spoil", "error"),
    [
        (spoil_message_as_text, "AttributeError"),
        (spoil_message_as_number, "AttributeError"),
        (spoil_chat, "TypeError"),
    ],
)
async def test_an_update_that_cannot_be_parsed_is_acknowledged_logged_and_dropped(
    bot: Bot, caplog: pytest.LogCaptureFixture, spoil: Any, error: str
) -> None:
    caplog.set_level(logging.WARNING)
    tg = bot.telegram
    bad = tg.text_update(PRIVATE_CHAT, SECRET_WORDS)
    spoil(bad)
    bad_id = await tg.push_update(bad)

    # A 2xx: Telegram drops it, and the chat's later updates are not held back.
    assert tg.webhook_deliveries == [(bad_id, 200)]
    await bot.adapter.idle()
    assert tg.texts(PRIVATE_CHAT) == []
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "relaybot.telegram" and r.levelno == logging.WARNING
    ]
    assert warnings == [f"skipped Telegram update {bad_id}: it could not be parsed ({error})"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # The operator log shows neither the person's message nor the bot token.
    assert SECRET_WORDS not in caplog.text
    assert tg.token not in caplog.text

    # The bot goes on answering the chat.
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "still there?"))
    assert tg.texts(PRIVATE_CHAT) == ["echo: still there?"]
    assert [status for _, status in tg.webhook_deliveries] == [200, 200]


@pytest.mark.parametrize("transport", ["webhook"])
async def test_an_unparsable_update_without_a_readable_update_id_is_dropped_too(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    tg = bot.telegram
    bad = tg.text_update(PRIVATE_CHAT, SECRET_WORDS)
    bad["update_id"] = [bad["update_id"]]
    spoil_message_as_number(bad)
    assert await tg.deliver_webhook(bad) == 200
    await bot.adapter.idle()
    assert "skipped Telegram update without a readable update_id" in caplog.text
    assert SECRET_WORDS not in caplog.text
    assert tg.texts(PRIVATE_CHAT) == []
