"""Slack refusing or failing to hand over a file: said for what it is, or not at all.

A file shared from another workspace arrives without its URLs (`file_access:
check_file_info`): files.info gives them, and without the files:read scope it answers
missing_scope. That, or any other Slack error fetching a file, reached the person as
"Something went wrong", and an unaddressed clip's failure was logged as unexpected.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from bots.slack import SinkOptions
from core.testing.fake_slack import FakeSlack, app_mention_event, message_event, new_ts
from tests.bots.slack.conftest import SlackApp
from tests.conftest import FIXTURES

CHANNEL = "C0GENERAL"
GENERIC = "Something went wrong"


@pytest.fixture
def sink_options() -> SinkOptions:
    """Fast pacing, and fast retries of Slack's 5xx."""
    return SinkOptions(update_interval=0.05, stream_interval=0.05, server_error_backoff=0.01)


def clip(slack: FakeSlack, *, shared: bool = True) -> dict[str, Any]:
    """An audio clip's file object; `shared`: as a shared channel sends it, without URLs."""
    file = slack.add_file(
        (FIXTURES / "audio-clip.m4a").read_bytes(), name="audio_message.m4a", mimetype="audio/mp4"
    )
    if shared:
        file = {k: v for k, v in file.items() if not k.startswith("url_private")}
        file["file_access"] = "check_file_info"
    return file


async def addressed_clip_notice(slack_app: SlackApp, file: dict[str, Any]) -> str:
    """Post a mention carrying `file`; the one message the bot posts under it."""
    slack = slack_app.slack
    ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> summarise", files=[file])
    )
    await slack.wait_until(lambda: bool(slack.visible(CHANNEL, ts)))
    await slack_app.adapter.drain()
    (notice,) = slack.visible_texts(CHANNEL, ts)
    return notice


async def transcript_channel(slack_app: SlackApp) -> None:
    """Make CHANNEL post a transcript under every clip shared in it."""
    slack = slack_app.slack
    ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> voicemode transcript")
    )
    await slack.wait_until(lambda: bool(slack.visible(CHANNEL, ts)))
    await slack_app.adapter.drain()


async def test_an_addressed_shared_clip_slack_will_not_describe_gets_the_scope_advice(
    slack_app: SlackApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    slack_app.slack.fail_next("files.info", "missing_scope")

    notice = await addressed_clip_notice(slack_app, clip(slack_app.slack))

    assert "files:read" in notice and GENERIC not in notice
    assert slack_app.openai.calls("/audio/transcriptions") == []
    assert "missing_scope" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_addressed_clip_slack_no_longer_has_is_said_to_be_gone(
    slack_app: SlackApp,
) -> None:
    slack_app.slack.fail_next("files.info", "file_not_found")

    notice = await addressed_clip_notice(slack_app, clip(slack_app.slack))

    assert "couldn't find that file" in notice and GENERIC not in notice


@pytest.mark.parametrize("where", ["files.info", "download"])
async def test_an_addressed_clip_while_slack_fails_is_told_slack_is_not_answering(
    slack_app: SlackApp, where: str
) -> None:
    slack = slack_app.slack
    if where == "files.info":  # past the client's own retries
        slack.fail_next("files.info", "internal_error", status=503, times=10)
        file = clip(slack)
    else:
        slack.fail_downloads(503)
        file = clip(slack, shared=False)

    notice = await addressed_clip_notice(slack_app, file)

    assert "Slack is not answering right now" in notice and GENERIC not in notice
    assert slack_app.openai.calls("/audio/transcriptions") == []


async def test_an_unaddressed_shared_clip_slack_will_not_describe_posts_nothing(
    slack_app: SlackApp, caplog: pytest.LogCaptureFixture
) -> None:
    slack = slack_app.slack
    await transcript_channel(slack_app)
    slack.fail_next("files.info", "missing_scope")
    caplog.set_level(logging.INFO)
    ts = new_ts()

    await slack_app.post_event(message_event(channel=CHANNEL, ts=ts, files=[clip(slack)]))
    await slack.wait_until(lambda: bool(slack.api_calls("files.info")))
    await slack_app.adapter.drain()

    assert slack.visible_texts(CHANNEL, ts) == []
    assert slack_app.openai.calls("/audio/transcriptions") == []
    # The operator hears of the missing scope, not of an "unexpected error".
    assert "missing_scope" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_an_unaddressed_clip_while_slack_fails_posts_nothing_and_is_kept_for_later(
    slack_app: SlackApp, caplog: pytest.LogCaptureFixture
) -> None:
    slack = slack_app.slack
    await transcript_channel(slack_app)
    slack.fail_next("files.info", "internal_error", status=503, times=10)
    caplog.set_level(logging.INFO)
    ts = new_ts()

    await slack_app.post_event(message_event(channel=CHANNEL, ts=ts, files=[clip(slack)]))
    await slack.wait_until(lambda: bool(slack.api_calls("files.info")))
    await slack_app.adapter.drain()

    assert slack.visible_texts(CHANNEL, ts) == []
    assert "kept for a later attempt" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
