"""Commands are registered with Telegram and work in private chats."""

from __future__ import annotations

import pytest

from core.commands import COMMANDS
from tests.bots.telegram.conftest import PRIVATE_CHAT, Bot


async def test_commands_are_registered_with_telegram(bot: Bot) -> None:
    # A private chat's menu (also the default one): everything but the group-only commands.
    names = {c["command"] for c in bot.telegram.commands}
    assert names == {"start", *COMMANDS} - {"voicemode"}
    assert {"help", "reset", "system", "model", "image", "edit", "translate", "retry"} <= names


async def test_start_greets_and_reset_forgets(bot: Bot) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/start"))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "remember kiwi"))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/reset"))

    texts = tg.texts(PRIVATE_CHAT)
    assert texts[0].startswith("I'm relaybot")
    assert texts[-1] == "History cleared. Let's start over."
    assert await bot.stored(f"telegram:{PRIVATE_CHAT}") == []


async def test_retry_regenerates_the_last_answer(bot: Bot) -> None:
    tg = bot.telegram
    bot.openai.queue_reply("first try")
    bot.openai.queue_reply("second try")
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "tell me something"))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/retry"))

    assert tg.texts(PRIVATE_CHAT) == ["first try", "second try"]


async def test_model_offers_only_chat_models_and_refuses_the_others(bot: Bot) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/model"))
    listing = tg.texts(PRIVATE_CHAT)[-1]
    assert "gpt-4o" in listing
    # The endpoint lists its transcription, image and moderation models too.
    for other in ("whisper-1", "gpt-4o-mini-transcribe", "gpt-image-1", "omni-moderation"):
        assert any(m.startswith(other) for m in bot.openai.models)
        assert other not in listing

    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/model whisper-1"))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "still there?"))

    refusal, answer = tg.texts(PRIVATE_CHAT)[-2:]
    assert refusal == (
        "whisper-1 is not a chat model (it is for audio). Send /model to list the chat models."
    )
    assert answer == "echo: still there?"
    assert bot.openai.chat_requests()[-1]["model"] == bot.core.settings.chat_model


async def test_a_chat_whose_model_was_withdrawn_is_told_how_to_pick_another(bot: Bot) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/model gpt-4o"))
    bot.openai.missing_models.add("gpt-4o")  # the endpoint stops serving it
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "hello?"))

    told = tg.texts(PRIVATE_CHAT)[-1]
    assert told == (
        "This chat's model, gpt-4o, is not available for chat at the moment. "
        "Send /model to pick another, or /model default."
    )
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/model default"))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "hello again"))
    assert tg.texts(PRIVATE_CHAT)[-1] == "echo: hello again"
    assert bot.openai.chat_requests()[-1]["model"] == bot.core.settings.chat_model


async def test_model_can_be_picked_by_name_where_the_endpoint_lists_none(bot: Bot) -> None:
    tg = bot.telegram
    bot.openai.missing_endpoints.add("/models")  # a bare 404, as some compatible servers
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/model"))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/model llama3.1:8b"))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "hi llama"))

    listing, picked, answer = tg.texts(PRIVATE_CHAT)
    assert listing == (
        f"Current model: {bot.core.settings.chat_model}\n"
        "The endpoint does not list its models; pick one by name with /model NAME."
    )
    assert picked == "This chat now uses llama3.1:8b."
    assert answer == "echo: hi llama"
    assert bot.openai.chat_requests()[-1]["model"] == "llama3.1:8b"


async def test_a_catalogue_of_hundreds_of_models_is_listed_in_part_and_searched(
    bot: Bot,
) -> None:
    tg = bot.telegram
    # An OpenRouter-sized catalogue: 300 chat models beside the usual ones.
    bot.openai.models += [f"vendor{i // 10}/model-{i}" for i in range(300)]
    bot.openai.models += ["meta-llama/llama-3.1-8b-instruct", "meta-llama/llama-3.3-70b"]
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/model"))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/model llama"))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/model meta-llama/llama-3.3-70b"))

    listing, found, picked = tg.texts(PRIVATE_CHAT)
    assert len(listing.splitlines()) < 50, "one readable message, not pages of names"
    assert "... and 264 more: /model WORD lists those whose name has WORD." in listing
    assert found == (
        "The endpoint has no model named llama. Models whose name has it:\n"
        "  meta-llama/llama-3.1-8b-instruct\n"
        "  meta-llama/llama-3.3-70b\n"
        "Pick one with /model NAME."
    )
    assert picked == "This chat now uses meta-llama/llama-3.3-70b."


@pytest.mark.telegram_settings(context_tokens=2000)
async def test_a_system_prompt_too_long_for_the_model_is_refused_when_set(bot: Bot) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/system " + "Be terse. " * 400))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "hello"))

    refusal, answer = tg.texts(PRIVATE_CHAT)
    assert refusal.startswith("That system prompt is too long for gpt-4o-mini: about ")
    assert refusal.endswith(
        "tokens, and the model reads 2,000 at most, answer included. Please send a shorter one."
    )
    assert answer == "echo: hello"
    system = bot.openai.chat_requests()[-1]["messages"][0]["content"]
    assert system == bot.core.settings.system_prompt
