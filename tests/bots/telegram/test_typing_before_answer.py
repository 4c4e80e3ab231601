"""A slow sendChatAction against a fast model: "typing…" must not show under the answer.

Telegram shows a chat action for about 5 s from when it carries it out, even under a message
sent before it. "typing…" is sent in the background (the model is not kept waiting for it),
so the answer's first message (or draft) waits for the call in flight, briefly, instead of
racing ahead of it. What the fake can tell: when it received each call (`at`) and when it
carried it out and answered (`answered`).
"""

from __future__ import annotations

import pytest

from core.testing.fake_telegram import ApiCall, FakeTelegram
from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot

SHOWN = ("sendmessage", "sendmessagedraft")  # what puts the answer in front of the person
TYPING_WAIT = 2.0  # the longest the answer waits for a typing call (the sink's TYPING_WAIT)


def _calls(tg: FakeTelegram) -> tuple[list[ApiCall], ApiCall]:
    """The sendChatAction calls, and the answer's first visible call."""
    actions = [c for c in tg.api_calls if c.method == "sendchataction"]
    first = next(c for c in tg.api_calls if c.method in SHOWN)
    return actions, first


@pytest.mark.parametrize(
    "chat_id", [PRIVATE_CHAT, GROUP], ids=["private-chat-drafts", "group-edited-message"]
)
async def test_typing_answered_late_is_carried_out_before_the_answer_shows(
    bot: Bot, chat_id: int
) -> None:
    tg = bot.telegram
    tg.delay("sendChatAction", 1.0)  # the model answers within milliseconds
    bot.openai.queue_reply("Eighty degrees.")

    await bot.deliver(tg.text_update(chat_id, "@relay_test_bot how hot for green tea?"))

    assert tg.texts(chat_id) == ["Eighty degrees."]
    actions, first = _calls(tg)
    assert actions, "typing was shown"
    # (A call the sink gave up on may still be carried out by Telegram, later.)
    await tg.wait_until(lambda: all(a.answered is not None for a in actions), within=5)
    for action in actions:
        assert action.answered is not None
        assert action.answered <= first.at, "a typing call was carried out after the answer"
    # The answer was held back only for as long as the typing call took.
    assert first.at - actions[0].at < TYPING_WAIT


async def test_typing_that_hangs_holds_the_answer_back_only_briefly(bot: Bot) -> None:
    tg = bot.telegram
    gate = tg.hold("sendChatAction")  # far longer than an answer waits for it
    bot.openai.queue_reply("Eighty degrees.")
    try:
        await bot.deliver(tg.text_update(PRIVATE_CHAT, "how hot for green tea?"))

        assert tg.texts(PRIVATE_CHAT) == ["Eighty degrees."]
        (action,), first = _calls(tg)  # and no typing call after the first
        assert action.answered is None, "the typing call was still hanging"
        # The answer waited for the typing call, but no longer than TYPING_WAIT.
        assert TYPING_WAIT - 0.25 <= first.at - action.at <= TYPING_WAIT + 1.0
    finally:
        gate.set()
