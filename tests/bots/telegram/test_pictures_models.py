"""Pictures and the chat's model: a model that reads pictures gets them (whatever prefix or
version its name has); one that cannot says so; a refused picture leaves nothing stored."""

from __future__ import annotations

from typing import Any

import pytest

from core.testing.fake_openai import message_text
from tests.bots.telegram.conftest import PRIVATE_CHAT, Bot

CHAT_KEY = f"telegram:{PRIVATE_CHAT}"
QUESTION = "What is in this picture?"


async def _use_model(bot: Bot, model: str) -> None:
    bot.openai.models.append(model)
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, f"/model {model}"))
    assert bot.telegram.texts(PRIVATE_CHAT) == [f"This chat now uses {model}."]


def _pictures_sent(request: dict[str, Any]) -> int:
    content = request["messages"][-1]["content"]
    if isinstance(content, str):
        return 0
    return sum(1 for part in content if part.get("type") == "image_url")


async def _stored(bot: Bot) -> list[tuple[str, str]]:
    return [(row.role, row.content) for row in reversed(await bot.stored(CHAT_KEY))]


@pytest.mark.parametrize(
    "model",
    [
        "openai/gpt-4o",  # a provider's prefix, as OpenRouter and LiteLLM name models
        "gpt-5.1",
        "gpt-5.2-chat-latest",
        "o1",
    ],
)
async def test_a_photo_reaches_a_model_that_reads_pictures(
    bot: Bot, photo: bytes, model: str
) -> None:
    await _use_model(bot, model)
    await bot.deliver(bot.telegram.photo_update(PRIVATE_CHAT, photo, caption=QUESTION))

    (request,) = bot.openai.chat_requests()
    assert request["model"] == model
    assert _pictures_sent(request) == 1, f"{model} reads pictures: it was sent the photo"
    assert bot.telegram.texts(PRIVATE_CHAT)[1:] == [f"echo: {QUESTION}"]
    assert await _stored(bot) == [
        ("user", f"{QUESTION}\n[image]"),
        ("assistant", f"echo: {QUESTION}"),
    ]


@pytest.mark.parametrize("model", ["llama3.1:8b", "o3-mini"])
async def test_a_model_that_cannot_read_pictures_says_so_before_its_answer(
    bot: Bot, photo: bytes, model: str
) -> None:
    await _use_model(bot, model)
    await bot.deliver(bot.telegram.photo_update(PRIVATE_CHAT, photo, caption=QUESTION))
    await bot.deliver(bot.telegram.photo_update(PRIVATE_CHAT, photo))  # nothing else to read

    notice, answer, refusal = bot.telegram.texts(PRIVATE_CHAT)[1:]
    assert notice == (
        f"This chat's model, {model}, can't look at pictures, so it answers without the "
        "picture you sent. Send /model to pick one that can."
    )
    assert answer == f"echo: {QUESTION}"
    assert refusal == (
        f"This chat's model, {model}, can't look at pictures. Send /model to pick one that can."
    )
    (request,) = bot.openai.chat_requests()
    assert _pictures_sent(request) == 0
    assert message_text(request["messages"][-1]["content"]) == QUESTION
    assert await _stored(bot) == [("user", QUESTION), ("assistant", f"echo: {QUESTION}")]


def _heic(bot: Bot, photo: bytes) -> dict[str, Any]:
    heic = b"\x00\x00\x00\x18ftypheic" + b"\x00" * 200  # an iPhone photo sent as a file
    return bot.telegram.document_update(
        PRIVATE_CHAT,
        heic,
        file_name="IMG_0001.HEIC",
        mime_type="image/heic",
        caption="Which plant is this?",
    )


def _too_large(bot: Bot, photo: bytes) -> dict[str, Any]:
    update = bot.telegram.photo_update(PRIVATE_CHAT, photo, caption="Which plant is this?")
    update["message"]["photo"][-1]["file_size"] = 25 * 2**20
    return update


@pytest.mark.parametrize(
    ("picture", "refusal"),
    [
        (
            _heic,
            "I can only look at JPEG, PNG, WebP or GIF pictures. "
            "Send it as a photo, or convert it first.",
        ),
        (
            _too_large,
            "That picture is too large: I can look at pictures of up to 20 MB. "
            "Please send a smaller one.",
        ),
    ],
    ids=["heic", "too-large"],
)
async def test_a_refused_picture_leaves_its_question_out_of_the_history(
    bot: Bot, photo: bytes, picture: Any, refusal: str
) -> None:
    await bot.deliver(picture(bot, photo))
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "How often should I water a cactus?"))

    assert bot.telegram.texts(PRIVATE_CHAT) == [
        refusal,
        "echo: How often should I water a cactus?",
    ]
    (request,) = bot.openai.chat_requests()
    asked = [message_text(m["content"]) for m in request["messages"] if m["role"] != "system"]
    assert asked == ["How often should I water a cactus?"], "no unanswered question rides along"
    assert await _stored(bot) == [
        ("user", "How often should I water a cactus?"),
        ("assistant", "echo: How often should I water a cactus?"),
    ]
