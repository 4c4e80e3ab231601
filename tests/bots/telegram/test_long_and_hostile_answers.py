"""What people see for awkward answers: hostile Markdown, 10,000 characters, flood limits."""

from __future__ import annotations

import time

import pytest

from bots.telegram.formatting import open_fence, utf16_len
from core.moderation import WITHHELD_NOTICE
from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot

HOSTILE = (
    "Compare a < b && c > d, then **bold _nested* [link](javascript:alert(1)) `x<y>`\n\n"
    "snake_case_name *[]_ <b>not a tag</b> &amp; &#0;\n\n"
    "```python\nif a < b and c & d:\n    print('<tag>')\n"
)


@pytest.mark.parametrize("chat", [PRIVATE_CHAT, GROUP], ids=["private", "group"])
async def test_hostile_model_output_is_shown_faithfully(bot: Bot, chat: int) -> None:
    bot.openai.queue_reply(HOSTILE)
    text = "tell me" if chat > 0 else "@relay_test_bot tell me"

    await bot.deliver(bot.telegram.text_update(chat, text))

    (message,) = bot.telegram.chat_log(chat)
    assert message.parse_mode == "HTML", "our own HTML was accepted by Telegram's parser"
    for fragment in ("a < b && c > d", "<b>not a tag</b> &", "snake_case_name *[]_"):
        assert fragment in message.text
    assert "print('<tag>')" in message.text
    assert any(e["type"] == "pre" and e.get("language") == "python" for e in message.entities)


async def test_an_answer_telegram_cannot_parse_is_resent_as_plain_text(bot: Bot) -> None:
    answer = "Here is **something** odd"
    bot.openai.queue_reply(answer)
    bot.telegram.fail_next(
        "sendMessage",
        description='Bad Request: can\'t parse entities: Unsupported start tag "b" at byte 8',
    )

    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "go"))

    (message,) = bot.telegram.chat_log(PRIVATE_CHAT)
    assert message.parse_mode is None
    assert message.text == answer, "resent once, as the model wrote it"
    assert len(bot.telegram.calls("/sendMessage")) == 2


def _long_answer() -> str:
    paragraph = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 8 + "\n\n"
    code = "```python\n" + "".join(f"value_{i} = {i} * 2  # é\n" for i in range(200)) + "```\n\n"
    text = paragraph * 4 + code + paragraph * 4
    return (
        (text + "The end.")[:10_000] if len(text) > 10_000 else text + "x" * (10_000 - len(text))
    )


@pytest.mark.telegram_settings(reply_tokens=8000)
@pytest.mark.parametrize("chat", [PRIVATE_CHAT, GROUP], ids=["private", "group"])
async def test_a_ten_thousand_character_answer_rolls_over_into_several_messages(
    bot: Bot, chat: int
) -> None:
    answer = _long_answer()
    assert len(answer) == 10_000
    bot.openai.queue_reply(answer)
    text = "write a lot" if chat > 0 else "@relay_test_bot write a lot"

    await bot.deliver(bot.telegram.text_update(chat, text))

    log = bot.telegram.chat_log(chat)
    assert len(log) >= 3
    assert all(utf16_len(m.text) <= 4096 for m in log)
    assert all(m.parse_mode == "HTML" for m in log), "every part still rendered as HTML"
    # No part leaves a code block open: each one is closed and reopened in the next.
    assert all(open_fence(m.source) is None for m in log)
    pre_parts = [m for m in log if any(e["type"] == "pre" for e in m.entities)]
    assert len(pre_parts) >= 2, "the long code block spans a rollover"
    shown = "\n".join(m.text for m in log)
    for i in range(200):
        assert f"value_{i} = {i} * 2" in shown
    assert shown.rstrip().endswith(answer.rstrip()[-20:])


async def test_a_429_during_streaming_is_honoured_and_the_answer_completes(bot: Bot) -> None:
    words = " ".join(f"w{i}" for i in range(40))
    bot.openai.queue_reply(words)
    bot.openai.chunk_delay = 0.01
    bot.telegram.rate_limit_next("editMessageText", retry_after=1)

    await bot.deliver(bot.telegram.text_update(GROUP, "@relay_test_bot count"))

    assert bot.telegram.texts(GROUP) == [words]
    calls = [c for c in bot.telegram.api_calls if c.method == "editmessagetext"]
    limited = [c for c in calls if c.error_code == 429]
    assert len(limited) == 1
    later = [c for c in calls if c.at > limited[0].at]
    assert later, "the answer was completed after the 429"
    assert all(c.at - limited[0].at >= 1.0 for c in later), "no edit before retry_after passed"


async def test_a_429_on_the_final_message_is_waited_out(bot: Bot) -> None:
    bot.openai.queue_reply("all good in the end")
    bot.telegram.rate_limit_next("sendMessage", retry_after=1)

    started = time.monotonic()
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "hello"))

    assert bot.telegram.texts(PRIVATE_CHAT) == ["all good in the end"]
    assert time.monotonic() - started >= 1.0


async def test_a_telegram_server_error_on_sending_is_retried_without_asking_the_model_again(
    bot: Bot,
) -> None:
    bot.openai.queue_reply("worth the wait")
    bot.telegram.fail_next("sendMessage", error_code=502, description="Bad Gateway", times=2)
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "hello"))

    assert bot.telegram.texts(PRIVATE_CHAT) == ["worth the wait"]
    assert len(bot.openai.chat_requests()) == 1


async def test_a_429_on_drafts_skips_previews_and_the_answer_still_arrives(bot: Bot) -> None:
    words = " ".join(f"w{i}" for i in range(30))
    bot.openai.queue_reply(words)
    bot.openai.chunk_delay = 0.01
    bot.telegram.rate_limit_next("sendMessageDraft", retry_after=1, times=3)

    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "count"))

    assert bot.telegram.texts(PRIVATE_CHAT) == [words]


@pytest.mark.parametrize("chat", [PRIVATE_CHAT, GROUP], ids=["private", "group"])
async def test_a_flagged_answer_is_withdrawn_and_replaced_by_a_notice(bot: Bot, chat: int) -> None:
    bot.openai.queue_reply("here is some FLAGME content " + "padding " * 20)
    bot.openai.chunk_delay = 0.005
    text = "hi" if chat > 0 else "@relay_test_bot hi"

    await bot.deliver(bot.telegram.text_update(chat, text))

    (message,) = bot.telegram.chat_log(chat)
    assert "FLAGME" not in message.text
    assert message.text == WITHHELD_NOTICE


@pytest.mark.telegram_settings(reply_tokens=5)
async def test_an_answer_cut_at_the_reply_limit_says_so(bot: Bot) -> None:
    bot.openai.queue_reply("one two three four five six seven eight")
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "count to eight"))

    assert bot.telegram.texts(PRIVATE_CHAT) == [
        "one two three four five\n\n[cut off at the reply length limit]"
    ]
    stored = await bot.stored(f"telegram:{PRIVATE_CHAT}")
    assert [(r.role, r.content) for r in stored] == [
        ("assistant", "one two three four five"),  # the model's words, not the note
        ("user", "count to eight"),
    ]


@pytest.mark.telegram_settings(reply_tokens=20)
async def test_a_model_that_thinks_past_its_reply_limit_is_explained(bot: Bot) -> None:
    bot.openai.reasoning_tokens = 50  # a reasoning model that never gets to write
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "prove the Riemann hypothesis"))

    assert bot.telegram.texts(PRIVATE_CHAT) == [
        "The model used up its whole reply allowance before writing anything. "
        "Please try again, or ask for something shorter."
    ]
    stored = await bot.stored(f"telegram:{PRIVATE_CHAT}")
    assert [(r.role, r.content) for r in stored] == [("user", "prove the Riemann hypothesis")]
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "/usage"))
    assert "(1 request)" in bot.telegram.texts(PRIVATE_CHAT)[-1], "the thinking is billed"


async def test_an_empty_answer_is_explained(bot: Bot) -> None:
    bot.openai.queue_reply("")
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "hello?"))
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "hello again"))

    assert bot.telegram.texts(PRIVATE_CHAT) == [
        "The model sent back an empty answer. Please try again, or put it another way.",
        "echo: hello again",
    ]
    # No empty turn was kept to be sent again with the next question.
    history = bot.openai.chat_requests()[-1]["messages"]
    assert [m["role"] for m in history] == ["system", "user", "user"]
