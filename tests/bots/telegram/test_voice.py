"""Voice notes and audio: transcribed (as .ogg), answered, or refused when too large."""

from __future__ import annotations

import logging

import pytest

from core.testing.fake_openai import DEFAULT_TRANSCRIPT
from tests.bots.telegram.conftest import ADA, GROUP, PRIVATE_CHAT, Bot


def _transcription_uploads(
    bot: Bot, path: str = "/audio/transcriptions"
) -> list[dict[str, object]]:
    return [r.form["file"] for r in bot.openai.calls(path)]


@pytest.mark.parametrize("transport", ["polling", "webhook"])
async def test_a_voice_note_is_transcribed_and_answered(bot: Bot, voice_note: bytes) -> None:
    await bot.deliver(bot.telegram.voice_update(PRIVATE_CHAT, voice_note))

    (upload,) = _transcription_uploads(bot)
    assert str(upload["filename"]).endswith(".ogg")
    assert upload["data"] == voice_note, "the real OGG bytes went to transcription"
    assert bot.telegram.texts(PRIVATE_CHAT) == [f"echo: {DEFAULT_TRANSCRIPT}"]


async def test_an_audio_file_is_transcribed_with_its_own_name(bot: Bot) -> None:
    clip = b"\x00\x00\x00\x18ftypM4A " + b"\x00" * 64
    await bot.deliver(bot.telegram.audio_update(PRIVATE_CHAT, clip, file_name="meeting.m4a"))

    (upload,) = _transcription_uploads(bot)
    assert upload["filename"] == "meeting.m4a"
    assert bot.telegram.texts(PRIVATE_CHAT) == [f"echo: {DEFAULT_TRANSCRIPT}"]


async def test_a_voice_note_in_a_group_needs_the_bot_to_be_addressed(
    bot: Bot, voice_note: bytes
) -> None:
    await bot.deliver(bot.telegram.voice_update(GROUP, voice_note))

    assert bot.telegram.chat_log(GROUP) == []
    assert bot.openai.calls("/audio/transcriptions") == []


@pytest.mark.telegram_settings(group_voice_transcript_only=True)
async def test_transcript_only_groups_get_the_transcript_as_a_reply_to_the_voice_note(
    bot: Bot, voice_note: bytes
) -> None:
    update = bot.telegram.voice_update(GROUP, voice_note)
    await bot.deliver(update)

    (message,) = bot.telegram.chat_log(GROUP)
    assert message.text == DEFAULT_TRANSCRIPT
    assert message.reply_to == update["message"]["message_id"]
    assert bot.openai.chat_requests() == [], "transcript only: no chat answer"


async def test_a_group_switched_to_transcripts_gets_one_for_every_voice_note(
    bot: Bot, voice_note: bytes
) -> None:
    bot.telegram.chat_admins[GROUP] = {ADA}  # a group setting: its admins change it
    await bot.deliver(bot.telegram.text_update(GROUP, "/voicemode transcript"))
    update = bot.telegram.voice_update(GROUP, voice_note)
    await bot.deliver(update)

    setting, transcript = bot.telegram.chat_log(GROUP)
    assert "transcript" in setting.text
    assert transcript.text == DEFAULT_TRANSCRIPT
    assert transcript.reply_to == update["message"]["message_id"]
    assert bot.openai.chat_requests() == []

    await bot.deliver(bot.telegram.text_update(GROUP, "/voicemode answer"))
    await bot.deliver(bot.telegram.voice_update(GROUP, voice_note))
    assert len(bot.telegram.chat_log(GROUP)) == 3, "unaddressed voice notes are left alone again"


async def test_translate_as_a_reply_to_a_voice_note_gives_english(
    bot: Bot, voice_note: bytes
) -> None:
    bot.openai.translation = "good morning, everyone"
    voice = bot.telegram.voice_update(GROUP, voice_note)["message"]
    await bot.deliver(bot.telegram.text_update(GROUP, "/translate", reply_to=voice))

    (upload,) = _transcription_uploads(bot, "/audio/translations")
    assert str(upload["filename"]).endswith(".ogg")
    assert bot.telegram.texts(GROUP) == ["good morning, everyone"]


@pytest.mark.parametrize(
    "declared_size",
    [30 * 1024 * 1024, 21 * 1024 * 1024],
    ids=["over-transcription-limit", "over-telegram-download-limit"],
)
async def test_an_oversized_voice_note_is_refused_without_downloading(
    bot: Bot, voice_note: bytes, declared_size: int
) -> None:
    await bot.deliver(bot.telegram.voice_update(PRIVATE_CHAT, voice_note, file_size=declared_size))

    (message,) = bot.telegram.chat_log(PRIVATE_CHAT)
    assert "too large" in message.text or "larger than 20 MB" in message.text
    assert bot.telegram.calls("/getFile") == []
    assert bot.telegram.downloads == []
    assert bot.openai.calls("/audio/transcriptions") == []


async def test_a_server_without_transcription_alerts_the_operator_and_blames_no_file(
    bot: Bot, voice_note: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    bot.openai.missing_endpoints.add("/audio/transcriptions")  # e.g. Ollama
    with caplog.at_level(logging.ERROR):
        await bot.deliver(bot.telegram.voice_update(PRIVATE_CHAT, voice_note))

    # Not "that audio file may be damaged": the file is fine, the server cannot transcribe.
    assert bot.telegram.texts(PRIVATE_CHAT) == [
        "The bot is not configured correctly. The operator has been told."
    ]
    (alert,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "EndpointMissing" in alert and "/audio/transcriptions" in alert


@pytest.mark.telegram_settings(transcribe_model="gpt-4o-mini")  # the chat model, by mistake
async def test_a_transcription_model_the_server_refuses_alerts_the_operator_and_blames_no_file(
    bot: Bot, voice_note: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        await bot.deliver(bot.telegram.voice_update(PRIVATE_CHAT, voice_note))

    # The server's 400 names the model (param "model"): not the person's file to record again.
    assert bot.telegram.texts(PRIVATE_CHAT) == [
        "The bot is not configured correctly. The operator has been told."
    ]
    (alert,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "ModelUnavailable" in alert and "gpt-4o-mini" in alert


async def test_asking_for_every_voice_note_warns_when_privacy_mode_holds_them_back(
    bot: Bot,
) -> None:
    bot.telegram.chat_admins[GROUP] = {ADA}
    await bot.deliver(bot.telegram.text_update(GROUP, "/voicemode transcript"))

    (notice,) = bot.telegram.texts(GROUP)
    assert notice.startswith("I'll post the transcript of each voice note here.")
    assert "privacy mode is on" in notice and "/setprivacy" in notice


@pytest.mark.bot_user(can_read_all_group_messages=True)  # BotFather: /setprivacy -> Disable
async def test_with_privacy_mode_off_the_voice_mode_needs_no_warning(bot: Bot) -> None:
    bot.telegram.chat_admins[GROUP] = {ADA}
    await bot.deliver(bot.telegram.text_update(GROUP, "/voicemode transcript"))

    assert bot.telegram.texts(GROUP) == ["I'll post the transcript of each voice note here."]
