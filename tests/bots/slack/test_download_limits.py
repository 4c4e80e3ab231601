"""Every Slack download has a limit: what the core takes of that kind of file.

Only pictures had one: a clip or a text file was read whole, whatever its size (a file
from a shared channel, whose size only files.info tells, was downloaded before the core
could refuse it).
"""

from __future__ import annotations

from typing import Any

import pytest

from core.config import Settings
from core.testing.fake_slack import message_event
from tests.bots.slack.conftest import SlackApp
from tests.conftest import FIXTURES

DM = "D0ALICE"
AUDIO_LIMIT = 2**20  # bytes
CHARS = 1_000


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_audio_bytes": AUDIO_LIMIT, "max_input_chars": CHARS})


def from_shared_channel(file: dict[str, Any]) -> dict[str, Any]:
    """`file` as a shared channel's event brings it: no URLs, no size (files.info has them)."""
    kept = {k: v for k, v in file.items() if not k.startswith("url_private") and k != "size"}
    return {**kept, "file_access": "check_file_info"}


async def only_reply(slack_app: SlackApp, file: dict[str, Any]) -> str:
    slack = slack_app.slack
    await slack_app.post_event(message_event(channel=DM, text="what is this?", files=[file]))
    await slack.wait_until(lambda: bool(slack.visible(DM)))
    await slack_app.adapter.drain()
    (reply,) = slack.visible_texts(DM)
    return reply


async def test_a_clip_over_the_audio_limit_is_not_downloaded(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    recording = (FIXTURES / "audio-clip.m4a").read_bytes()
    clip = slack.add_file(
        recording + b"\0" * AUDIO_LIMIT, name="meeting.m4a", mimetype="audio/mp4"
    )

    reply = await only_reply(slack_app, from_shared_channel(clip))

    assert reply == ":warning: That audio file is too large to transcribe (the limit is 1 MB)."
    assert slack.downloads() == []
    assert slack_app.openai.calls("/audio/transcriptions") == []


async def test_a_text_file_longer_than_the_bot_reads_is_not_downloaded(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    notes = slack.add_file(b"x" * (4 * CHARS + 1), name="notes.txt", mimetype="text/plain")

    reply = await only_reply(slack_app, from_shared_channel(notes))

    assert reply == (
        ":warning: notes.txt is too long for me: I read up to 1,000 characters. "
        "Please send the part that matters."
    )
    assert slack.downloads() == []
    assert slack_app.openai.chat_requests() == []
