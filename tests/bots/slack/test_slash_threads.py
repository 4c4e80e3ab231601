"""User stories: what a slash command posts in a channel (a picture from /image, /help) is no
conversation with the bot; people talking in the thread under it are left alone, unless
they bring the bot in with a mention."""

from __future__ import annotations

import pytest

from core.testing.fake_slack import app_mention_event, message_event, slash_command
from tests.bots.slack.conftest import SlackApp

CHANNEL = "C0GENERAL"


@pytest.mark.parametrize(
    ("command", "text", "done"),
    [
        ("/image", "a blue whale", "/api/files.completeUploadExternal"),
        ("/help", "", "/api/chat.postMessage"),
    ],
)
async def test_talk_under_a_slash_commands_output_is_left_to_the_people(
    slack_app: SlackApp, command: str, text: str, done: str
) -> None:
    slack = slack_app.slack
    response = await slack_app.post(slash_command(command, text, channel=CHANNEL), form=True)
    assert response.status_code == 200
    await slack.wait_for(done)
    await slack_app.adapter.drain()
    (post,) = slack.visible(CHANNEL)
    asked = len(slack_app.openai.chat_requests())

    for user, said in [("U0BOB", "haha nice one alice"), ("U0ALICE", "thanks bob")]:
        await slack_app.post_event(
            message_event(channel=CHANNEL, thread_ts=post.ts, user=user, text=said)
        )
        await slack_app.adapter.drain()

    assert slack.visible_texts(CHANNEL, post.ts) == []
    assert len(slack_app.openai.chat_requests()) == asked


async def test_a_mention_under_a_slash_commands_picture_makes_the_thread_the_bots(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    await slack_app.post(slash_command("/image", "a blue whale", channel=CHANNEL), form=True)
    await slack.wait_for("/api/files.completeUploadExternal")
    await slack_app.adapter.drain()
    (post,) = slack.visible(CHANNEL)

    await slack_app.post_event(
        app_mention_event(
            channel=CHANNEL, thread_ts=post.ts, user="U0BOB", text="<@U0BOT> is that a whale?"
        )
    )
    await slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()
    slack_app.adapter._threads._known.clear()  # a freshly started replica knows nothing
    await slack_app.post_event(
        message_event(channel=CHANNEL, thread_ts=post.ts, user="U0BOB", text="and its size?")
    )
    await slack.wait_for("/api/chat.stopStream", 2)
    await slack_app.adapter.drain()

    answers = slack.visible_texts(CHANNEL, post.ts)
    assert len(answers) == 2 and answers[-1] == "echo: and its size?"
