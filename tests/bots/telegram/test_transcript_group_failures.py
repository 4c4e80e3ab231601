"""Voice notes in a group that posts transcripts, when transcribing them fails.

Nobody asked the bot anything about a voice note it transcribes unasked: a failure (a flagged
transcript, silence, a server without the transcription endpoint) is posted under none of
them, and the operator hears of a broken setup once, not once a note. A voice note addressed
to the bot keeps its reply. Also: over-long recordings and audio labelled with the MIME
aliases platforms send.
"""

from __future__ import annotations

import logging

import pytest

from core.testing.fake_openai import DEFAULT_TRANSCRIPT
from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT, Bot

GROUP_KEY = f"telegram:{GROUP}"
TOO_LONG = (
    "That recording is too long for the transcription model; please send it in shorter parts."
)


def _operator_alerts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "relaybot.service" and r.levelno >= logging.ERROR
    ]


@pytest.mark.telegram_settings(group_voice_transcript_only=True)
async def test_a_flagged_transcript_of_an_unaddressed_voice_note_posts_nothing(
    bot: Bot, voice_note: bytes
) -> None:
    bot.openai.transcript = "FLAGME now"
    await bot.deliver(bot.telegram.voice_update(GROUP, voice_note))
    assert bot.telegram.texts(GROUP) == []
    assert await bot.stored(GROUP_KEY) == []

    # Asked about it, the speaker is told why there is no answer.
    await bot.deliver(
        bot.telegram.voice_update(GROUP, voice_note, caption="@relay_test_bot sum up")
    )
    (refusal,) = bot.telegram.texts(GROUP)
    assert refusal.startswith("Sorry, I can't help with that")


@pytest.mark.telegram_settings(group_voice_transcript_only=True)
async def test_a_silent_unaddressed_voice_note_posts_nothing(
    bot: Bot, voice_note: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    bot.openai.transcript = "   "
    with caplog.at_level(logging.INFO):
        await bot.deliver(bot.telegram.voice_update(GROUP, voice_note))
    assert bot.telegram.texts(GROUP) == []
    assert await bot.stored(GROUP_KEY) == []
    assert _operator_alerts(caplog) == []
    assert any("not transcribed: BadInput" in r.getMessage() for r in caplog.records)

    await bot.deliver(bot.telegram.voice_update(PRIVATE_CHAT, voice_note))
    assert bot.telegram.texts(PRIVATE_CHAT) == ["I couldn't hear any speech in that audio."]


@pytest.mark.telegram_settings(group_voice_transcript_only=True)
async def test_without_a_transcription_endpoint_the_operator_is_told_once_and_the_group_nothing(
    bot: Bot, voice_note: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    bot.openai.missing_endpoints.add("/audio/transcriptions")
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            await bot.deliver(bot.telegram.voice_update(GROUP, voice_note))
    assert len(bot.openai.calls("/audio/transcriptions")) == 3
    assert bot.telegram.texts(GROUP) == []
    (alert,) = _operator_alerts(caplog)
    assert "EndpointMissing" in alert and "/audio/transcriptions" in alert
    quiet = [r for r in caplog.records if "not transcribed: EndpointMissing" in r.getMessage()]
    assert len(quiet) == 2 and all(r.levelno == logging.INFO for r in quiet)

    # A voice note sent to the bot still gets told (and the operator, as for any message).
    caplog.clear()
    with caplog.at_level(logging.INFO):
        await bot.deliver(bot.telegram.voice_update(PRIVATE_CHAT, voice_note))
    assert bot.telegram.texts(PRIVATE_CHAT) == [
        "The bot is not configured correctly. The operator has been told."
    ]
    assert len(_operator_alerts(caplog)) == 1


async def test_an_over_long_voice_note_is_said_to_be_too_long(bot: Bot, voice_note: bytes) -> None:
    bot.openai.max_audio_seconds = 1500
    bot.openai.audio_seconds = 1830.53
    await bot.deliver(bot.telegram.voice_update(PRIVATE_CHAT, voice_note, duration=1831))
    assert bot.telegram.texts(PRIVATE_CHAT) == [TOO_LONG]
    assert bot.openai.chat_requests() == []


@pytest.mark.parametrize(
    "mime", ["audio/x-opus+ogg", "audio/vnd.wave", "audio/mp4a-latm", "audio/x-flac"]
)
async def test_an_unnamed_audio_file_with_a_mime_alias_is_transcribed(
    bot: Bot, voice_note: bytes, mime: str
) -> None:
    await bot.deliver(
        bot.telegram.audio_update(PRIVATE_CHAT, voice_note, file_name=None, mime_type=mime)
    )
    assert bot.telegram.texts(PRIVATE_CHAT) == [f"echo: {DEFAULT_TRANSCRIPT}"]
    (call,) = bot.openai.calls("/audio/transcriptions")
    assert call.form["file"]["filename"].rpartition(".")[2] in ("ogg", "wav", "m4a", "flac")
