"""Voice notes when something on the way fails: Telegram's file server, Telegram taking the
transcript, the transcription endpoint; /retry after a voice note that failed; a voice note
answering the bot in a group that posts transcripts; audio sent as a file of a generic type.

What the person sees in the chat, and what is stored and billed, through the real adapter.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import select

from core.db.models import InboundEvent, UsageRecord
from core.testing.fake_openai import DEFAULT_TRANSCRIPT, message_text
from tests.bots.telegram.conftest import ADA, GROUP, PRIVATE_CHAT, Bot, stored_turns

pytestmark = pytest.mark.usefixtures("quick_backoff")  # Telegram's 5xx back-off
TRANSCRIPTS = pytest.mark.telegram_settings(group_voice_transcript_only=True)
HEARS_ALL = pytest.mark.bot_user(can_read_all_group_messages=True)
BOB = 2002
GENERIC = "Something went wrong. Please try again."
FILE_GONE = "Telegram no longer has that file, so I can't open it. Please send it again."
FILE_UNAVAILABLE = (
    "I couldn't download that file from Telegram just now. Please try again in a moment."
)


def _bob(bot: Bot) -> dict[str, object]:
    return bot.telegram.user(BOB, "Bob", "bob")


async def _events(bot: Bot) -> list[tuple[str, str | None]]:
    """Every event's (status, claimed_by), oldest first."""
    async with bot.core.engine.connect() as conn:
        rows = await conn.execute(
            select(InboundEvent.status, InboundEvent.claimed_by).order_by(InboundEvent.id)
        )
        return [(r.status, r.claimed_by) for r in rows]


async def _billed(bot: Bot) -> list[str]:
    """The kind of every usage row, oldest first."""
    async with bot.core.engine.connect() as conn:
        rows = await conn.execute(select(UsageRecord.kind).order_by(UsageRecord.id))
        return [r.kind for r in rows]


async def _sweep(bot: Bot) -> int:
    """What the runner's sweeper does every lease_seconds / 2, and wait for it."""
    resumed = await bot.core.service.resume({"telegram": bot.adapter})
    await bot.core.service.drain()
    return resumed


def _alerts(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("relaybot") and r.levelno >= 40]


# -- 1. Telegram's file server, Telegram refusing the transcript ---------------------------
async def test_telegram_failing_a_voice_notes_download_is_said_as_such(
    bot: Bot, voice_note: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    tg = bot.telegram
    tg.fail_next("getFile", error_code=500, description="Internal Server Error", times=4)
    with caplog.at_level(logging.INFO):
        await bot.deliver(tg.voice_update(PRIVATE_CHAT, voice_note))
    tg.fail_downloads_next(404)
    await bot.deliver(tg.voice_update(PRIVATE_CHAT, voice_note))

    assert tg.texts(PRIVATE_CHAT) == [FILE_UNAVAILABLE, FILE_GONE]
    assert not any("unexpected" in r.getMessage() for r in caplog.records)
    assert bot.openai.calls("/audio/transcriptions") == []
    assert await _billed(bot) == []


@TRANSCRIPTS
@HEARS_ALL
async def test_download_failures_of_an_unaddressed_voice_note_post_nothing(
    bot: Bot, voice_note: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    tg = bot.telegram
    with caplog.at_level(logging.INFO):
        # The file gone from Telegram's servers (the download's 404): nothing to retry.
        tg.fail_downloads_next(404)
        await bot.deliver(tg.voice_update(GROUP, voice_note, from_user=_bob(bot)))
        # Telegram's getFile down (5xx past the retries): nothing posted, kept for later.
        tg.fail_next("getFile", error_code=502, description="Bad Gateway", times=4)
        await bot.deliver(tg.voice_update(GROUP, voice_note, from_user=_bob(bot)))

    assert tg.chat_log(GROUP) == [], "no error under a voice note nobody addressed"
    assert _alerts(caplog) == []
    assert await _events(bot) == [("done", None), ("deferred", None)]

    # Telegram is back: the next sweep transcribes the kept one.
    assert await _sweep(bot) == 1
    assert tg.texts(GROUP) == [DEFAULT_TRANSCRIPT]
    assert await stored_turns(bot, GROUP) == [("user", DEFAULT_TRANSCRIPT, "heard")]
    assert await _events(bot) == [("done", None), ("done", None)]


@TRANSCRIPTS
@HEARS_ALL
async def test_a_transcript_telegram_did_not_take_is_kept_and_nothing_is_posted(
    bot: Bot, voice_note: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    tg = bot.telegram
    tg.fail_next("sendMessage", error_code=502, description="Bad Gateway", times=4)
    with caplog.at_level(logging.INFO):
        await bot.deliver(tg.voice_update(GROUP, voice_note, from_user=_bob(bot)))

    assert tg.chat_log(GROUP) == [], "not even the generic error"
    assert _alerts(caplog) == []
    # Paid for, and the speaker's words: in the history all the same.
    assert await _billed(bot) == ["audio"]
    assert await stored_turns(bot, GROUP) == [("user", DEFAULT_TRANSCRIPT, "heard")]
    (told,) = [r for r in caplog.records if "did not take a voice note's transcript" in r.msg]
    assert told.levelno == logging.WARNING and told.chat == f"telegram:{GROUP}"  # type: ignore[attr-defined]


# -- 2. /retry after a voice note that failed ----------------------------------------------
@pytest.mark.parametrize("status", [500, 429])
async def test_retry_after_a_failed_voice_note_answers_the_voice_note(
    bot: Bot, voice_note: bytes, status: int
) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "name a colour"))
    bot.openai.fail_next(status, times=2, path="/audio/transcriptions")  # past the retry
    bot.openai.transcript = "and what about a second colour?"
    await bot.deliver(tg.voice_update(PRIVATE_CHAT, voice_note))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/retry"))

    answered, failed, retried = tg.texts(PRIVATE_CHAT)
    assert answered == "echo: name a colour"
    assert failed != GENERIC
    assert retried == "echo: and what about a second colour?"
    last = bot.openai.chat_requests()[-1]["messages"]
    assert [message_text(m["content"]) for m in last if m["role"] == "user"] == [
        "name a colour",
        "and what about a second colour?",
    ]
    assert await stored_turns(bot) == [
        ("user", "name a colour", "ok"),
        ("assistant", "echo: name a colour", "ok"),
        ("user", "and what about a second colour?", "ok"),
        ("assistant", "echo: and what about a second colour?", "ok"),
    ]
    assert await _billed(bot) == ["chat", "audio", "chat"]  # the old answer not again

    # The voice note heard, /retry is about its answer again.
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/retry"))
    assert tg.texts(PRIVATE_CHAT)[-1] == "echo: and what about a second colour?"
    assert len(bot.openai.calls("/audio/transcriptions")) == 3  # not transcribed again


async def test_retry_after_a_later_answer_answers_that_one(bot: Bot, voice_note: bytes) -> None:
    tg = bot.telegram
    bot.openai.fail_next(503, times=2, path="/audio/transcriptions")
    await bot.deliver(tg.voice_update(PRIVATE_CHAT, voice_note))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "name a fruit"))
    await bot.deliver(tg.text_update(PRIVATE_CHAT, "/retry"))

    assert tg.texts(PRIVATE_CHAT)[1:] == ["echo: name a fruit", "echo: name a fruit"]
    assert len(bot.openai.calls("/audio/transcriptions")) == 2  # only the failed tries


# -- 3. the transcription endpoint failing for now, for a voice note nobody addressed ------
@TRANSCRIPTS
@HEARS_ALL
@pytest.mark.parametrize("status", [503, 429])
async def test_an_unaddressed_voice_note_whose_transcription_failed_is_kept_for_later(
    bot: Bot, voice_note: bytes, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    tg = bot.telegram
    bot.openai.fail_next(status, times=2, path="/audio/transcriptions")  # past the retry
    with caplog.at_level(logging.INFO):
        await bot.deliver(tg.voice_update(GROUP, voice_note, from_user=_bob(bot)))

    assert tg.chat_log(GROUP) == []
    assert await _events(bot) == [("deferred", None)], "open, for the next sweep"
    (kept,) = [r for r in caplog.records if "kept for a later attempt" in r.getMessage()]
    assert kept.levelno == logging.WARNING
    assert kept.chat == f"telegram:{GROUP}" and kept.event  # type: ignore[attr-defined]
    assert DEFAULT_TRANSCRIPT not in kept.getMessage()

    assert await _sweep(bot) == 1
    (posted,) = tg.chat_log(GROUP)
    assert posted.text == DEFAULT_TRANSCRIPT
    assert await stored_turns(bot, GROUP) == [("user", DEFAULT_TRANSCRIPT, "heard")]
    assert await _events(bot) == [("done", None)]
    assert await _billed(bot) == ["audio"]


@TRANSCRIPTS
@HEARS_ALL
async def test_the_chat_is_answered_while_a_kept_voice_note_waits_for_its_next_attempt(
    bot: Bot, voice_note: bytes
) -> None:
    """The kept note does not hold the chat: what is said after it is answered at once (on
    PostgreSQL too, where the oldest open event of a chat goes first), and the note is
    transcribed at the next sweep, after them."""
    tg = bot.telegram
    bot.openai.fail_next(503, times=2, path="/audio/transcriptions")  # past the retry
    await bot.deliver(tg.voice_update(GROUP, voice_note, from_user=_bob(bot)))
    assert await _events(bot) == [("deferred", None)]
    metrics = (await bot.core.service.metrics.render()).decode()
    assert "relaybot_inbox_depth 1.0" in metrics.splitlines(), "not answered yet: counted"

    await asyncio.wait_for(bot.deliver(tg.text_update(GROUP, "@relay_test_bot name a fruit")), 5)
    assert tg.texts(GROUP) == ["echo: name a fruit"]

    assert await _sweep(bot) == 1
    assert tg.texts(GROUP) == ["echo: name a fruit", DEFAULT_TRANSCRIPT]
    assert await stored_turns(bot, GROUP) == [
        ("user", "name a fruit", "ok"),
        ("assistant", "echo: name a fruit", "ok"),
        ("user", DEFAULT_TRANSCRIPT, "heard"),
    ]
    assert await _events(bot) == [("done", None), ("done", None)]


@TRANSCRIPTS
@HEARS_ALL
async def test_forget_takes_a_kept_voice_note_with_the_chat(bot: Bot, voice_note: bytes) -> None:
    """A note kept for a later attempt goes with the chat's /forget: the sweep finds nothing
    to transcribe into the history just forgotten."""
    tg = bot.telegram
    tg.chat_admins[GROUP] = {ADA}
    bot.openai.fail_next(503, times=2, path="/audio/transcriptions")  # past the retry
    await bot.deliver(tg.voice_update(GROUP, voice_note, from_user=_bob(bot)))
    await bot.deliver(tg.text_update(GROUP, "/forget"))

    assert await _sweep(bot) == 0
    assert DEFAULT_TRANSCRIPT not in tg.texts(GROUP)
    assert await stored_turns(bot, GROUP) == []
    assert len(bot.openai.calls("/audio/transcriptions")) == 2  # the failed tries only


@TRANSCRIPTS
@HEARS_ALL
async def test_an_unaddressed_voice_note_is_tried_a_bounded_number_of_times(
    bot: Bot, voice_note: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    tg = bot.telegram
    bot.openai.fail_next(503, times=100, path="/audio/transcriptions")
    with caplog.at_level(logging.INFO):
        await bot.deliver(tg.voice_update(GROUP, voice_note, from_user=_bob(bot)))
        assert await _sweep(bot) == 1
        assert await _sweep(bot) == 1
        assert await _sweep(bot) == 0, "given up after the third attempt"

    assert tg.chat_log(GROUP) == []
    assert await _events(bot) == [("done", None)]
    assert len(bot.openai.calls("/audio/transcriptions")) == 3 * 2  # each with one retry
    (given_up,) = [r for r in caplog.records if "given up after 3 attempts" in r.getMessage()]
    assert given_up.levelno == logging.WARNING
    assert _alerts(caplog) == []


# -- 4. answering the bot by voice in a group that posts transcripts -----------------------
@TRANSCRIPTS
@HEARS_ALL
async def test_a_voice_note_replying_to_an_answer_is_answered(bot: Bot, voice_note: bytes) -> None:
    tg = bot.telegram
    await bot.deliver(tg.text_update(GROUP, "@relay_test_bot name a colour"))
    answer = tg.chat_log(GROUP)[-1]
    bot.openai.transcript = "and what about a second colour?"
    await bot.deliver(tg.voice_update(GROUP, voice_note, reply_to=answer))

    assert tg.texts(GROUP) == ["echo: name a colour", "echo: and what about a second colour?"]
    assert len(bot.openai.chat_requests()) == 2
    assert [turn[2] for turn in await stored_turns(bot, GROUP)] == ["ok"] * 4

    # A voice note replying to a transcript the bot posted gets its own transcript only.
    bot.openai.transcript = "Thursday works for me."
    await bot.deliver(tg.voice_update(GROUP, voice_note, from_user=_bob(bot)))
    transcript = tg.chat_log(GROUP)[-1]
    bot.openai.transcript = "Friday is better."
    await bot.deliver(tg.voice_update(GROUP, voice_note, reply_to=transcript))
    assert tg.texts(GROUP)[2:] == ["Thursday works for me.", "Friday is better."]
    assert len(bot.openai.chat_requests()) == 2


# -- 5. audio sent as a file of a generic type --------------------------------------------
@pytest.mark.parametrize(
    ("name", "mime"),
    [
        ("memo.m4a", "application/octet-stream"),
        ("memo.mp3", "application/octet-stream"),
        ("memo.ogg", "application/ogg"),
    ],
)
async def test_audio_sent_as_a_file_of_a_generic_type_is_transcribed(
    bot: Bot, voice_note: bytes, name: str, mime: str
) -> None:
    await bot.deliver(
        bot.telegram.document_update(PRIVATE_CHAT, voice_note, file_name=name, mime_type=mime)
    )

    assert bot.telegram.texts(PRIVATE_CHAT) == [f"echo: {DEFAULT_TRANSCRIPT}"]
    (call,) = bot.openai.calls("/audio/transcriptions")
    assert call.form["file"]["filename"] == name
    assert await _billed(bot) == ["audio", "chat"]
