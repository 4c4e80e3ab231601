"""Streaming against a slow Bot API: previews are few and never hold the model up."""

from __future__ import annotations

import asyncio

import pytest

from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot

PREVIEW_METHODS = ("sendmessagedraft", "editmessagetext")


def _piece(i: int) -> str:
    return f"piece{i:02d}-" + "-".join(["lorem", "ipsum", "dolor", "sit", "amet"] * 2)


def _long_answer(pieces: int = 64) -> str:
    """About 4,400 characters in `pieces` model chunks: more than one Telegram message."""
    text = ""
    for i in range(pieces):
        text += _piece(i) + ("\n\n" if i % 8 == 7 else " ")
    return text.strip()


def _previews(bot: Bot, chat: int) -> int:
    return sum(1 for call in bot.telegram.api_calls if call.method in PREVIEW_METHODS)


def _ask(chat: int, text: str) -> str:
    return text if chat > 0 else f"@relay_test_bot {text}"


@pytest.mark.telegram_settings(reply_tokens=8000)
@pytest.mark.parametrize("chat", [PRIVATE_CHAT, GROUP], ids=["private", "group"])
async def test_a_slow_bot_api_gets_few_previews_and_the_whole_answer(bot: Bot, chat: int) -> None:
    # Each draft or edit takes 100 ms to answer (a slow Telegram, or the rate limiter's queue),
    # longer than the pause between previews. Previews must not pile up behind each other.
    answer = _long_answer()
    chunks = len(answer.split())
    bot.openai.queue_reply(answer)
    bot.openai.chunk_delay = 0.005
    for method in PREVIEW_METHODS:
        bot.telegram.delay(method, 0.1)

    await bot.deliver(bot.telegram.text_update(chat, _ask(chat, "write a lot")))

    log = bot.telegram.chat_log(chat)
    assert len(log) == 2, "the answer rolled over into a second message"
    assert all(m.parse_mode == "HTML" for m in log)
    assert " ".join(m.text for m in log).split() == answer.split(), "nothing lost or repeated"
    previews = _previews(bot, chat)
    assert 1 <= previews <= chunks // 3, f"{previews} previews for {chunks} chunks"
    if chat == PRIVATE_CHAT:
        assert bot.telegram.drafts, "the answer was previewed as drafts"
        assert all(answer.startswith(d.text) for d in bot.telegram.drafts[:1])


@pytest.mark.parametrize(
    ("chat", "preview"),
    [(PRIVATE_CHAT, "sendMessageDraft"), (GROUP, "editMessageText")],
    ids=["private-draft", "group-edit"],
)
async def test_the_model_stream_is_not_held_up_by_a_pending_preview(
    bot: Bot, chat: int, preview: str
) -> None:
    answer = " ".join(f"word{i}" for i in range(40))
    bot.openai.queue_reply(answer)
    bot.openai.chunk_delay = 0.005
    gate = bot.telegram.hold(preview)

    delivering = asyncio.create_task(
        bot.deliver(bot.telegram.text_update(chat, _ask(chat, "count")))
    )
    try:
        # The whole answer came out of the model, and relaybot moved on to moderating it,
        # while Telegram still had not answered the preview it was sent.
        await bot.telegram.wait_until(lambda: bot.telegram.held(preview) == 1)
        await bot.openai.moderated(answer)
        assert bot.telegram.held(preview) == 1
        shown = bot.telegram.texts(chat)  # a group sees the first preview; drafts are no message
        assert len(shown) == (0 if chat == PRIVATE_CHAT else 1)
        assert all(answer.startswith(text) for text in shown)
    finally:
        gate.set()
        await delivering

    assert bot.telegram.texts(chat) == [answer]
    calls = [c for c in bot.telegram.api_calls if c.method == preview.lower()]
    assert len(calls) <= 2, "one preview waited; then only the final text went out"
