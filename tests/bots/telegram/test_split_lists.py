"""A long answer continued in a further message keeps its lists looking like lists: items
nested under one of a list's items are not shown as a code block in the next message."""

from __future__ import annotations

import pytest

from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot

DETAILS = [f"detail {i} of the big step with words words words words" for i in range(1, 120)]


def nested_list() -> str:
    lines = ["1. One big step with many details:"]
    lines += [f"    - {detail}" for detail in DETAILS]
    lines.append("2. The end")
    return "\n".join(lines)


@pytest.mark.telegram_settings(reply_tokens=8000)
@pytest.mark.parametrize("chat", [PRIVATE_CHAT, GROUP], ids=["private", "group"])
async def test_a_nested_list_continued_in_a_second_message_stays_a_list(
    bot: Bot, chat: int
) -> None:
    bot.openai.queue_reply(nested_list())
    text = "go" if chat > 0 else "@relay_test_bot go"

    await bot.deliver(bot.telegram.text_update(chat, text))

    first, second = bot.telegram.chat_log(chat)
    assert not [e for m in (first, second) for e in m.entities if e["type"] in ("pre", "code")]
    assert first.text.startswith("1. One big step with many details:\n  • detail 1 of")
    # The next message goes on under the item it continues, each detail as a bullet.
    assert second.text.startswith("1. …\n  • detail ")
    assert second.text.endswith(f"  • {DETAILS[-1]}\n2. The end")
    shown = [line for m in (first, second) for line in m.text.split("\n")]
    assert [line for line in shown if line.startswith("  • ")] == [f"  • {d}" for d in DETAILS]


@pytest.mark.telegram_settings(reply_tokens=8000)
async def test_long_indented_code_continued_in_a_second_message_stays_code(bot: Bot) -> None:
    code = "\n".join(f"    total = total + {i}  # adding number {i} to it" for i in range(150))
    bot.openai.queue_reply(f"Here it is:\n\n{code}")

    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "go"))

    first, second = bot.telegram.chat_log(PRIVATE_CHAT)
    assert [e["type"] for e in first.entities] == ["pre"]
    assert [e["type"] for e in second.entities] == ["pre"]
    assert second.text.startswith("total = total + ")
    assert "total = total + 149  # adding number 149 to it" in second.text
