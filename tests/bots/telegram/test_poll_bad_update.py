"""Polling skips an update python-telegram-bot cannot parse instead of fetching it forever."""

from __future__ import annotations

import logging

import pytest

from tests.bots.telegram.conftest import PRIVATE_CHAT, Bot


def warnings_naming(caplog: pytest.LogCaptureFixture, update_id: int) -> list[str]:
    """The adapter's WARNING lines that name `update_id`."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "relaybot.telegram"
        and r.levelno == logging.WARNING
        and str(update_id) in r.getMessage()
    ]


async def test_a_malformed_update_between_two_messages_is_skipped_and_both_are_answered(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    tg = bot.telegram
    first = tg.text_update(PRIVATE_CHAT, "first")
    bad = tg.text_update(PRIVATE_CHAT, "something private")
    bad["message"]["chat"] = "oops"  # PTB's Chat.de_json raises TypeError
    second = tg.text_update(PRIVATE_CHAT, "second")
    # Queued without yielding to the poller: one getUpdates carries all three.
    first_id, bad_id, second_id = [await tg.push_update(u) for u in (first, bad, second)]
    assert first_id < bad_id < second_id

    await tg.wait_delivered(second_id)
    await bot.adapter.idle()
    assert tg.texts(PRIVATE_CHAT) == ["echo: first", "echo: second"]
    # Confirmed with the batch: getUpdates no longer returns it.
    assert tg.pending == []
    [warning] = warnings_naming(caplog, bad_id)
    assert "TypeError" in warning
    # The operator log shows neither the person's message nor the bot token.
    assert "something private" not in caplog.text
    assert tg.token not in caplog.text


async def test_a_malformed_update_alone_in_its_batch_is_confirmed(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    tg = bot.telegram
    bad = tg.text_update(PRIVATE_CHAT, "something private")
    bad["message"]["from"] = 5  # PTB's User.de_json raises TypeError
    bad_id = await tg.push_update(bad)

    await tg.wait_delivered(bad_id)
    assert tg.pending == []
    assert tg.texts(PRIVATE_CHAT) == []
    [warning] = warnings_naming(caplog, bad_id)
    assert "TypeError" in warning
    assert "something private" not in caplog.text

    # The bot goes on answering.
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "still there?"))
    assert tg.texts(PRIVATE_CHAT) == ["echo: still there?"]


async def test_an_update_without_a_readable_update_id_is_confirmed_by_the_next_one(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    """No offset confirms just that update (its id is unknown); the next update's does."""
    caplog.set_level(logging.WARNING)
    tg = bot.telegram
    bad = tg.text_update(PRIVATE_CHAT, "something private")
    bad["update_id"] = str(bad["update_id"])  # the fake still orders it; PTB reads a str
    await tg.push_update(bad)
    # The poller fetched it (alone) and skipped it.
    await tg.wait_until(lambda: "without a readable update_id (str)" in caplog.text)

    await bot.deliver(tg.text_update(PRIVATE_CHAT, "hello"))
    assert tg.texts(PRIVATE_CHAT) == ["echo: hello"]
    assert tg.pending == []
    assert "something private" not in caplog.text
