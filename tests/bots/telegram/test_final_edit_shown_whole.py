"""A group answer streams by editing one message; its last edit fails (every try).

When the message as last shown already held all the answer's text (its preview was up to
date, only the final edit's formatting could have differed), the person has read the whole
answer: it is stored as answered and nobody is told to /retry. When the message showed only
part of it, the answer stays partial and the person is told how to get the rest.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.bots.telegram.conftest import GROUP, Bot, stored_turns

pytestmark = pytest.mark.usefixtures("quick_backoff")  # Telegram's 5xx back-off
ANSWER = "Brew green tea at **eighty degrees**, not boiling."
SHOWN = "Brew green tea at eighty degrees, not boiling."  # as the person reads it
TOLD = "Telegram did not take the whole answer. Send /retry in a minute to get it again."
EDIT_TRIES = 4  # how often the sink tries a finished message's edit on a 502


async def _ask(bot: Bot, asked: str, shows: Callable[[str], bool], failures: int) -> None:
    """Ask in the group; once the answer's message `shows` its text as wanted, Telegram
    refuses the next `failures` edits."""
    tg = bot.telegram
    before = len(tg.texts(GROUP))
    bot.openai.queue_reply(ANSWER)
    # The model waits this long between words, and after the last one before it is done:
    # time enough to see the message show it, and to break Telegram.
    bot.openai.chunk_delay = 0.3
    await tg.push_update(tg.text_update(GROUP, f"@relay_test_bot {asked}"))
    await tg.wait_until(lambda: len(tg.texts(GROUP)) > before and shows(tg.texts(GROUP)[-1]))
    tg.fail_next("editMessageText", error_code=502, description="Bad Gateway", times=failures)
    await bot.adapter.idle()


async def test_an_answer_whose_last_edit_failed_counts_as_read_only_when_shown_whole(
    bot: Bot,
) -> None:
    tg = bot.telegram
    # The message showed all of the answer: only its closing edit failed.
    await _ask(bot, "how hot for green tea?", lambda text: text == SHOWN, EDIT_TRIES)

    assert tg.texts(GROUP) == [SHOWN], "no notice to /retry"
    refused = [c for c in tg.api_calls if c.method == "editmessagetext" and c.error_code == 502]
    assert len(refused) == EDIT_TRIES
    assert await stored_turns(bot, GROUP) == [
        ("user", "how hot for green tea?", "ok"),
        ("assistant", ANSWER, "ok"),
    ]

    # The message showed only part of the answer when every later edit failed.
    await _ask(bot, "and how long?", lambda text: text != SHOWN, 1000)

    first, shown, told = tg.texts(GROUP)
    assert first == SHOWN
    assert SHOWN.startswith(shown.rstrip()) and shown != SHOWN
    assert told == TOLD
    assert await stored_turns(bot, GROUP) == [
        ("user", "how hot for green tea?", "ok"),
        ("assistant", ANSWER, "ok"),
        ("user", "and how long?", "ok"),
        ("assistant", ANSWER, "partial"),
    ]
