"""Slack sends an app_mention again (same ts, with an `edited` field) whenever a message that
mentions the bot is edited: it is never answered again, even once the original's event row is
gone (`forget` deletes it, as retention does)."""

from __future__ import annotations

import asyncio

from core.testing.fake_slack import app_mention_event, message_event, new_ts
from tests.bots.slack.conftest import SlackApp

CHANNEL = "C0GENERAL"


async def test_an_edited_mention_is_not_answered_again_after_forget(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    ts = new_ts()
    first = app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> what is relaybot?")
    await slack_app.post_event(first)
    await slack.wait_until(lambda: len(slack.visible(CHANNEL, ts)) == 1)
    await slack_app.adapter.drain()
    await slack_app.post_event(message_event(channel=CHANNEL, thread_ts=ts, text="forget"))
    await slack.wait_until(lambda: len(slack.visible(CHANNEL, ts)) == 2)
    await slack_app.adapter.drain()
    asked = len(slack_app.openai.chat_requests())

    # The person fixes a typo in their first message: Slack sends the app_mention again.
    edited = dict(
        first, text="<@U0BOT> what is relaybot??", edited={"user": "U0ALICE", "ts": new_ts()}
    )
    response = await slack_app.post_event(edited)
    assert response.status_code == 200
    await asyncio.sleep(1.0)
    await slack_app.adapter.drain()

    assert len(slack_app.openai.chat_requests()) == asked
    assert len(slack.visible(CHANNEL, ts)) == 2, slack.visible_texts(CHANNEL, ts)
