"""Input moderation reads pictures too (where the moderation model takes them): a photo
asked about, or given to /edit, that moderation flags goes to no model."""

from __future__ import annotations

import logging

import pytest

from core.config import ModerationPolicy
from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot

REFUSED = (
    "Sorry, I can't help with that: your message was flagged by moderation (violence) "
    "and was not sent to the model."
)


def _pictures_moderated(bot: Bot) -> list[object]:
    """The multi-modal inputs (lists of parts) /moderations was given."""
    inputs = [r.json["input"] for r in bot.openai.calls("/moderations")]
    return [i for i in inputs if isinstance(i, list) and any(isinstance(p, dict) for p in i)]


async def test_a_photo_moderation_flags_is_not_sent_to_the_model(bot: Bot, photo: bytes) -> None:
    bot.openai.flag_pictures[photo] = ["violence"]
    await bot.deliver(bot.telegram.photo_update(PRIVATE_CHAT, photo, caption="what is this?"))
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "hello"))

    assert bot.telegram.texts(PRIVATE_CHAT) == [REFUSED, "echo: hello"]
    (request,) = bot.openai.chat_requests()
    # Nor kept for later requests: the refused turn is out of the history.
    assert "what is this?" not in str(request["messages"])


async def test_a_photo_moderation_passes_is_answered(bot: Bot, photo: bytes) -> None:
    await bot.deliver(bot.telegram.photo_update(PRIVATE_CHAT, photo))

    assert len(_pictures_moderated(bot)) == 1
    assert bot.telegram.texts(PRIVATE_CHAT)[-1].startswith("echo:")
    assert len(bot.openai.chat_requests()) == 1


async def test_a_photo_moderation_flags_is_not_edited(bot: Bot, photo: bytes) -> None:
    tg = bot.telegram
    bot.openai.flag_pictures[photo] = ["violence"]
    picture = tg.photo_update(GROUP, photo, width=512, height=512)["message"]
    await bot.deliver(tg.update(picture))
    await bot.deliver(tg.text_update(GROUP, "/edit add a hat", reply_to=picture))

    assert tg.texts(GROUP) == [REFUSED]
    assert bot.openai.calls("/images/edits") == []


@pytest.mark.telegram_settings(moderation_model="text-moderation-latest")
async def test_a_moderation_model_for_text_only_is_not_sent_pictures(
    bot: Bot, photo: bytes
) -> None:
    bot.openai.flag_pictures[photo] = ["violence"]
    await bot.deliver(bot.telegram.photo_update(PRIVATE_CHAT, photo, caption="what is this?"))

    assert _pictures_moderated(bot) == []
    assert bot.telegram.texts(PRIVATE_CHAT) == ["echo: what is this?"]


@pytest.mark.telegram_settings(moderation=ModerationPolicy.OUTPUT)
async def test_without_input_moderation_pictures_are_not_checked(bot: Bot, photo: bytes) -> None:
    bot.openai.flag_pictures[photo] = ["violence"]
    await bot.deliver(bot.telegram.photo_update(PRIVATE_CHAT, photo, caption="what is this?"))

    assert _pictures_moderated(bot) == []
    assert bot.telegram.texts(PRIVATE_CHAT) == ["echo: what is this?"]


async def test_a_moderation_server_that_refuses_pictures_leaves_them_unchecked_and_says_so(
    bot: Bot, photo: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Not every photo refused as the person's fault: the pictures go unchecked (as before
    pictures were moderated) and the operator is told, once."""
    bot.openai.moderation_reads_images = False
    with caplog.at_level(logging.INFO, logger="relaybot.moderation"):
        for caption in ("what is this?", "and this?"):
            await bot.deliver(bot.telegram.photo_update(PRIVATE_CHAT, photo, caption=caption))

    assert bot.telegram.texts(PRIVATE_CHAT) == ["echo: what is this?", "echo: and this?"]
    (alert,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "pictures are not moderated" in alert and "omni-moderation-latest" in alert
