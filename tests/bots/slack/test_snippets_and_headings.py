"""User stories: a snippet sent without a file extension, an answer's heading in bold."""

from __future__ import annotations

from core.testing.fake_slack import message_event
from tests.bots.slack.conftest import SlackApp

DM = "D0ALICE"


def last_user_turn(slack_app: SlackApp) -> str:
    messages = slack_app.openai.chat_requests()[-1]["messages"]
    return str([m for m in messages if m["role"] == "user"][-1]["content"])


async def test_a_snippet_without_an_extension_is_read(slack_app: SlackApp) -> None:
    snippet = slack_app.slack.add_file(
        b"def f():\n    return 1\n", name="Untitled", mimetype="text/plain", filetype="python"
    )
    snippet["mode"] = "snippet"
    await slack_app.post_event(message_event(channel=DM, text="what does it do?", files=[snippet]))
    await slack_app.slack.wait_for("/api/chat.postMessage")
    await slack_app.adapter.drain()

    assert "def f():\n    return 1" in last_user_turn(slack_app)


async def test_a_bold_heading_reads_as_bold_in_notifications(slack_app: SlackApp) -> None:
    slack_app.openai.queue_reply("## **Summary**\n\nAll good.")
    await slack_app.post_event(message_event(channel=DM, text="sum it up"))
    await slack_app.slack.wait_for("/api/chat.postMessage")
    await slack_app.adapter.drain()

    [answer] = slack_app.slack.visible(DM)
    assert answer.text == "*Summary*\n\nAll good."  # the mrkdwn fallback
