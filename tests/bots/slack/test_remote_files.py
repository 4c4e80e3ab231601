"""Files kept outside Slack: refused, their host never asked, the bot token never sent.

A remote file (files.remote.add by an app, then shared; a Google Drive file) has as its
url_private its external URL, on any host (files.remote.info: "Don't send Slack tokens or
cookies to it"). relaybot downloaded it with `Authorization: Bearer xoxb-...`, so whoever
ran that host got the bot token, and read it whole, however large.
"""

from __future__ import annotations

from core.testing.fake_openai import make_png
from core.testing.fake_slack import app_mention_event, message_event, new_ts
from tests.bots.slack.conftest import SlackApp

CHANNEL = "C0GENERAL"
DM = "D0ALICE"


def outside(name: str) -> str:
    return (
        f":warning: I can't open {name}: it is stored outside Slack. "
        "Please download it and upload the file itself."
    )


async def test_a_remote_file_is_refused_and_its_host_never_asked(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    notes = slack.add_remote_file(b"meeting notes", name="notes.txt")
    await slack_app.post_event(message_event(channel=DM, text="summarise this", files=[notes]))
    await slack.wait_until(lambda: bool(slack.visible(DM)))
    await slack_app.adapter.drain()

    assert slack.visible_texts(DM) == [outside("notes.txt")]
    assert slack.downloads() == []  # no request to its host, with the token or without
    assert slack_app.openai.chat_requests() == []


async def test_a_picture_from_a_drive_is_refused_in_a_channel_too(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    photo = slack.add_remote_file(
        make_png(8, 8),
        name="chart.png",
        mimetype="image/png",
        filetype="png",
        external_type="gdrive",
    )
    ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> what is this?", files=[photo])
    )
    await slack.wait_until(lambda: bool(slack.visible(CHANNEL, ts)))
    await slack_app.adapter.drain()

    assert slack.visible_texts(CHANNEL, ts) == [outside("chart.png")]
    assert slack.downloads() == []
    assert slack_app.openai.chat_requests() == []


async def test_a_file_files_info_shows_to_be_remote_is_refused(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    notes = slack.add_remote_file(b"meeting notes", name="notes.txt")
    # From a shared channel, the event holds no more than this: files.info says the rest.
    shared = {"id": notes["id"], "name": "notes.txt", "file_access": "check_file_info"}
    await slack_app.post_event(message_event(channel=DM, text="summarise this", files=[shared]))
    await slack.wait_until(lambda: bool(slack.visible(DM)))
    await slack_app.adapter.drain()

    assert [args["file"] for args in slack.api_arguments("files.info")] == [notes["id"]]
    assert slack.visible_texts(DM) == [outside("notes.txt")]
    assert slack.downloads() == []


async def test_a_file_url_on_a_host_that_is_not_slack_is_never_fetched(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    notes = slack.add_file(b"meeting notes", name="notes.txt", mimetype="text/plain")
    # Not flagged as remote, yet elsewhere than Slack (and the configured Slack API).
    for key in ("url_private", "url_private_download"):
        notes[key] = notes[key].replace("127.0.0.1", "localhost")
    await slack_app.post_event(message_event(channel=DM, text="summarise this", files=[notes]))
    await slack.wait_until(lambda: bool(slack.visible(DM)))
    await slack_app.adapter.drain()

    assert slack.visible_texts(DM) == [outside("notes.txt")]
    assert slack.downloads() == []


async def test_a_file_slack_hosts_is_still_read_with_the_token(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    notes = slack.add_file(b"meeting notes", name="notes.txt", mimetype="text/plain")
    await slack_app.post_event(message_event(channel=DM, text="summarise this", files=[notes]))
    await slack.wait_until(lambda: bool(slack.visible(DM)))
    await slack_app.adapter.drain()

    (download,) = slack.downloads()
    assert download.headers["Authorization"] == f"Bearer {slack.bot_token}"
    (request,) = slack_app.openai.chat_requests()
    assert "meeting notes" in str(request["messages"][-1]["content"])
