"""Slack refusing a call in the middle of a streamed answer, for good (not a 429 or 5xx).

Someone deleting the answer's message mid-way: nothing more of it is shown (it is not posted
again), what the model wrote is kept as a partial answer and billed, and the person is told
how to get it. An answer whose mrkdwn text is longer than chat.update takes (about 4,000
bytes: escaped & < >, or most languages but English) is shown whole all the same."""

from __future__ import annotations

import pytest

from bots.slack import SinkOptions
from core.app import Core
from core.testing.fake_slack import FakeSlack, app_mention_event, message_event, new_ts
from tests.bots.slack.conftest import SlackApp, chat_usage, stored_rows

CHANNEL = "C0GENERAL"
DM = "D0ALICE"
ANSWER = " ".join(f"word{i:02d}" for i in range(40))
DELETED = (
    ":warning: The answer was cut short: Someone deleted the answer's message in Slack. "
    "Send `retry` to get it again."
)


def _delete_the_bots_messages(slack: FakeSlack) -> None:
    """What a workspace admin does to the answer being written (Slack then knows it no more)."""
    for message in slack.messages:
        if message.user == slack.bot_user_id:
            message.deleted = True


async def _kept_partial_and_billed(core: Core, question: str) -> None:
    asked, (role, kept, status) = await stored_rows(core)
    assert asked == ("user", question, "ok")
    assert (role, status) == ("assistant", "partial")
    assert kept and ANSWER.startswith(kept) and kept != ANSWER, "what the model wrote so far"
    assert len(await chat_usage(core)) == 1, "the model's work is billed"


# Every piece of the answer goes out as soon as it comes, in a native stream.
@pytest.mark.parametrize("sink_options", [SinkOptions(stream_buffer=1, stream_interval=0.01)])
async def test_a_streamed_answer_whose_message_is_deleted_stops_and_is_kept_partial(
    slack_app: SlackApp, core: Core
) -> None:
    slack = slack_app.slack
    slack_app.openai.queue_reply(ANSWER)
    slack_app.openai.chunk_delay = 0.03
    slack.after_next("chat.appendStream", lambda: _delete_the_bots_messages(slack))
    ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> count for me")
    )
    await slack_app.adapter.drain(within=30)

    # The answer is not posted again, nor its end: only why it stopped.
    assert slack.visible_texts(CHANNEL, ts) == [DELETED]
    assert len(slack.api_calls("chat.postMessage")) == 1  # (the line saying so)
    await _kept_partial_and_billed(core, "count for me")


async def test_an_edited_answer_whose_message_is_deleted_stops_and_is_kept_partial(
    slack_app: SlackApp, core: Core
) -> None:
    slack = slack_app.slack
    slack_app.openai.queue_reply(ANSWER)
    slack_app.openai.chunk_delay = 0.03
    # A DM's answer is posted, then edited as it grows; the first edit is its last.
    slack.after_next("chat.update", lambda: _delete_the_bots_messages(slack))
    await slack_app.post_event(message_event(channel=DM, text="count for me"))
    await slack_app.adapter.drain(within=30)

    assert slack.visible_texts(DM) == [DELETED]
    await _kept_partial_and_billed(core, "count for me")


async def test_an_edited_answer_longer_than_an_updates_text_is_shown_whole(
    slack_app: SlackApp, core: Core
) -> None:
    slack = slack_app.slack
    # One message's worth (under 3,900 characters), over 6,000 bytes of mrkdwn.
    answer = " ".join(["привет"] * 500)
    slack_app.openai.queue_reply(answer)
    slack_app.openai.chunk_delay = 0.002
    await slack_app.post_event(message_event(channel=DM, text="say hi"))
    await slack_app.adapter.drain(within=30)

    assert slack.visible_texts(DM) == [answer]
    assert len(slack.api_calls("chat.update")) > 1, "it was edited as it grew"
    assert await stored_rows(core) == [("user", "say hi", "ok"), ("assistant", answer, "ok")]
    assert len(await chat_usage(core)) == 1


# The first piece starts the stream; the rest waits for the stream's last call.
@pytest.mark.parametrize("sink_options", [SinkOptions(stream_buffer=100_000, stream_interval=60)])
async def test_a_stream_slack_ended_is_finished_whole_by_an_update(
    slack_app: SlackApp, core: Core
) -> None:
    slack = slack_app.slack
    answer = " ".join(f"w{i:04d}abcd" for i in range(500))  # 5,499 characters
    slack_app.openai.queue_reply(answer)
    slack_app.openai.chunk_delay = 0.001

    def end_streams() -> None:  # as Slack does by itself after about 5 minutes
        for message in slack.messages:
            message.streaming = False

    slack.after_next("chat.startStream", end_streams)
    ts = new_ts()
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> go"))
    await slack_app.adapter.drain(within=30)

    assert slack.visible_texts(CHANNEL, ts) == [answer]
    assert len(slack.api_calls("chat.update")) == 1
    assert await stored_rows(core) == [("user", "go", "ok"), ("assistant", answer, "ok")]
    assert len(await chat_usage(core)) == 1


async def test_a_preview_cut_to_fit_an_update_is_not_taken_for_the_whole_answer(
    slack_app: SlackApp, core: Core
) -> None:
    slack = slack_app.slack
    # Three long words, 7,200 bytes: the last preview holds them all, cut to fit.
    answer = " ".join(["п" * 1_200] * 3)
    slack_app.openai.queue_reply(answer)
    slack_app.openai.chunk_delay = 0.3
    # Posted with the first word, previewed with the second and third; the end never goes.
    slack.fail_next("chat.update", "internal_error", status=500, times=4, after=2)
    await slack_app.post_event(message_event(channel=DM, text="spell it"))
    await slack_app.adapter.drain(within=30)

    preview, told = slack.visible_texts(DM)
    assert preview.endswith(" …") and preview.startswith("п" * 1_200)
    assert told == (
        ":warning: Slack did not take the whole answer. Send `retry` in a minute to get it again."
    )
    assert await stored_rows(core) == [
        ("user", "spell it", "ok"),
        ("assistant", answer, "partial"),
    ]
    assert len(await chat_usage(core)) == 1
