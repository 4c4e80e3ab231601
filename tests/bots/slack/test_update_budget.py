"""A busy workspace: chat.update is Slack's Tier 3, ~50 calls a minute for the whole
workspace. Answers streamed by edits must not be held up by each other's previews."""

from __future__ import annotations

import asyncio

import pytest

from bots.slack import SinkOptions
from core.testing.fake_slack import message_event
from tests.bots.slack.conftest import SlackApp

# A small budget, so the test spends it in a second: 6 edits a minute, previews may take 4.
BUDGET = 6


@pytest.fixture
def sink_options() -> SinkOptions:
    return SinkOptions(
        update_interval=0.05,
        stream_interval=0.05,
        updates_per_minute=BUDGET,
        preview_reserve=1 / 3,
    )


async def test_answers_streamed_by_edits_share_the_workspace_budget_and_still_finish(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    slack.limit_rate("chat.update", BUDGET, 60.0)
    slack_app.openai.chunk_delay = 0.01
    asked = {dm: f"{dm} " + " ".join(f"word{i}" for i in range(60)) for dm in ("D0ALICE", "D0BOB")}

    # Refilling one edit takes 10 s: if previews spent the finished answers' share, the
    # answers would wait that long (Slack's 429s would make them wait for all of it).
    async with asyncio.timeout(8):
        for dm, text in asked.items():
            await slack_app.post_event(message_event(channel=dm, text=text))
        await slack_app.adapter.drain()

    for dm, text in asked.items():
        (answer,) = slack.visible(dm)
        assert answer.visible_text == f"echo: {text}"
    updates = slack.api_calls("chat.update")
    refused = [name for _, name, ok in slack.timeline if name == "chat.update" and not ok]
    assert refused == [], "Slack never had to refuse an edit"
    # Both answers were previewed while there was room, and finished within the budget.
    assert 2 < len(updates) <= BUDGET


async def test_a_finished_answer_is_never_held_back_by_the_count(slack_app: SlackApp) -> None:
    # Slack's Tier 3 is "50+" a minute: relaybot's count is a floor. Here Slack allows 20,
    # relaybot counts 6, and three answers finish at once: the count must not delay them.
    slack = slack_app.slack
    slack.limit_rate("chat.update", 20, 60.0)
    slack_app.openai.chunk_delay = 0.01
    asked = {
        dm: f"{dm} " + " ".join(f"word{i}" for i in range(60))
        for dm in ("D0ALICE", "D0BOB", "D0CAROL")
    }
    async with asyncio.timeout(8):
        for dm, text in asked.items():
            await slack_app.post_event(message_event(channel=dm, text=text))
        await slack_app.adapter.drain()

    for dm, text in asked.items():
        (answer,) = slack.visible(dm)
        assert answer.visible_text == f"echo: {text}"
    refused = [name for _, name, ok in slack.timeline if name == "chat.update" and not ok]
    assert refused == []
