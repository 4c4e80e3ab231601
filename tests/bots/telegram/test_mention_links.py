"""A model's link to a Telegram user (`[Bob](tg://user?id=424242)`, a person the bot has
never seen) is a text_mention Telegram refuses: "Bad Request: ENTITY_MENTION_USER_INVALID"
(PaulSonOfLars/tgbot#22, TelegramBotAPI/errors#2). Anyone can make the model write one.

The answer shows the link's words, as one whole answer, without a notice to /retry; and
should Telegram refuse a formatted send, edit or draft over an entity all the same, the
text goes again as plain text, as for HTML it cannot parse."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from telegram.error import BadRequest

from bots.telegram import sink
from bots.telegram.delivery import is_parse_error
from bots.telegram.formatting import markdown_to_html
from core.testing.fake_telegram import FakeTelegram, parse_html
from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot, stored_turns

pytestmark = pytest.mark.usefixtures("quick_backoff")  # Telegram's 5xx back-off
ANSWER = "Sure. You can ask [Bob](tg://user?id=424242) about it; he wrote the runbook."
SHOWN = "Sure. You can ask Bob about it; he wrote the runbook."  # as the person reads it
PLAIN = "Sure. You can ask Bob about it; he wrote the runbook."  # an answer with no Markdown
TOLD = "Telegram did not take the whole answer. Send /retry in a minute to get it again."
MENTION_INVALID = "Bad Request: ENTITY_MENTION_USER_INVALID"
CHATS = pytest.mark.parametrize("chat", [PRIVATE_CHAT, GROUP], ids=["private", "group-edits"])


def _ask(chat: int, text: str) -> str:
    return text if chat > 0 else f"@relay_test_bot {text}"


def _refused(bot: Bot, method: str) -> int:
    return sum(1 for c in bot.telegram.api_calls if c.method == method and c.error_code == 400)


# -- the answer reaches the person -----------------------------------------------------------
@CHATS
async def test_an_answer_linking_to_a_user_the_bot_never_saw_arrives_whole(
    bot: Bot, chat: int
) -> None:
    tg = bot.telegram
    bot.openai.queue_reply(ANSWER)
    bot.openai.chunk_delay = 0.01  # a few previews (drafts, or edits in the group)
    await bot.deliver(tg.text_update(chat, _ask(chat, "who knows the runbook?")))

    assert tg.texts(chat) == [SHOWN], "one whole answer, the link's words, no notice"
    (message,) = tg.chat_log(chat)
    assert message.parse_mode == "HTML", "formatted, not resent plain"
    assert "tg://" not in message.source
    assert not [e for e in message.entities if e["type"] in ("text_mention", "text_link")]
    assert _refused(bot, "sendmessage") == _refused(bot, "sendmessagedraft") == 0
    if chat == PRIVATE_CHAT:
        assert tg.drafts, "previewed as drafts all along"
    assert await stored_turns(bot, chat) == [
        ("user", "who knows the runbook?", "ok"),
        ("assistant", ANSWER, "ok"),
    ]


# -- a refused entity: the same text again, plain ------------------------------------------
@CHATS
async def test_formatting_telegram_refuses_over_a_mention_is_resent_plain(
    bot: Bot, chat: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Formatting lets a mention of a stranger through: every formatted send, edit and
    # draft of the answer is refused by Telegram (the fake), as it would be.
    render = sink.markdown_to_html

    def with_a_mention(markdown: str, **options: Any) -> str:
        return render(markdown, **options).replace("Bob", '<a href="tg://user?id=424242">Bob</a>')

    monkeypatch.setattr(sink, "markdown_to_html", with_a_mention)
    tg = bot.telegram
    bot.openai.queue_reply(PLAIN)
    bot.openai.chunk_delay = 0.03  # time for previews: drafts, or a message and its edits
    await bot.deliver(tg.text_update(chat, _ask(chat, "who knows the runbook?")))

    assert tg.texts(chat) == [PLAIN], "one whole answer, no notice to /retry"
    (message,) = tg.chat_log(chat)
    assert message.parse_mode is None, "refused formatted, then sent (or edited) plain"
    if chat == PRIVATE_CHAT:
        assert _refused(bot, "sendmessagedraft") >= 1
        assert _refused(bot, "sendmessage") == 1, "the final send, then again plain"
        assert tg.drafts, "drafts went on, plain"
        assert not [c for c in tg.api_calls if c.method == "editmessagetext"]
    else:
        assert message.edits, "previewed, then edited"
    assert await stored_turns(bot, chat) == [
        ("user", "who knows the runbook?", "ok"),
        ("assistant", PLAIN, "ok"),
    ]


async def test_a_final_send_refused_over_an_entity_is_resent_plain(bot: Bot) -> None:
    tg = bot.telegram
    bot.openai.queue_reply("Ask **Bob** about it.")
    tg.fail_next("sendMessage", description=MENTION_INVALID)
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "who knows?"))

    assert tg.texts(PRIVATE_CHAT) == ["Ask **Bob** about it."], "the same text, plain"
    assert _refused(bot, "sendmessage") == 1
    assert await stored_turns(bot) == [
        ("user", "who knows?", "ok"),
        ("assistant", "Ask **Bob** about it.", "ok"),
    ]


async def test_a_draft_refused_over_an_entity_leaves_drafts_on(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    tg = bot.telegram
    answer = " ".join(f"word{i}" for i in range(30))
    bot.openai.queue_reply(answer)
    bot.openai.chunk_delay = 0.01
    tg.fail_next("sendMessageDraft", description=MENTION_INVALID)
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "count"))

    assert tg.texts(PRIVATE_CHAT) == [answer]
    assert _refused(bot, "sendmessagedraft") == 1
    assert tg.drafts, "later previews are drafts still (plain)"
    assert all(d.parse_mode is None for d in tg.drafts)
    assert not [c for c in tg.api_calls if c.method == "editmessagetext"]
    assert "drafts unavailable" not in caplog.text


# -- which refusals are about formatting ---------------------------------------------------
@pytest.mark.parametrize(
    "description",
    [
        'Bad Request: can\'t parse entities: Unsupported start tag "x" at byte offset 0',
        "Bad Request: ENTITY_MENTION_USER_INVALID",
        "Bad Request: ENTITY_BOUNDS_INVALID",
        "Bad Request: ENTITIES_TOO_LONG",
        "Bad Request: entity URL 'not-a-url' is invalid: Wrong HTTP URL",
        "Bad Request: Wrong message entity: Wrong URL host",
        "Bad Request: entity beginning at UTF-16 offset 0 ends after the end of the text at "
        "UTF-16 offset 100",
        "Bad Request: receive an entity with incorrect offset -1",
        "Bad Request: user not found",
    ],
)
def test_a_refused_entity_counts_as_a_formatting_error(description: str) -> None:
    assert is_parse_error(BadRequest(description))
    assert is_parse_error(BadRequest(description.upper()))


@pytest.mark.parametrize(
    "description",
    [
        "Bad Request: chat not found",
        "Bad Request: message to edit not found",
        "Bad Request: message can't be edited",
        "Bad Request: message thread not found",
        "Bad Request: message is too long",
        "Bad Request: have no rights to send a message",
    ],
)
def test_other_refusals_are_no_formatting_errors(description: str) -> None:
    assert not is_parse_error(BadRequest(description))


# -- formatting ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "link",
    [
        "tg://user?id=424242",
        "TG://USER?ID=424242",
        "tg:user?id=424242",
        "tg://user/?foo=1&id=424242",
        "tg://openmessage?user_id=424242",
        "tg://resolve?domain=somebody",
        "tg://join?invite=AbCdEf",
        "tg://proxy?server=evil.example&port=443&secret=00",
        "tg://login?code=12345",
    ],
)
def test_tg_links_show_their_words_and_make_no_entity(link: str) -> None:
    for markdown in (f"ask [Bob]({link}) today", f"ask <{link}> today"):
        visible, entities = parse_html(markdown_to_html(markdown))
        assert visible in ("ask Bob today", f"ask {link} today")
        assert not [e for e in entities if e["type"] in ("text_mention", "text_link")]


def test_web_links_stay_links() -> None:
    markdown = "see [the docs](https://example.org/a?b=1&c=2) or [this](http://example.net)"
    visible, entities = parse_html(markdown_to_html(markdown))
    assert visible == "see the docs or this"
    assert [(e["type"], e.get("url")) for e in entities] == [
        ("text_link", "https://example.org/a?b=1&c=2"),
        ("text_link", "http://example.net"),
    ]


# -- the fake refuses as Telegram does -------------------------------------------------------
async def _call(tg: FakeTelegram, method: str, **params: Any) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{tg.api_base_url}{tg.token}/{method}", json=params) as resp,
    ):
        body: dict[str, Any] = await resp.json()
        assert (resp.status == 200) == body["ok"]
        return body


async def test_the_fake_refuses_a_mention_of_a_user_the_bot_never_saw(
    telegram: FakeTelegram,
) -> None:
    tg = telegram
    tg.message(PRIVATE_CHAT, text="hi")  # the bot has seen this person, and no one else
    refused = {"ok": False, "error_code": 400, "description": MENTION_INVALID}
    stranger = '<a href="tg://user?id=424242">Bob</a> knows'
    known = f'<a href="tg://user?id={PRIVATE_CHAT}">you</a> know'
    html = {"chat_id": PRIVATE_CHAT, "parse_mode": "HTML"}

    assert await _call(tg, "sendMessage", text=stranger, **html) == refused
    assert await _call(tg, "sendMessageDraft", draft_id=7, text=stranger, **html) == refused
    sent = await _call(tg, "sendMessage", text=known, **html)
    (entity,) = sent["result"]["entities"]
    assert entity["type"] == "text_mention"
    assert entity["user"]["id"] == PRIVATE_CHAT and entity["user"]["first_name"]
    message_id = sent["result"]["message_id"]
    edit = {"message_id": message_id, **html}
    assert await _call(tg, "editMessageText", text=stranger, **edit) == refused
    mention = {"type": "text_mention", "offset": 0, "length": 3, "user": {"id": 424242}}
    entities = {"chat_id": PRIVATE_CHAT, "entities": [mention]}
    assert await _call(tg, "sendMessage", text="Bob knows", **entities) == refused
    # A link that names no user is a link.
    sent = await _call(tg, "sendMessage", text='<a href="tg://resolve?domain=x">x</a>', **html)
    assert sent["result"]["entities"][0]["type"] == "text_link"
    assert tg.texts(PRIVATE_CHAT) == ["you know", "x"]
