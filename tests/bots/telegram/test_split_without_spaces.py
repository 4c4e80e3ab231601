"""User stories: a long answer with no spaces to cut at (Chinese, Japanese) is split into
messages that keep its bold whole: no message shows half a "**...**" as asterisks."""

from __future__ import annotations

import pytest

from bots.telegram.formatting import split_markdown
from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot

# No spaces, no newlines: no word or line break anywhere to cut at.
ANSWER = "字" * 9 + ("这是一个很长的句子" * 3 + "**重要的内容**") * 300


@pytest.mark.telegram_settings(reply_tokens=16000)
@pytest.mark.parametrize("chat", [PRIVATE_CHAT, GROUP], ids=["private", "group"])
async def test_a_long_chinese_paragraph_keeps_its_bold_spans_whole(bot: Bot, chat: int) -> None:
    bot.openai.queue_reply(ANSWER)
    text = "写长一点" if chat > 0 else "@relay_test_bot 写长一点"
    await bot.deliver(bot.telegram.text_update(chat, text))

    log = bot.telegram.chat_log(chat)
    assert len(log) >= 2
    for message in log:
        assert message.parse_mode == "HTML"
        assert "*" not in message.text, f"literal asterisks: ...{message.text[-12:]!r}"
    shown = "".join(message.text for message in log)
    assert shown == ANSWER.replace("**", ""), "every character once, in order"
    bold = [e for message in log for e in message.entities if e["type"] == "bold"]
    assert len(bold) == 300


def test_a_row_of_flags_is_split_between_flags() -> None:
    answer = "Flags: " + "\U0001f1eb\U0001f1f7\U0001f1e9\U0001f1ea" * 2000  # 🇫🇷🇩🇪, no spaces
    parts = split_markdown(answer)
    assert len(parts) >= 2 and "".join(parts) == answer
    for part in parts:
        indicators = sum(1 for c in part if "\U0001f1e6" <= c <= "\U0001f1ff")
        assert indicators % 2 == 0, f"a part ends inside a flag: {part[-2:]!r}"
