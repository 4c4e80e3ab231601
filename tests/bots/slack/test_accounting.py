"""Usage and privacy as a Slack user meets them, typed as words in a DM."""

from __future__ import annotations

from core.testing.fake_slack import message_event
from tests.bots.slack.conftest import SlackApp

DM = "D0ALICE"


async def test_usage_and_forget_typed_in_a_dm(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    store = slack_app.adapter.core.store
    stored_after: list[int] = []
    for text, shown in (("how far is the moon?", 1), ("usage", 2), ("forget", 3)):
        await slack_app.post_event(message_event(channel=DM, text=text))
        await slack.wait_until(lambda n=shown: len(slack.visible(DM)) == n)
        await slack_app.adapter.drain()
        stored_after.append(await store.count_messages(f"slack:T0TEAM:{DM}"))

    answer, usage, forgot = slack.visible_texts(DM)
    assert answer == "echo: how far is the moon?"
    assert "Your usage:" in usage and "today" in usage
    assert "deleted everything" in forgot
    assert stored_after == [2, 2, 0]
