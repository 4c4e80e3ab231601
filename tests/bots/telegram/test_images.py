"""Images: /image sends a photo (a file when too big for one), /edit edits a replied photo."""

from __future__ import annotations

import logging
import struct
import zlib

import pytest

from core.config import ModerationPolicy
from core.media import image_dimensions
from core.tokens import picture_tokens
from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot


async def test_image_command_sends_the_generated_picture_as_a_photo(bot: Bot) -> None:
    update = bot.telegram.text_update(PRIVATE_CHAT, "/image a lighthouse at dusk")
    await bot.deliver(update)

    (message,) = bot.telegram.chat_log(PRIVATE_CHAT)
    assert message.kind == "photo"
    assert message.text == "a lighthouse at dusk"
    assert message.file is not None and message.file.startswith(b"\x89PNG")
    assert message.reply_to == update["message"]["message_id"]


@pytest.mark.telegram_settings(image_model="sdxl-turbo", image_size="4000x100")
async def test_a_picture_over_photo_limits_is_sent_as_a_document(bot: Bot) -> None:
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "/image a very wide banner"))

    (message,) = bot.telegram.chat_log(PRIVATE_CHAT)
    assert message.kind == "document"
    assert message.filename == "image.png"


async def test_edit_as_a_reply_to_a_photo_edits_that_photo(bot: Bot, photo: bytes) -> None:
    tg = bot.telegram
    picture = tg.photo_update(GROUP, photo, width=512, height=512)["message"]
    await bot.deliver(picture_update := tg.update(picture))
    assert tg.chat_log(GROUP) == [], "a photo alone in a group is not addressed to the bot"

    await bot.deliver(tg.text_update(GROUP, "/edit make it black and white", reply_to=picture))

    (request,) = bot.openai.calls("/images/edits")
    sent = request.form.get("image", request.form.get("image[]"))
    assert isinstance(sent, dict)
    assert sent["data"] == photo, "the full-size photo, not the thumbnail, was edited"
    (message,) = tg.chat_log(GROUP)
    assert message.kind == "photo"
    assert message.text == "make it black and white"
    assert picture_update["update_id"]


async def test_a_photo_with_a_caption_goes_to_a_vision_model(bot: Bot, photo: bytes) -> None:
    await bot.deliver(bot.telegram.photo_update(PRIVATE_CHAT, photo, caption="what is this?"))

    content = bot.openai.chat_requests()[-1]["messages"][-1]["content"]
    assert isinstance(content, list)
    assert any(part.get("type") == "image_url" for part in content)
    assert bot.telegram.texts(PRIVATE_CHAT) == ["echo: what is this?"]


async def test_a_picture_sent_as_a_file_in_a_format_models_cannot_read_is_explained(
    bot: Bot, photo: bytes
) -> None:
    tg = bot.telegram
    heic = b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64  # an iPhone photo sent as a file
    await bot.deliver(
        tg.document_update(
            PRIVATE_CHAT,
            heic,
            file_name="IMG_0042.HEIC",
            mime_type="image/heic",
            caption="what is this?",
        )
    )
    # The same picture sent as a file in a format models take is looked at.
    await bot.deliver(
        tg.document_update(
            PRIVATE_CHAT, photo, file_name="scan.png", mime_type="image/png", caption="and this?"
        )
    )

    refusal, answer = tg.texts(PRIVATE_CHAT)
    assert refusal == (
        "I can only look at JPEG, PNG, WebP or GIF pictures. "
        "Send it as a photo, or convert it first."
    )
    assert answer == "echo: and this?"
    (request,) = bot.openai.chat_requests()  # the HEIC never went to the model
    image = request["messages"][-1]["content"][1]["image_url"]["url"]
    assert image.startswith("data:image/jpeg;base64,"), "typed by its bytes, not its name"


@pytest.mark.telegram_settings(image_size="512x512")  # DALL-E 2 makes it; GPT Image does not
async def test_an_image_size_the_model_does_not_make_alerts_the_operator(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "/image a lighthouse"))

    # Not "I can't use that": the person asked well; the operator's setting is wrong.
    assert bot.telegram.texts(PRIVATE_CHAT) == [
        "The bot is not configured correctly. The operator has been told."
    ]
    (alert,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "RELAYBOT_IMAGE_SIZE" in alert and "'512x512'" in alert


async def test_a_picture_is_billed_at_the_quality_the_model_chose(bot: Bot) -> None:
    bot.openai.image_auto_quality = "high"  # quality "auto": the model picked high
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "/image a lighthouse"))
    await bot.deliver(bot.telegram.text_update(PRIVATE_CHAT, "/usage"))

    assert "quality" not in bot.openai.calls("/images/generations")[0].json
    report = bot.telegram.texts(PRIVATE_CHAT)[-1]
    assert "$0.17" in report, report  # gpt-image-1, high, square; medium would be $0.04


@pytest.mark.telegram_settings(image_quality="low")
async def test_the_configured_image_quality_is_asked_for_and_billed(
    bot: Bot, photo: bytes
) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/image a lighthouse"))
    picture = tg.photo_update(PRIVATE_CHAT, photo, width=512, height=512)["message"]
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/edit add a moon", reply_to=picture))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/usage"))

    assert bot.openai.calls("/images/generations")[0].json["quality"] == "low"
    assert bot.openai.calls("/images/edits")[0].form["quality"] == "low"
    report = tg.texts(PRIVATE_CHAT)[-1]
    assert "$0.02" in report, report  # two low-quality squares at $0.011


def _png(width: int, height: int) -> bytes:
    """A real PNG of one colour, `width` x `height` (a few KB, however large)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + b"\x80\x90\xa0" * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height, 9))
        + chunk(b"IEND", b"")
    )


@pytest.mark.telegram_settings(
    context_tokens=1500, reply_tokens=100, moderation=ModerationPolicy.OFF
)
async def test_a_photo_in_a_long_chat_leaves_room_for_itself(bot: Bot) -> None:
    """The history sent with a photo is trimmed to leave the picture's own tokens room: the
    request is not refused as too long first and then sent with half the history."""
    tg = bot.telegram
    photo = _png(1536, 1536)
    # A server that counts the picture as OpenAI does (768 x 768 at high detail: 4 tiles).
    bot.openai.context_tokens = 1500
    bot.openai.tokens_per_picture = picture_tokens(image_dimensions(photo))
    assert bot.openai.tokens_per_picture == 765
    for n in range(8):
        await bot.deliver(tg.text_update(PRIVATE_CHAT, f"note {n}: " + "hello " * 100))
    asked = len(bot.openai.chat_requests())

    await bot.deliver(tg.photo_update(PRIVATE_CHAT, photo, caption="what is this?"))

    assert tg.texts(PRIVATE_CHAT)[-1] == "echo: what is this?"
    (request,) = bot.openai.chat_requests()[asked:]  # one request, not a refused one first
    history = [m for m in request["messages"] if "note" in str(m["content"])]
    assert len(history) >= 2, "the history was trimmed to fit, not halved after a refusal"


@pytest.mark.telegram_settings(
    context_tokens=800, reply_tokens=100, moderation=ModerationPolicy.OFF
)
async def test_a_photo_larger_than_a_small_windows_history_room_is_still_asked_about(
    bot: Bot,
) -> None:
    """A model with a small (or unknown, 8,192 assumed) window: the picture takes at most
    half the history's room, so the question goes with it instead of being refused."""
    await bot.deliver(
        bot.telegram.photo_update(PRIVATE_CHAT, _png(1536, 1536), caption="what is this?")
    )

    assert bot.telegram.texts(PRIVATE_CHAT) == ["echo: what is this?"]
