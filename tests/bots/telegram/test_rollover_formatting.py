"""A long answer rolls over into several messages: a cut never breaks bold, a link or an
emoji in two, whether the answer is complete or still arriving when it is cut."""

from __future__ import annotations

from typing import Any

import pytest

from bots.telegram.formatting import SEGMENT_UTF16, markdown_to_html, split_once, utf16_len
from core.testing.fake_telegram import SentMessage, parse_html
from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot

BOLD = ("this is an important bold sentence that goes on " * 20 + "end").strip()
LINK_TEXT = "a link with several words in it"
FAMILY = "👨\u200d👩\u200d👧\u200d👦"  # one emoji: four people joined by zero-width joiners


def _ask(chat: int) -> str:
    return "write a lot" if chat > 0 else "@relay_test_bot write a lot"


def _entity_text(message: SentMessage, entity: dict[str, Any]) -> str:
    encoded = message.text.encode("utf-16-le")
    start, end = entity["offset"] * 2, (entity["offset"] + entity["length"]) * 2
    return encoded[start:end].decode("utf-16-le")


def _words(messages: list[SentMessage]) -> list[str]:
    return " ".join(m.text for m in messages).split()


@pytest.mark.telegram_settings(reply_tokens=8000)
@pytest.mark.parametrize("chat", [PRIVATE_CHAT, GROUP], ids=["private", "group"])
async def test_bold_text_across_the_rollover_stays_bold(bot: Bot, chat: int) -> None:
    answer = "intro " * 600 + "**" + BOLD + "**" + " outro" * 10
    bot.openai.queue_reply(answer)
    bot.openai.chunk_delay = 0.001

    await bot.deliver(bot.telegram.text_update(chat, _ask(chat)))

    log = bot.telegram.chat_log(chat)
    assert len(log) == 2
    assert not any("**" in m.text for m in log), "Markdown asterisks shown"
    bold = [_entity_text(m, e) for m in log for e in m.entities if e["type"] == "bold"]
    assert bold == [BOLD], "the whole sentence is bold, in one message"
    assert _words(log) == answer.replace("**", "").split()


@pytest.mark.telegram_settings(reply_tokens=8000)
@pytest.mark.parametrize("chat", [PRIVATE_CHAT, GROUP], ids=["private", "group"])
async def test_a_link_across_the_rollover_stays_a_link(bot: Bot, chat: int) -> None:
    answer = "word " * 775 + f"[{LINK_TEXT}](https://example.com/page) after"
    bot.openai.queue_reply(answer)
    bot.openai.chunk_delay = 0.001

    await bot.deliver(bot.telegram.text_update(chat, _ask(chat)))

    log = bot.telegram.chat_log(chat)
    assert len(log) == 2
    assert not any("](" in m.text or "[a link" in m.text for m in log), "Markdown link shown"
    links = [(_entity_text(m, e), e["url"]) for m in log for e in m.entities]
    assert links == [(LINK_TEXT, "https://example.com/page")]
    assert _words(log) == ["word"] * 775 + [*LINK_TEXT.split(), "after"]


@pytest.mark.telegram_settings(reply_tokens=8000)
async def test_joined_emoji_are_never_cut_in_half(bot: Bot) -> None:
    answer = FAMILY * 1000  # no space anywhere to cut at
    bot.openai.queue_reply(answer)

    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, _ask(PRIVATE_CHAT)))

    log = bot.telegram.chat_log(PRIVATE_CHAT)
    assert len(log) == 3
    assert all(utf16_len(m.text) <= 4096 for m in log)
    for message in log:
        assert message.text.replace(FAMILY, "") == "", "a family emoji was split"
    assert sum(m.text.count(FAMILY) for m in log) == 1000


@pytest.mark.parametrize(
    "opened",
    [
        "**this is bold and still arriving",
        "[a link whose text is still arriving",
        "[a link](https://example.com/still-arri",
        "`code that is still",
    ],
)
def test_a_cut_while_a_span_is_still_arriving_goes_before_it(opened: str) -> None:
    # Streaming rolls over as soon as the text passes the limit: the span's end is not
    # there yet, and the part sent for good must not show its opening Markdown.
    text = "intro " * 640 + opened + " word" * 20
    assert utf16_len(text) > SEGMENT_UTF16

    head, tail = split_once(text)

    assert tail.startswith(opened)
    visible, entities = parse_html(markdown_to_html(head))
    assert visible == head.strip() and entities == []


@pytest.mark.parametrize(
    "cluster",
    [
        "🇵🇹",  # a flag: two regional indicators
        "👍🏽",  # a skin tone
        "❤️",  # a variation selector
        "1️⃣",  # a keycap
        "e\u0301",  # an accent written as a combining mark
    ],
)
def test_a_cut_with_no_space_to_go_to_keeps_each_character_whole(cluster: str) -> None:
    text = "x" + cluster * 4000

    head, tail = split_once(text)

    assert head.removeprefix("x").replace(cluster, "") == ""
    assert tail.replace(cluster, "") == ""
