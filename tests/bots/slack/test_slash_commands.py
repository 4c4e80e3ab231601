"""User stories: slash commands in channels, and where the bot cannot post."""

from __future__ import annotations

import pytest

from core.testing.fake_slack import app_mention_event, message_event, new_ts, slash_command
from tests.bots.slack.conftest import SlackApp

CHANNEL = "C0GENERAL"


@pytest.mark.parametrize("command", ["reset", "retry", "forget"])
async def test_a_history_command_in_a_channel_points_to_the_thread(
    slack_app: SlackApp, command: str
) -> None:
    slack = slack_app.slack
    ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> remember 42")
    )
    await slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()

    response = await slack_app.post(
        slash_command(f"/{command}", "", channel=CHANNEL, response_url=slack.response_url),
        form=True,
    )
    await slack_app.adapter.drain()

    # Only the person who typed it sees the answer, at once, in the ack.
    assert response.status_code == 200
    ack = response.json()
    assert ack["response_type"] == "ephemeral"
    assert "each thread is its own conversation" in ack["text"]
    assert f"`{command}`" in ack["text"]
    assert slack.visible(CHANNEL) == []  # nothing posted in the channel
    assert slack.visible_texts(CHANNEL, ts) == ["echo: remember 42"]
    # The thread's history is untouched.
    await slack_app.post_event(message_event(channel=CHANNEL, thread_ts=ts, text="the number?"))
    await slack.wait_for("/api/chat.stopStream", 2)
    await slack_app.adapter.drain()
    last = slack_app.openai.chat_requests()[-1]["messages"]
    assert [m["content"] for m in last if m["role"] != "system"] == [
        "remember 42",
        "echo: remember 42",
        "the number?",
    ]


async def test_other_slash_commands_in_a_channel_still_work(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    response = await slack_app.post(
        slash_command("/system", "", channel=CHANNEL, response_url=slack.response_url),
        form=True,
    )
    assert response.status_code == 200
    await slack.wait_until(lambda: bool(slack.visible(CHANNEL)))
    await slack_app.adapter.drain()
    assert "system prompt" in slack.visible_texts(CHANNEL)[0].lower()


@pytest.mark.parametrize(
    ("channel", "error"),
    [
        ("C0NOTJOINED", "not_in_channel"),  # a channel the bot was not invited to
        ("D0BOBCAROL", "channel_not_found"),  # someone else's DM
        ("C0MPIMBOB", "channel_not_found"),  # a group DM without the bot
    ],
)
@pytest.mark.parametrize("command", [("/help", ""), ("/image", "a lighthouse")])
async def test_a_slash_command_where_the_bot_cannot_post_says_how_to_bring_it_in(
    slack_app: SlackApp, channel: str, error: str, command: tuple[str, str]
) -> None:
    slack = slack_app.slack
    slack.keep_out(channel, error)
    name, text = command
    response = await slack_app.post(
        slash_command(name, text, channel=channel, response_url=slack.response_url), form=True
    )
    assert response.status_code == 200
    await slack.wait_until(lambda: bool(slack.command_responses), within=15)
    await slack_app.adapter.drain()

    (told,) = slack.command_responses
    assert told["response_type"] == "ephemeral"
    assert "/invite <@U0BOT>" in told["text"] and "DM" in told["text"]
    assert slack.bot_messages() == []
