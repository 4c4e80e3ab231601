"""Slack failing the last call of a streamed answer (chat.stopStream). The model's work is
billed either way; an answer the person saw whole is kept as answered, with no warning
after it, and one whose end never reached them is kept as a partial answer, and they are
told how to get it."""

from __future__ import annotations

import pytest

from bots.slack import SinkOptions
from core.app import Core
from core.testing.fake_slack import app_mention_event, new_ts
from tests.bots.slack.conftest import SlackApp, chat_usage, stored_rows

CHANNEL = "C0GENERAL"
ANSWER = "Unquestionably, yes."


async def _ask(slack_app: SlackApp, text: str) -> str:
    ts = new_ts()
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text=f"<@U0BOT> {text}"))
    await slack_app.adapter.drain(within=30)
    return ts


# Every piece of the answer goes out as soon as it comes.
@pytest.mark.parametrize("sink_options", [SinkOptions(stream_buffer=1, stream_interval=0.01)])
async def test_an_answer_shown_whole_is_kept_as_answered_when_slack_fails_to_end_its_stream(
    slack_app: SlackApp, core: Core
) -> None:
    slack = slack_app.slack
    slack_app.openai.queue_reply(ANSWER)
    slack_app.openai.chunk_delay = 0.1  # each piece is in Slack before the next comes
    slack.fail_next("chat.stopStream", "internal_error", status=500, times=4)
    ts = await _ask(slack_app, "is the sky blue?")

    assert slack.visible_texts(CHANNEL, ts) == [ANSWER]
    assert await stored_rows(core) == [
        ("user", "is the sky blue?", "ok"),
        ("assistant", ANSWER, "ok"),
    ]
    assert len(await chat_usage(core)) == 1


# The first piece starts the stream; the rest waits for the stream's last call.
@pytest.mark.parametrize("sink_options", [SinkOptions(stream_buffer=10, stream_interval=60)])
async def test_an_answer_whose_end_slack_would_not_take_is_kept_billed_and_the_person_told(
    slack_app: SlackApp, core: Core
) -> None:
    slack = slack_app.slack
    slack_app.openai.queue_reply(ANSWER)
    slack_app.openai.chunk_delay = 0.05
    slack.fail_next("chat.stopStream", "internal_error", status=500, times=4)
    ts = await _ask(slack_app, "is the sky blue?")

    assert slack.visible_texts(CHANNEL, ts) == [
        "Unquestionably, ",
        ":warning: Slack did not take the whole answer. Send `retry` in a minute to get it again.",
    ]
    assert await stored_rows(core) == [
        ("user", "is the sky blue?", "ok"),
        ("assistant", ANSWER, "partial"),
    ]
    assert len(await chat_usage(core)) == 1
