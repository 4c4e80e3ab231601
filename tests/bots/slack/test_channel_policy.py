"""Who may do what in a Slack channel: the allow-list, the channel's budget, usage."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.config import ModerationPolicy, Settings
from core.testing.fake_slack import app_mention_event, message_event, new_ts
from tests.bots.slack.conftest import SlackApp

CHANNEL = "C0GENERAL"
ADMIN = "U0ADMIN"
PRICED: dict[str, Any] = {
    "prices": json.dumps({"gpt-4o-mini": {"input": 1000, "output": 1000}}),
    "system_prompt": "Be brief.",
    "reply_tokens": 5,
    "moderation": ModerationPolicy.OFF,
}


@pytest.fixture
def extra() -> dict[str, Any]:
    """Settings a test adds (parametrized by the tests)."""
    return {}


@pytest.fixture
def settings(settings: Settings, extra: dict[str, Any]) -> Settings:
    return settings.model_copy(update=extra)


async def mention(
    app: SlackApp, text: str, *, user: str = "U0ALICE", thread_ts: str | None = None
) -> str:
    """@bot TEXT in the channel (or one of its threads); waits for the answer. The thread."""
    ts = new_ts()
    thread = thread_ts or ts
    slack = app.slack
    before = len(slack.visible(CHANNEL, thread))
    event = app_mention_event(
        channel=CHANNEL, user=user, ts=ts, thread_ts=thread_ts, text=f"<@U0BOT> {text}"
    )
    await app.post_event(event)
    await slack.wait_until(lambda: len(slack.visible(CHANNEL, thread)) > before)
    await app.adapter.drain()
    return thread


@pytest.mark.parametrize(
    "extra",
    [{"allowed_chats": "slack:C0GENERAL"}, {"allowed_chats": "slack:T0TEAM:C0GENERAL"}],
    ids=["channel-id", "team-and-channel"],
)
async def test_an_allowed_channel_is_let_in_by_its_own_id(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    thread = await mention(slack_app, "hello from the allowed channel")
    # The list is in force: a direct message of someone not on it is refused.
    await slack_app.post_event(message_event(channel="D0BOB", user="U0BOB", text="hi"))
    await slack.wait_until(lambda: len(slack.visible("D0BOB")) == 1)
    await slack_app.adapter.drain()

    assert slack.visible_texts(CHANNEL, thread) == ["echo: hello from the allowed channel"]
    assert slack.visible_texts("D0BOB") == [
        ":warning: Sorry, this bot is private. Ask its operator to let you in."
    ]
    assert len(slack_app.openai.chat_requests()) == 1


@pytest.mark.parametrize("extra", [{**PRICED, "budget_chat_daily": 0.015}], ids=["budget"])
async def test_a_channels_budget_is_spent_in_any_of_its_threads(slack_app: SlackApp) -> None:
    first = await mention(slack_app, "hi")
    second = await mention(slack_app, "hello", user="U0BOB")  # a thread of its own

    assert slack_app.slack.visible_texts(CHANNEL, first) == ["echo: hi"]
    (refused,) = slack_app.slack.visible_texts(CHANNEL, second)
    assert "over this chat's daily budget of $0.01" in refused
    assert len(slack_app.openai.chat_requests()) == 1


@pytest.mark.parametrize("extra", [{"admins": f"slack:{ADMIN}"}], ids=["admin"])
@pytest.mark.parametrize(
    "how", ["here", "C0GENERAL", "slack:T0TEAM:C0GENERAL"], ids=["here", "id", "key"]
)
async def test_budget_chat_in_a_thread_closes_the_whole_channel(
    slack_app: SlackApp, how: str
) -> None:
    thread = await mention(slack_app, f"budget chat {how} day 0", user=ADMIN)
    other = await mention(slack_app, "a new question", user="U0BOB")

    (said,) = slack_app.slack.visible_texts(CHANNEL, thread)
    if how == "C0GENERAL":
        assert said == "The daily budget of chat slack:C0GENERAL is now $0 (no access)."
    else:
        assert said == "The daily budget of chat slack:T0TEAM:C0GENERAL is now $0 (no access)."
    (refused,) = slack_app.slack.visible_texts(CHANNEL, other)
    assert "This chat has no budget for the bot. Ask one of its admins." in refused
    assert slack_app.openai.chat_requests() == []


@pytest.mark.parametrize("extra", [{"admins": f"slack:{ADMIN}"}], ids=["admin"])
async def test_an_admins_usage_in_a_channel_shows_only_their_own(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    await slack_app.post_event(message_event(channel="D0BOB", user="U0BOB", text="private stuff"))
    await slack.wait_until(lambda: len(slack.visible("D0BOB")) == 1)
    await slack_app.adapter.drain()
    thread = await mention(slack_app, "usage", user=ADMIN)
    await mention(slack_app, "usage slack:U0BOB", user=ADMIN, thread_ts=thread)

    everyone, someone = slack.visible_texts(CHANNEL, thread)
    for text in (everyone, someone):
        assert "Your usage:" in text
        assert "U0BOB" not in text and "D0BOB" not in text and "All users" not in text
    assert "Ask me in a private chat for everyone's usage." in everyone
    assert "Ask me in a private chat for anyone else's usage." in someone
