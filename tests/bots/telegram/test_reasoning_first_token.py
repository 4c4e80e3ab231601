"""A reasoning model thinks in silence: OpenAI's Chat Completions stream sends nothing (no
response head, no event) until the model has thought (60-300 s for the o-series and gpt-5
at high effort). The wait for a stream's first bytes is RELAYBOT_FIRST_TOKEN_TIMEOUT, not the
wait between chunks (RELAYBOT_STREAM_IDLE_TIMEOUT) nor httpx's read timeout
(RELAYBOT_REQUEST_TIMEOUT); a stream silent past it is not asked again (the model may still
be thinking, and each request is billed for its input). Times are scaled down here.
"""

from __future__ import annotations

import logging

import pytest

from bots.telegram import Pacing
from tests.bots.telegram.conftest import PRIVATE_CHAT, Bot

# Between chunks and per HTTP read: 0.5 s. At the start: 2 s.
QUICK = {"request_timeout": 0.5, "stream_idle_timeout": 0.5, "max_retries": 2}


# As README says for reasoning models: room for the thinking in RELAYBOT_REPLY_TOKENS.
@pytest.mark.telegram_settings(**QUICK, first_token_timeout=2.0, reply_tokens=8192)
async def test_a_think_longer_than_the_idle_timeout_is_waited_for_and_answered_whole(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    bot.openai.queue_reply("the answer after a long think")
    bot.openai.reasoning_tokens = 3000
    bot.openai.think_seconds = 1.2  # past the idle and read timeouts, within the first wait

    with caplog.at_level(logging.INFO):
        await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "prove it"))

    assert bot.telegram.texts(PRIVATE_CHAT) == ["the answer after a long think"]
    assert len(bot.openai.chat_requests()) == 1  # asked (and billed) once
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.telegram_settings(**QUICK, first_token_timeout=1.0)
async def test_a_think_past_the_first_token_timeout_is_told_once_and_not_asked_again(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    bot.openai.queue_reply("an answer nobody waits for")
    bot.openai.think_seconds = 2.0

    with caplog.at_level(logging.INFO):
        await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "prove it"))

    assert bot.telegram.texts(PRIVATE_CHAT) == [
        "The model took too long to start answering. Please try again, or ask something shorter."
    ]
    assert len(bot.openai.chat_requests()) == 1  # not sent again: each try is billed
    failed = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failed) == 1, failed
    assert "the model sent nothing for 1 s" in failed[0]
    assert "raise RELAYBOT_FIRST_TOKEN_TIMEOUT" in failed[0]
    assert "retry" not in caplog.text


@pytest.mark.telegram_settings(**QUICK, first_token_timeout=4.0)
@pytest.mark.adapter(pacing=Pacing(typing_refresh=0.3, typing_max=0.5))
async def test_typing_is_kept_up_while_the_model_thinks(bot: Bot) -> None:
    # "typing…" lasts as long as relaybot waits for the first words, however short the
    # adapter's own cap: the person sees the bot at work through the whole think.
    bot.openai.queue_reply("the answer after a long think")
    bot.openai.think_seconds = 2.5

    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "prove it"))

    calls = bot.telegram.api_calls
    typing = [c.at for c in calls if c.method == "sendchataction"]
    (answered,) = [c.at for c in calls if c.method == "sendmessage"]
    assert len(typing) >= 6
    assert answered - typing[-1] < 1.0, "still typing when the answer came"
