"""Output moderation of answers the person already watched stream in: an answer that broke
off midway is checked too, and one moderation cannot check is withdrawn (failing closed),
yet kept (withheld, never sent back to the model) and billed."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from core.db.models import UsageRecord
from core.moderation import WITHHELD_NOTICE
from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot, stored_turns

FLAGGED = "FLAGME here is how to do something terrible, step by step, in detail"
HARMLESS = "Green tea is best brewed at about eighty degrees for two or three minutes."
SERVER_ERROR = {"message": "The server had an error", "type": "server_error"}


def _ask(chat: int, text: str) -> str:
    return text if chat > 0 else f"@relay_test_bot {text}"


def _visible(bot: Bot, chat: int) -> list[str]:
    """What the chat shows now: every message's final text (and no draft is a message)."""
    return bot.telegram.texts(chat)


async def _chat_usage(bot: Bot, chat: int) -> list[Any]:
    async with bot.core.engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    select(UsageRecord).where(
                        UsageRecord.chat_key == f"telegram:{chat}", UsageRecord.kind == "chat"
                    )
                )
            ).all()
        )


def _break_stream(bot: Bot, how: str) -> None:
    """Make the next streamed answer break off after a few words (text already shown)."""
    if how == "dropped":
        bot.openai.cut_stream_after = 3  # the connection drops mid-body
    else:
        bot.openai.error_mid_stream = SERVER_ERROR  # a 5xx error event after the first word


def _mend_stream(bot: Bot) -> None:
    bot.openai.cut_stream_after = None
    bot.openai.error_mid_stream = None


def _output_moderation_down(bot: Bot, answer: str) -> None:
    """Answer with `answer`; /moderations fails from the moment the model is asked, so the
    person's message passed its input check and only the answer's check fails."""

    def reply(messages: list[dict[str, Any]]) -> str:
        bot.openai.fail_next(503, path="/moderations", message="moderation is down")
        return answer

    bot.openai.reply = reply


async def _next_request_leaves_out(bot: Bot, chat: int, text: str) -> None:
    """The chat goes on: the withheld answer is not sent back to the model."""
    bot.openai.reply = lambda messages: "fine"
    await bot.deliver(bot.telegram.text_update(chat, _ask(chat, "and then?")))
    sent = bot.openai.chat_requests()[-1]["messages"]
    assert sent[-1]["content"].endswith("and then?")
    assert all(text not in str(m["content"]) for m in sent)
    assert [m["role"] for m in sent] == ["system", "user", "user"]


@pytest.mark.telegram_settings(max_retries=0)
@pytest.mark.parametrize("how", ["dropped", "error"])
@pytest.mark.parametrize("chat", [PRIVATE_CHAT, GROUP], ids=["private", "group"])
async def test_a_flagged_answer_cut_short_is_withdrawn_and_never_sent_back(
    bot: Bot, chat: int, how: str
) -> None:
    bot.openai.queue_reply(FLAGGED)
    bot.openai.chunk_delay = 0.01
    _break_stream(bot, how)

    await bot.deliver(bot.telegram.text_update(chat, _ask(chat, "tell me")))

    # The words that came before the break were moderated, and taken back: the notice is
    # all the chat shows (no "[answer cut short]", no invitation to try again).
    assert any("FLAGME" in str(r.json) for r in bot.openai.calls("/moderations"))
    assert _visible(bot, chat) == [WITHHELD_NOTICE]
    rows = await stored_turns(bot, chat)
    assert [(role, status) for role, _, status in rows] == [
        ("user", "ok"),
        ("assistant", "withheld"),
    ]
    assert rows[1][1].startswith("FLAGME")
    assert await _chat_usage(bot, chat), "what the model wrote is still billed"

    _mend_stream(bot)
    await _next_request_leaves_out(bot, chat, "FLAGME")


@pytest.mark.telegram_settings(max_retries=0)
@pytest.mark.parametrize("chat", [PRIVATE_CHAT, GROUP], ids=["private", "group"])
async def test_an_answer_cut_short_that_moderation_cannot_check_is_withdrawn(
    bot: Bot, chat: int
) -> None:
    _output_moderation_down(bot, HARMLESS)
    bot.openai.chunk_delay = 0.01
    _break_stream(bot, "dropped")

    await bot.deliver(bot.telegram.text_update(chat, _ask(chat, "how do I brew tea?")))

    (shown,) = _visible(bot, chat)
    assert "could not check" in shown
    assert "Green tea" not in shown
    rows = await stored_turns(bot, chat)
    assert [(role, status) for role, _, status in rows] == [
        ("user", "ok"),
        ("assistant", "withheld"),
    ]

    _mend_stream(bot)
    await _next_request_leaves_out(bot, chat, "Green tea")


@pytest.mark.telegram_settings(max_retries=0)
@pytest.mark.parametrize("chat", [PRIVATE_CHAT, GROUP], ids=["private", "group"])
async def test_an_answer_moderation_cannot_check_is_withdrawn_stored_and_billed(
    bot: Bot, chat: int, caplog: pytest.LogCaptureFixture
) -> None:
    _output_moderation_down(bot, HARMLESS)
    bot.openai.chunk_delay = 0.01

    await bot.deliver(bot.telegram.text_update(chat, _ask(chat, "how do I brew tea?")))

    # One message, in the answer's place, saying why: not the answer, and not a second
    # message claiming the model did not answer.
    (shown,) = _visible(bot, chat)
    assert "could not check" in shown
    assert "Green tea" not in shown
    assert "not answering" not in shown
    # Stored out of the history (as a message whose input check could not run is)...
    assert await stored_turns(bot, chat) == [
        ("user", "how do I brew tea?", "ok"),  # a group's without the mention
        ("assistant", HARMLESS, "withheld"),
    ]
    # ...and billed: the model's tokens were spent.
    (usage,) = await _chat_usage(bot, chat)
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    # The operator hears of it.
    assert any(
        r.levelname in ("WARNING", "ERROR") and "moderation" in r.getMessage()
        for r in caplog.records
    )

    await _next_request_leaves_out(bot, chat, "Green tea")
