"""User stories: audio clips, files Slack will not hand over, and images in threads."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from bots.slack.events import to_incoming
from bots.slack.files import MAX_IMAGE_BYTES
from core.inbox import decode_message, encode_message
from core.testing.fake_openai import PNG_SIGNATURE, make_png
from core.testing.fake_slack import (
    FakeSlack,
    app_mention_event,
    message_event,
    new_ts,
    slash_command,
)
from core.types import Reply
from tests.bots.slack.conftest import SIGNING_SECRET, SlackApp
from tests.conftest import FIXTURES

CHANNEL = "C0GENERAL"
DM = "D0ALICE"


def shared_photo(slack: FakeSlack) -> dict[str, Any]:
    """A JPEG a person shared in Slack (the file object events carry)."""
    return slack.add_file(
        (FIXTURES / "photo.jpg").read_bytes(), name="photo.jpg", mimetype="image/jpeg"
    )


def audio_clip() -> bytes:
    return (FIXTURES / "audio-clip.m4a").read_bytes()


async def test_an_audio_clip_is_downloaded_with_the_token_transcribed_and_answered(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    clip = slack.add_file(audio_clip(), name="audio_message.m4a", mimetype="audio/mp4")
    ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT>", files=[clip])
    )
    await slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()

    (download,) = slack.downloads()
    assert download.headers["Authorization"] == f"Bearer {slack.bot_token}"
    (transcription,) = slack_app.openai.calls("/audio/transcriptions")
    assert transcription.form["file"]["filename"].endswith(".m4a")
    assert transcription.form["file"]["data"] == audio_clip()
    assert slack.visible_texts(CHANNEL, ts) == ["echo: " + slack_app.openai.transcript]


async def test_a_voice_clip_in_a_dm_is_answered_too(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    clip = slack.add_file(audio_clip(), name="clip.m4a", mimetype="audio/mp4")
    await slack_app.post_event(message_event(channel=DM, text="", files=[clip]))
    await slack.wait_until(lambda: bool(slack.visible(DM)))
    await slack_app.adapter.drain()

    assert slack.visible_texts(DM) == ["echo: " + slack_app.openai.transcript]


async def test_a_login_page_instead_of_the_file_is_reported_as_a_missing_scope(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    clip = slack.add_file(
        audio_clip(), name="audio_message.m4a", mimetype="audio/mp4", require_token=False
    )
    ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT>", files=[clip])
    )
    await slack.wait_until(lambda: bool(slack.visible(CHANNEL, ts)))
    await slack_app.adapter.drain()

    (notice,) = slack.visible_texts(CHANNEL, ts)
    assert "files:read" in notice
    assert slack_app.openai.calls("/audio/transcriptions") == []


async def test_the_token_is_not_forwarded_when_a_file_url_redirects_to_another_host(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    clip = slack.add_file(
        audio_clip(), name="audio_message.m4a", mimetype="audio/mp4", redirect_host="localhost"
    )
    ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT>", files=[clip])
    )
    await slack.wait_until(lambda: bool(slack.visible(CHANNEL, ts)))
    await slack_app.adapter.drain()

    first, second = slack.downloads()
    assert first.headers["Authorization"] == f"Bearer {slack.bot_token}"
    assert first.path.startswith("/redirect/")
    assert "Authorization" not in second.headers  # the other host never saw the token
    assert slack_app.openai.calls("/audio/transcriptions") == []


async def test_image_prompt_in_a_mention_uploads_the_image_into_the_thread(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> image: a red fox in snow")
    )
    await slack.wait_for("/api/files.completeUploadExternal")
    await slack_app.adapter.drain()

    (image,) = slack.uploads.values()
    assert image.startswith(PNG_SIGNATURE)
    (message,) = slack.visible(CHANNEL, ts)
    assert message.files and message.text == "a red fox in snow"
    (generation,) = slack_app.openai.calls("/images/generations")
    assert generation.json["prompt"] == "a red fox in snow"


async def test_the_image_slash_command_posts_the_image_in_the_channel(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    response = await slack_app.post(
        slash_command("/image", "a blue whale", channel=CHANNEL), form=True
    )
    assert response.status_code == 200
    await slack.wait_for("/api/files.completeUploadExternal")
    await slack_app.adapter.drain()

    (message,) = slack.visible(CHANNEL)
    assert message.files and message.text == "a blue whale"


async def test_slash_commands_reach_the_core_in_a_dm(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    await slack_app.post_event(message_event(channel=DM, text="remember the number 42"))
    await slack.wait_until(lambda: len(slack.visible(DM)) == 1)
    await slack_app.adapter.drain()

    response = await slack_app.post(slash_command("/reset", "", channel=DM), form=True)
    assert response.status_code == 200
    await slack.wait_until(lambda: len(slack.visible(DM)) == 2)
    await slack_app.adapter.drain()
    assert "History cleared" in slack.visible_texts(DM)[-1]

    await slack_app.post_event(message_event(channel=DM, text="what number?"))
    await slack.wait_until(lambda: len(slack.visible(DM)) == 3)
    await slack_app.adapter.drain()
    last = slack_app.openai.chat_requests()[-1]["messages"]
    assert [m["content"] for m in last[1:]] == ["what number?"]


async def test_edit_with_a_photo_uploads_the_edited_image_and_plain_edit_talk_is_answered(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    photo = shared_photo(slack)
    await slack_app.post_event(
        message_event(channel=DM, text="edit: make the sky pink", files=[photo])
    )
    await slack.wait_for("/api/files.completeUploadExternal")
    await slack_app.adapter.drain()
    (edit,) = slack_app.openai.calls("/images/edits")
    assert edit.form["prompt"] == "make the sky pink"
    (image,) = slack.uploads.values()
    assert image.startswith(PNG_SIGNATURE)

    await slack_app.post_event(message_event(channel=DM, text="Edit: I meant Tuesday"))
    await slack.wait_until(lambda: len(slack.visible(DM)) == 2)
    await slack_app.adapter.drain()
    assert slack_app.openai.chat_requests()[-1]["messages"][-1]["content"] == (
        "Edit: I meant Tuesday"
    )
    assert len(slack_app.openai.calls("/images/edits")) == 1


async def test_an_image_shared_in_a_thread_goes_to_the_model_as_vision_input(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    photo = shared_photo(slack)
    ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> what is this?", files=[photo])
    )
    await slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()

    user_turn = slack_app.openai.chat_requests()[-1]["messages"][-1]
    assert isinstance(user_turn["content"], list)
    kinds = [part["type"] for part in user_turn["content"]]
    assert kinds == ["text", "image_url"]
    assert user_turn["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")


async def test_a_message_resumed_after_a_restart_fetches_its_clip_again_by_file_id(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    clip = slack.add_file(audio_clip(), name="audio_message.m4a", mimetype="audio/mp4")
    ts = new_ts()
    event = app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT>", files=[clip])
    msg = to_incoming(
        event, team_id=slack.team_id, bot_user_id=slack.bot_user_id, fetch_for=lambda f: _lost
    )
    assert msg is not None
    stored = decode_message(msg.event_key, encode_message(msg))

    restored = slack_app.adapter.restore(stored)
    assert restored is not None
    again, sink = restored
    assert await again.attachments[0].fetch() == audio_clip()
    assert slack.api_calls("files.info")  # the URL was looked up again from the file id
    await sink.send(Reply(text="back online"))
    assert slack.visible_texts(CHANNEL, ts) == ["back online"]


async def _lost() -> bytes:
    raise AssertionError("the original fetch is gone after a restart")


async def test_with_transcript_only_a_channel_clip_gets_just_its_transcript(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    slack_app.adapter.core.settings.group_voice_transcript_only = True
    clip = slack.add_file(audio_clip(), name="audio_message.m4a", mimetype="audio/mp4")
    ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT>", files=[clip])
    )
    await slack.wait_until(lambda: bool(slack.visible(CHANNEL, ts)))
    await slack_app.adapter.drain()

    assert slack.visible_texts(CHANNEL, ts) == ["*Transcript:* " + slack_app.openai.transcript]
    assert slack_app.openai.chat_requests() == []


async def test_a_channel_set_to_transcripts_transcribes_every_clip_shared_in_it(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    # Before the setting, a clip nobody addressed to the bot is left alone.
    quiet = slack.add_file(audio_clip(), name="audio_message.m4a", mimetype="audio/mp4")
    quiet_ts = new_ts()
    await slack_app.post_event(message_event(channel=CHANNEL, ts=quiet_ts, files=[quiet]))
    await slack_app.adapter.drain()
    assert slack.visible(CHANNEL, quiet_ts) == []
    assert slack_app.openai.calls("/audio/transcriptions") == []

    setting_ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=setting_ts, text="<@U0BOT> voicemode transcript")
    )
    await slack.wait_until(lambda: bool(slack.visible(CHANNEL, setting_ts)))
    await slack_app.adapter.drain()
    assert "transcript" in slack.visible_texts(CHANNEL, setting_ts)[0]

    clip = slack.add_file(audio_clip(), name="audio_message.m4a", mimetype="audio/mp4")
    ts = new_ts()
    await slack_app.post_event(message_event(channel=CHANNEL, ts=ts, files=[clip]))
    await slack.wait_until(lambda: bool(slack.visible(CHANNEL, ts)))
    await slack_app.adapter.drain()
    assert slack.visible_texts(CHANNEL, ts) == ["*Transcript:* " + slack_app.openai.transcript]
    assert slack_app.openai.chat_requests() == []


async def test_the_bot_token_never_appears_in_the_logs(
    slack_app: SlackApp, caplog: pytest.LogCaptureFixture
) -> None:
    slack = slack_app.slack
    caplog.set_level(logging.DEBUG)
    clip = slack.add_file(audio_clip(), name="a.m4a", mimetype="audio/mp4", require_token=False)
    ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT>", files=[clip])
    )
    await slack.wait_until(lambda: bool(slack.visible(CHANNEL, ts)))
    await slack_app.adapter.drain()

    assert caplog.records
    assert slack.bot_token not in caplog.text
    assert SIGNING_SECRET not in caplog.text


async def test_an_image_quality_the_model_does_not_take_alerts_the_operator(
    slack_app: SlackApp, caplog: pytest.LogCaptureFixture
) -> None:
    settings = slack_app.adapter.core.settings
    settings.image_quality = "hd"  # DALL-E's word: GPT Image takes low, medium, high
    slack = slack_app.slack
    ts = new_ts()
    with caplog.at_level(logging.ERROR):
        await slack_app.post_event(
            app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> image: a red fox")
        )
        await slack.wait_for("/api/chat.postMessage")
        await slack_app.adapter.drain()

    (generation,) = slack_app.openai.calls("/images/generations")
    assert generation.json["quality"] == "hd"
    (message,) = slack.visible(CHANNEL, ts)
    assert (
        message.text
        == ":warning: The bot is not configured correctly. The operator has been told."
    )
    assert slack.uploads == {}
    (alert,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "RELAYBOT_IMAGE_QUALITY" in alert


async def test_a_picture_over_the_size_limit_is_refused_without_downloading_it(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    huge = slack.add_file(
        make_png(8, 8) + b"\0" * (MAX_IMAGE_BYTES + 1), name="huge.png", mimetype="image/png"
    )
    await slack_app.post_event(message_event(channel=DM, text="what is this?", files=[huge]))
    await slack.wait_until(lambda: bool(slack.visible(DM)))
    await slack_app.adapter.drain()

    assert slack.visible_texts(DM) == [
        ":warning: That picture is too large: I can look at pictures of up to 20 MB. "
        "Please send a smaller one."
    ]
    assert slack.downloads() == []  # Slack said how big it is: not fetched at all
    assert slack_app.openai.chat_requests() == []


async def test_a_picture_larger_than_slack_said_is_not_sent_on(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    huge = slack.add_file(
        make_png(8, 8) + b"\0" * (MAX_IMAGE_BYTES + 1), name="huge.png", mimetype="image/png"
    )
    del huge["size"]  # e.g. a file from a shared channel, looked up by id
    await slack_app.post_event(message_event(channel=DM, text="edit: make it pink", files=[huge]))
    await slack.wait_until(lambda: bool(slack.visible(DM)))
    await slack_app.adapter.drain()

    assert slack.visible_texts(DM) == [
        ":warning: That picture is too large: I can look at pictures of up to 20 MB. "
        "Please send a smaller one."
    ]
    assert slack_app.openai.calls("/images/edits") == []
