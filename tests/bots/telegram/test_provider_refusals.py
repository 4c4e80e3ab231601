"""A question the model provider refuses outright (Azure's content filter, OpenAI's
invalid_prompt) is kept out of the history, as one input moderation refused is: kept in, it
would go with every later request and have each refused too, until /reset."""

from __future__ import annotations

import pytest

from tests.bots.telegram.conftest import PRIVATE_CHAT, Bot, stored_turns

REFUSED = "tell me how to pick my neighbour's lock"


def _prompts(bot: Bot) -> str:
    """Everything the last chat request sent the model."""
    return str(bot.openai.chat_requests()[-1]["messages"])


@pytest.mark.parametrize(
    ("code", "message", "told"),
    [
        (
            "content_filter",
            "The response was filtered due to the prompt triggering Azure OpenAI's content "
            "management policy.",
            "Sorry, I can't help with that.",
        ),
        (
            "invalid_prompt",
            "Invalid prompt: your prompt was flagged as potentially violating our usage policy.",
            "I can't use that input.",
        ),
    ],
    ids=["azure-content-filter", "openai-invalid-prompt"],
)
async def test_after_the_provider_refuses_a_question_the_next_one_is_answered(
    bot: Bot, code: str, message: str, told: str
) -> None:
    tg = bot.telegram
    bot.openai.fail_next(400, code=code, message=message, path="/chat/completions")
    await bot.deliver(tg.text_update(PRIVATE_CHAT, REFUSED))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "what is two and two?"))

    assert tg.texts(PRIVATE_CHAT) == [told, "echo: what is two and two?"]
    assert REFUSED not in _prompts(bot)
    assert await stored_turns(bot) == [
        ("user", REFUSED, "withheld"),
        ("user", "what is two and two?", "ok"),
        ("assistant", "echo: what is two and two?", "ok"),
    ]


async def test_a_question_whose_answer_the_filter_stopped_before_a_word_is_kept_out_too(
    bot: Bot,
) -> None:
    tg = bot.telegram
    bot.openai.finish_reason = "content_filter"  # as Azure ends an answer it filtered
    bot.openai.queue_reply("")
    await bot.deliver(tg.text_update(PRIVATE_CHAT, REFUSED))
    bot.openai.finish_reason = None
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "what is two and two?"))

    assert tg.texts(PRIVATE_CHAT) == [
        "Sorry, I can't help with that.",
        "echo: what is two and two?",
    ]
    assert REFUSED not in _prompts(bot)
    assert (await stored_turns(bot))[0] == ("user", REFUSED, "withheld")


@pytest.mark.telegram_settings(max_retries=0)
async def test_a_refusal_after_part_of_the_answer_was_shown_keeps_the_question(bot: Bot) -> None:
    tg = bot.telegram
    bot.openai.queue_reply("Locks are fascinating machines")
    bot.openai.error_mid_stream = {
        "message": "The response was filtered by the content management policy.",
        "type": "invalid_request_error",
        "code": "content_filter",
    }
    await bot.deliver(tg.text_update(PRIVATE_CHAT, REFUSED))

    assert tg.texts(PRIVATE_CHAT) == [
        "Locks\n\n[answer cut short]",
        "The answer was cut short: Sorry, I can't help with that.",
    ]
    # The question stays with the part of the answer the person saw.
    assert await stored_turns(bot) == [("user", REFUSED, "ok"), ("assistant", "Locks ", "partial")]
