"""An answer that breaks off midway: the error that broke it is still what it was (a quota
used up alerts the operator, and is counted as such), and the note after the cut reads as a
note, even where the answer stopped inside a code block."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from core.db.models import UsageRecord
from tests.bots.telegram.conftest import PRIVATE_CHAT, Bot, stored_turns


async def test_a_quota_used_up_midway_alerts_the_operator_and_the_person_hears_so(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    bot.openai.queue_reply("one two three four five six")
    bot.openai.error_mid_stream = {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "code": "insufficient_quota",
    }
    with caplog.at_level(logging.INFO):
        await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "count to six"))

    assert bot.telegram.texts(PRIVATE_CHAT) == [
        "one\n\n[answer cut short]",
        "The answer was cut short: The bot's model quota is used up. The operator has been told.",
    ]
    (alert,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert alert.startswith("operator action needed: QuotaExhausted: ")
    assert "insufficient_quota" in alert
    registry = bot.core.service.metrics.registry
    counted = {"platform": "telegram", "kind": "QuotaExhausted"}
    assert registry.get_sample_value("relaybot_errors_total", counted) == 1
    assert await stored_turns(bot) == [
        ("user", "count to six", "ok"),
        ("assistant", "one ", "partial"),
    ]
    async with bot.core.engine.connect() as conn:
        assert len((await conn.execute(select(UsageRecord))).all()) == 1


CODE = "Here:\n\n```python\nx = 1\ny = 2\nz = 3\nw = 4\n```\n\nDone now."


@pytest.mark.telegram_settings(max_retries=0)
@pytest.mark.parametrize(
    ("stop", "note"),
    [("cut", "[answer cut short]"), ("length", "[cut off at the reply length limit]")],
    ids=["stream-cut", "reply-limit"],
)
async def test_a_note_after_an_answer_that_stopped_inside_code_is_not_shown_as_code(
    bot: Bot, stop: str, note: str
) -> None:
    if stop == "cut":
        bot.openai.queue_reply(CODE)
        bot.openai.cut_stream_after = 6  # inside the code block
    else:
        bot.openai.queue_reply(CODE.split("z = 3")[0])
        bot.openai.finish_reason = "length"
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "some code, please"))

    answer = bot.telegram.chat_log(PRIVATE_CHAT)[0]
    (code,) = [e for e in answer.entities if e["type"] == "pre"]
    shown = answer.text[code["offset"] : code["offset"] + code["length"]]
    assert shown.startswith("x = 1\ny")
    assert "```" not in answer.text
    assert answer.text.endswith("\n\n" + note)
    assert note not in shown


@pytest.mark.telegram_settings(max_retries=0)
async def test_a_note_after_code_cut_inside_a_list_item_is_not_shown_as_code(bot: Bot) -> None:
    """Models write steps as a list with code under an item, its fence indented: the note
    after an answer stopped there reads as words too."""
    code = "Steps:\n\n1. Install:\n\n   ```bash\n   pip install relaybot\n   relaybot doctor\n"
    bot.openai.queue_reply(code)
    bot.openai.finish_reason = "length"
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "how do I install it?"))

    (answer,) = bot.telegram.chat_log(PRIVATE_CHAT)
    note = "[cut off at the reply length limit]"
    shown_as_code = [
        answer.text[e["offset"] : e["offset"] + e["length"]]
        for e in answer.entities
        if e["type"] in ("pre", "code")
    ]
    assert answer.text.endswith(note)
    assert not any(note in code for code in shown_as_code)
    assert any("pip install relaybot" in code for code in shown_as_code)
