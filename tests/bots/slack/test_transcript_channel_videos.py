"""A channel that posts transcripts hears audio, not videos.

A screen recording shared with "look at this bug" is nobody's voice note: it gets neither a
transcript nor a refusal. An audio file or an audio clip shared unaddressed still gets its
transcript, and a video sent to the bot is still listened to.
"""

from __future__ import annotations

from core.testing.fake_slack import app_mention_event, message_event, new_ts
from tests.bots.slack.conftest import SlackApp
from tests.conftest import FIXTURES

CHANNEL = "C0GENERAL"
SCREEN_RECORDING = b"\x00\x00\x00\x14ftypqt  " + b"\x00" * 64


async def _transcript_channel(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> voicemode transcript")
    )
    await slack.wait_until(lambda: bool(slack.visible(CHANNEL, ts)))
    await slack_app.adapter.drain()


async def test_a_screen_recording_in_a_transcript_channel_gets_nothing(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    await _transcript_channel(slack_app)
    for name, mime in (("screen.mov", "video/quicktime"), ("screen.mp4", "video/mp4")):
        video = slack.add_file(SCREEN_RECORDING, name=name, mimetype=mime)
        ts = new_ts()
        await slack_app.post_event(
            message_event(channel=CHANNEL, ts=ts, text="look at this bug", files=[video])
        )
        await slack_app.adapter.drain()
        assert slack.visible_texts(CHANNEL, ts) == []
    assert slack_app.openai.calls("/audio/transcriptions") == []


async def test_an_audio_clip_in_a_transcript_channel_still_gets_its_transcript(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    await _transcript_channel(slack_app)
    clip = slack.add_file(
        (FIXTURES / "audio-clip.m4a").read_bytes(), name="audio_message.m4a", mimetype="audio/mp4"
    )
    ts = new_ts()
    await slack_app.post_event(message_event(channel=CHANNEL, ts=ts, files=[clip]))
    await slack.wait_until(lambda: bool(slack.visible_texts(CHANNEL, ts)))
    await slack_app.adapter.drain()
    assert slack.visible_texts(CHANNEL, ts) == [f"*Transcript:* {slack_app.openai.transcript}"]


async def test_a_clip_shared_with_a_video_gets_the_clips_transcript_alone(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    await _transcript_channel(slack_app)
    clip = slack.add_file(
        (FIXTURES / "audio-clip.m4a").read_bytes(), name="audio_message.m4a", mimetype="audio/mp4"
    )
    video = slack.add_file(SCREEN_RECORDING, name="screen.mp4", mimetype="video/mp4")
    ts = new_ts()
    await slack_app.post_event(message_event(channel=CHANNEL, ts=ts, files=[clip, video]))
    await slack.wait_until(lambda: bool(slack.visible_texts(CHANNEL, ts)))
    await slack_app.adapter.drain()

    (heard,) = slack_app.openai.calls("/audio/transcriptions")  # the clip, not the video
    assert heard.form["file"]["filename"] == "audio_message.m4a"
    assert slack.visible_texts(CHANNEL, ts) == [f"*Transcript:* {slack_app.openai.transcript}"]
