"""Albums: Telegram sends one message per picture; the bot answers the album once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from core.config import Settings
from core.db.models import InboundEvent
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_telegram import FakeTelegram
from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot
from tests.bots.telegram.test_resumed_answers import process

SQUARE = (Path(__file__).parents[2] / "fixtures" / "square.png").read_bytes()


async def deliver_all(bot: Bot, updates: list[dict[str, Any]]) -> None:
    """Send updates one right after the other, as Telegram sends an album's, then wait."""
    ids = [await bot.telegram.push_update(update) for update in updates]
    if bot.transport == "polling":
        await bot.telegram.wait_delivered(ids[-1])
    await bot.adapter.idle()


async def joined_then_killed(
    settings: Settings,
    telegram: FakeTelegram,
    monkeypatch: pytest.MonkeyPatch,
    updates: list[dict[str, Any]],
) -> None:
    """A first process takes in a message sent in parts (`updates`), joins them, then dies
    before answering it; then a second process resumes what it left, and drains."""
    async with process(settings.model_copy(update={"shutdown_grace": 0})) as (first, _):
        joined = asyncio.Event()

        async def dies_before_answering(msg: Any, sink: Any) -> None:
            joined.set()
            await asyncio.Event().wait()  # the process dies here

        monkeypatch.setattr(first.service, "_process", dies_before_answering)
        ids = [await telegram.push_update(update) for update in updates]
        await telegram.wait_delivered(ids[-1])
        async with asyncio.timeout(10):
            await joined.wait()
        await first.service.shutdown()
    assert telegram.chat_log(PRIVATE_CHAT) == []

    async with process(settings) as (core, adapter):
        # One message now: the other parts were closed when they were joined.
        assert await core.service.resume({"telegram": adapter}) == 1
        await core.service.drain()


def pictures_sent(request: dict[str, Any]) -> list[str]:
    """The data URLs of the pictures in a chat request's last message."""
    content = request["messages"][-1]["content"]
    assert isinstance(content, list)
    return [part["image_url"]["url"] for part in content if part.get("type") == "image_url"]


async def statuses(bot: Bot) -> list[str]:
    async with bot.core.engine.connect() as conn:
        rows = await conn.execute(select(InboundEvent.status).order_by(InboundEvent.id))
        return [r[0] for r in rows]


async def test_an_album_gets_one_answer_that_looks_at_every_picture(
    bot: Bot, photo: bytes
) -> None:
    tg = bot.telegram
    album = tg.album_updates(PRIVATE_CHAT, [photo, SQUARE, photo], caption="which is sharper?")

    await deliver_all(bot, album)

    assert tg.texts(PRIVATE_CHAT) == ["echo: which is sharper?"]
    (request,) = bot.openai.chat_requests()
    urls = pictures_sent(request)
    assert [u.split(";")[0] for u in urls] == [
        "data:image/jpeg",
        "data:image/png",
        "data:image/jpeg",
    ], "every picture of the album, in order"
    (answer,) = tg.chat_log(PRIVATE_CHAT)
    assert answer.reply_to == album[0]["message"]["message_id"], "a reply to the album"
    # One turn in the history, and every part's event closed: nothing comes back later.
    user_turns = [r for r in await bot.stored(f"telegram:{PRIVATE_CHAT}") if r.role == "user"]
    assert len(user_turns) == 1
    assert await statuses(bot) == ["done", "done", "done"]

    # The next message is answered on its own, as usual, with the album in its history.
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "thanks"))
    assert tg.texts(PRIVATE_CHAT)[-1] == "echo: thanks"


@pytest.mark.bot_user(can_read_all_group_messages=True)  # BotFather: /setprivacy -> Disable
async def test_a_group_album_mentioning_the_bot_once_is_answered_once(
    bot: Bot, photo: bytes
) -> None:
    tg = bot.telegram
    album = tg.album_updates(
        GROUP, [photo, SQUARE], caption="@relay_test_bot what changed between these?"
    )

    await deliver_all(bot, album)

    assert tg.texts(GROUP) == ["echo: what changed between these?"]
    (request,) = bot.openai.chat_requests()
    assert len(pictures_sent(request)) == 2, "the uncaptioned picture came with the caption's"


@pytest.mark.bot_user(can_read_all_group_messages=True)
async def test_a_group_album_not_for_the_bot_is_left_alone(bot: Bot, photo: bytes) -> None:
    tg = bot.telegram

    await deliver_all(bot, tg.album_updates(GROUP, [photo, SQUARE], caption="our trip!"))

    assert tg.chat_log(GROUP) == []
    assert bot.openai.chat_requests() == []
    assert await bot.stored(f"telegram:{GROUP}") == []
    assert set(await statuses(bot)) == {"done"}


async def test_an_album_cut_off_by_a_restart_is_answered_once_with_every_picture(
    settings: Settings,
    telegram: FakeTelegram,
    fake_openai: FakeOpenAI,
    photo: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first process joins the album's parts, then dies before answering it."""
    album = telegram.album_updates(PRIVATE_CHAT, [photo, SQUARE], caption="compare")
    await joined_then_killed(settings, telegram, monkeypatch, album)

    assert telegram.texts(PRIVATE_CHAT) == ["echo: compare"]
    requests = fake_openai.chat_requests()
    assert len(pictures_sent(requests[-1])) == 2, "both pictures, downloaded again"


async def test_an_album_whose_parts_were_never_joined_is_joined_on_resume(
    settings: Settings, telegram: FakeTelegram, fake_openai: FakeOpenAI, photo: bytes
) -> None:
    """The first process dies while the album's first part waits for the rest."""
    async with process(settings.model_copy(update={"shutdown_grace": 0})) as (first, _):
        album = telegram.album_updates(PRIVATE_CHAT, [photo, SQUARE, photo], caption="compare")
        ids = [await telegram.push_update(update) for update in album]
        await telegram.wait_delivered(ids[-1])
        await first.service.shutdown()  # within the album's quiet wait
    assert fake_openai.chat_requests() == []

    async with process(settings) as (core, adapter):
        assert await core.service.resume({"telegram": adapter}) == 3
        await core.service.drain()

    assert telegram.texts(PRIVATE_CHAT) == ["echo: compare"]
    (request,) = fake_openai.chat_requests()
    assert len(pictures_sent(request)) == 3


async def test_an_album_of_recordings_is_answered_with_every_transcript(
    bot: Bot, voice_note: bytes
) -> None:
    tg = bot.telegram
    bot.openai.transcript = "minutes of the call"
    album = [
        tg.audio_update(
            PRIVATE_CHAT,
            voice_note,
            file_name=f"call-{n}.ogg",
            mime_type="audio/ogg",
            caption="summarise both recordings" if n == 0 else None,
        )
        for n in range(2)
    ]
    for update in album:
        update["message"]["media_group_id"] = "4242"

    await deliver_all(bot, album)

    assert len(bot.openai.calls("/audio/transcriptions")) == 2
    (request,) = bot.openai.chat_requests()
    asked = "summarise both recordings\n\nminutes of the call\n\nminutes of the call"
    assert request["messages"][-1]["content"] == asked
    assert tg.texts(PRIVATE_CHAT) == [f"echo: {asked}"]


@pytest.mark.telegram_settings(group_voice_transcript_only=True)
@pytest.mark.bot_user(can_read_all_group_messages=True)
async def test_a_video_in_an_album_nobody_addressed_is_not_transcribed(
    bot: Bot, photo: bytes
) -> None:
    # A group that wants transcripts of voice notes gets none of a holiday video's sound,
    # in an album as on its own.
    tg = bot.telegram
    picture = tg.photo_update(GROUP, photo, caption="our trip!")
    video = tg.video_update(GROUP, b"\x00\x00\x00 ftypmp42 a short video")
    picture["message"]["media_group_id"] = video["message"]["media_group_id"] = "4343"

    await deliver_all(bot, [picture, video])

    assert tg.chat_log(GROUP) == []
    assert bot.openai.calls("/audio/transcriptions") == []


async def test_edit_on_an_album_asks_for_one_photo(bot: Bot, photo: bytes) -> None:
    tg = bot.telegram
    await deliver_all(bot, tg.album_updates(PRIVATE_CHAT, [photo, SQUARE], caption="/edit sepia"))

    assert tg.texts(PRIVATE_CHAT) == [
        "I edit one picture at a time: send /edit INSTRUCTION with one photo."
    ]
    assert bot.openai.calls("/images/edits") == []
