"""The per-person rate limit through the Telegram adapter: a burst up to the limit is
answered, the next is refused with the wait until the oldest leaves the minute."""

from __future__ import annotations

import pytest

from tests.bots.telegram.conftest import PRIVATE_CHAT, Bot

START = 1_800_000_020.0  # 20 s into a minute


@pytest.mark.telegram_settings(rate_limit_per_minute=5)
async def test_a_burst_of_five_is_answered_and_the_sixth_waits_for_the_oldest(bot: Bot) -> None:
    now = [START]
    bot.core.service.policy.limiter.clock = lambda: now[0]
    tg = bot.telegram
    for i in range(5):
        now[0] = START + i
        await bot.deliver(tg.text_update(PRIVATE_CHAT, f"burst {i}"))
    now[0] = START + 10
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "one too many"))
    # The first of the burst leaves the window at START + 60: the minute has room again.
    now[0] = START + 60
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "later"))

    assert tg.texts(PRIVATE_CHAT) == [
        *(f"echo: burst {i}" for i in range(5)),
        "Slow down a little: you can send 5 messages a minute. Try again in about 50 s.",
        "echo: later",
    ]
    asked = [r.json["messages"][-1]["content"] for r in bot.openai.calls("/chat/completions")]
    assert "one too many" not in asked
