"""Private chats: every message is answered, streamed as drafts, then sent for good."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.db.models import UsageRecord
from core.tokens import counter_for
from tests.bots.telegram.conftest import PRIVATE_CHAT, Bot


@pytest.mark.parametrize("transport", ["polling", "webhook"])
async def test_a_private_message_is_streamed_as_drafts_then_answered(bot: Bot) -> None:
    bot.openai.chunk_delay = 0.01
    bot.openai.queue_reply("Lisbon is **sunny** today, with a light breeze from the sea.")

    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "What's the weather in Lisbon?"))

    log = bot.telegram.chat_log(PRIVATE_CHAT)
    assert [m.text for m in log] == ["Lisbon is sunny today, with a light breeze from the sea."]
    assert log[0].entities == [{"type": "bold", "offset": 10, "length": 5}]
    assert log[0].reply_to is not None
    drafts = [d for d in bot.telegram.drafts if d.chat_id == PRIVATE_CHAT]
    assert len(drafts) >= 2, "the answer should have been previewed while it streamed"
    assert all(d.text and "Lisbon is sunny today".startswith(d.text[:10]) for d in drafts)
    assert bot.telegram.calls("/editMessageText") == []
    assert any(a["action"] == "typing" for a in bot.telegram.chat_actions)


async def test_an_endpoint_refusing_stream_options_still_answers_and_counts_usage(
    bot: Bot,
) -> None:
    bot.openai.reject_stream_options = True  # e.g. Azure OpenAI's older API versions
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "count me in"))
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "/usage"))

    answer, report = bot.telegram.texts(PRIVATE_CHAT)
    assert answer == "echo: count me in"
    assert "(1 request)" in report
    async with bot.core.engine.connect() as conn:
        (row,) = (await conn.execute(select(UsageRecord))).all()
    # No usage came with the stream: relaybot counted the request and answer itself (the
    # fake, asked for usage, reports words: 4 here).
    assert row.prompt_tokens > 0
    assert row.completion_tokens == counter_for(row.model).count(answer) == 5
