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


async def answer_at_once(slack_app: SlackApp, dms: tuple[str, ...]) -> list[str]:
    """Long questions in `dms` at once, streamed answers; returns the names of the
    chat.update calls Slack refused. Fails unless every answer is shown whole within 8 s:
    refilling one edit of the budget takes 10 s, so no answer may wait for the budget."""
    slack = slack_app.slack
    slack_app.openai.chunk_delay = 0.01
    asked = {dm: f"{dm} " + " ".join(f"word{i}" for i in range(60)) for dm in dms}
    async with asyncio.timeout(8):
        for dm, text in asked.items():
            await slack_app.post_event(message_event(channel=dm, text=text))
        await slack_app.adapter.drain()
    for dm, text in asked.items():
        (answer,) = slack.visible(dm)
        assert answer.visible_text == f"echo: {text}"
    return [name for _, name, ok in slack.timeline if name == "chat.update" and not ok]


async def test_answers_streamed_by_edits_share_the_workspace_budget_and_still_finish(
    slack_app: SlackApp,
) -> None:
    # If previews spent the finished answers' share, Slack's 429s would hold them all.
    slack_app.slack.limit_rate("chat.update", BUDGET, 60.0)

    refused = await answer_at_once(slack_app, ("D0ALICE", "D0BOB"))

    assert refused == [], "Slack never had to refuse an edit"
    # Both answers were previewed while there was room, and finished within the budget.
    assert 2 < len(slack_app.slack.api_calls("chat.update")) <= BUDGET


async def test_a_finished_answer_is_never_held_back_by_the_count(slack_app: SlackApp) -> None:
    # Slack's Tier 3 is "50+" a minute: relaybot's count is a floor. Here Slack allows 20,
    # relaybot counts 6, and three answers finish at once: the count must not delay them.
    slack_app.slack.limit_rate("chat.update", 20, 60.0)

    refused = await answer_at_once(slack_app, ("D0ALICE", "D0BOB", "D0CAROL"))

    assert refused == []
