"""User stories: a team talks to relaybot in channels, threads and DMs."""

from __future__ import annotations

import time

from core.testing.fake_slack import (
    app_mention_event,
    bot_message_event,
    message_changed_event,
    message_event,
    new_ts,
)
from tests.bots.slack.conftest import SlackApp

CHANNEL = "C0GENERAL"
DM = "D0ALICE"


async def test_a_mention_in_a_channel_is_answered_in_a_thread_under_it(
    slack_app: SlackApp,
) -> None:
    ts = new_ts()
    started = time.monotonic()
    response = await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> what is relaybot?")
    )
    assert response.status_code == 200
    assert time.monotonic() - started < 3  # acknowledged within Slack's 3 seconds

    await slack_app.slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()
    assert slack_app.slack.visible_texts(CHANNEL, ts) == ["echo: what is relaybot?"]
    assert slack_app.slack.visible_texts(CHANNEL) == []  # nothing at the channel's top level
    start = slack_app.slack.api_calls("chat.startStream")[0].json
    assert start["thread_ts"] == ts
    assert start["recipient_user_id"] == "U0ALICE"
    assert start["recipient_team_id"] == slack_app.slack.team_id


async def test_replies_in_the_bots_thread_need_no_mention_and_keep_the_history(
    slack_app: SlackApp,
) -> None:
    ts = new_ts()
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> hi"))
    await slack_app.slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()

    await slack_app.post_event(message_event(channel=CHANNEL, thread_ts=ts, text="and then?"))
    await slack_app.slack.wait_for("/api/chat.stopStream", 2)
    await slack_app.adapter.drain()

    assert slack_app.slack.visible_texts(CHANNEL, ts) == ["echo: hi", "echo: and then?"]
    last = slack_app.openai.chat_requests()[-1]["messages"]
    contents = [m["content"] for m in last if m["role"] != "system"]
    assert contents == ["hi", "echo: hi", "and then?"]


async def test_a_thread_the_bot_is_not_part_of_is_left_alone(slack_app: SlackApp) -> None:
    parent = new_ts()
    await slack_app.post_event(message_event(channel=CHANNEL, ts=parent, text="lunch?"))
    await slack_app.post_event(message_event(channel=CHANNEL, thread_ts=parent, text="sure"))
    await slack_app.adapter.drain()

    assert slack_app.slack.api_calls("conversations.replies")  # it checked, once
    assert slack_app.slack.bot_messages() == []
    assert slack_app.openai.chat_requests() == []


async def test_a_direct_message_is_answered_in_the_dm(slack_app: SlackApp) -> None:
    await slack_app.post_event(message_event(channel=DM, text="hello bot"))
    await slack_app.slack.wait_until(lambda: bool(slack_app.slack.visible(DM)))
    await slack_app.adapter.drain()

    assert slack_app.slack.visible_texts(DM) == ["echo: hello bot"]


async def test_a_dm_thread_is_its_own_conversation_with_a_thinking_status(
    slack_app: SlackApp,
) -> None:
    await slack_app.post_event(message_event(channel=DM, text="top level"))
    await slack_app.slack.wait_until(lambda: bool(slack_app.slack.visible(DM)))
    await slack_app.adapter.drain()

    thread = new_ts()
    await slack_app.post_event(message_event(channel=DM, thread_ts=thread, text="in a thread"))
    await slack_app.slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()

    assert slack_app.slack.visible_texts(DM, thread) == ["echo: in a thread"]
    last = slack_app.openai.chat_requests()[-1]["messages"]
    assert [m["content"] for m in last if m["role"] != "system"] == ["in a thread"]
    assert slack_app.slack.statuses[0]["status"] == "is thinking..."
    assert slack_app.slack.statuses[0]["thread_ts"] == thread


async def test_own_messages_other_bots_and_edits_are_ignored(slack_app: SlackApp) -> None:
    ts = new_ts()
    events = [
        bot_message_event(channel=CHANNEL, text="<@U0BOT> beep"),
        bot_message_event(channel=DM, text="my own answer", bot_id="B0BOT", user="U0BOT"),
        message_event(channel=CHANNEL, text="chatter without a mention"),
        message_changed_event(channel=DM, ts=ts, new_text="edited"),
    ]
    for event in events:
        response = await slack_app.post_event(event)
        assert response.status_code == 200
    await slack_app.adapter.drain()

    assert slack_app.slack.bot_messages() == []
    assert slack_app.openai.chat_requests() == []


async def test_one_mention_delivered_as_app_mention_and_message_is_answered_once(
    slack_app: SlackApp,
) -> None:
    ts = new_ts()
    text = "<@U0BOT> just once please"
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text=text))
    await slack_app.post_event(message_event(channel=CHANNEL, ts=ts, text=text))
    await slack_app.slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()

    assert slack_app.slack.visible_texts(CHANNEL, ts) == ["echo: just once please"]
    assert len(slack_app.openai.chat_requests()) == 1


async def test_a_slack_retry_never_produces_a_second_answer(slack_app: SlackApp) -> None:
    ts = new_ts()
    event = app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> are you there?")
    first = await slack_app.post_event(event, event_id="Ev0RETRY")
    retry = await slack_app.post_event(event, event_id="Ev0RETRY", retry_num=1)
    assert first.status_code == retry.status_code == 200
    await slack_app.slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()
    late_retry = await slack_app.post_event(event, event_id="Ev0RETRY", retry_num=2)
    assert late_retry.status_code == 200
    await slack_app.adapter.drain()

    assert slack_app.slack.visible_texts(CHANNEL, ts) == ["echo: are you there?"]
    assert len(slack_app.openai.chat_requests()) == 1


async def test_bad_or_stale_signatures_are_refused_and_do_no_work(slack_app: SlackApp) -> None:
    event = app_mention_event(channel=CHANNEL, text="<@U0BOT> let me in")
    started = len(slack_app.slack.requests)  # the start's auth.test
    forged = await slack_app.post_event(event, secret="not-the-secret")
    stale = await slack_app.post_event(event, timestamp=int(time.time()) - 301)
    assert forged.status_code == 401
    assert stale.status_code == 401
    await slack_app.adapter.drain()

    assert slack_app.slack.requests[started:] == []
    assert slack_app.openai.requests == []


async def test_text_commands_reach_the_core(slack_app: SlackApp) -> None:
    ts = new_ts()
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> hi"))
    await slack_app.slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()
    await slack_app.post_event(message_event(channel=CHANNEL, thread_ts=ts, text="<@U0BOT> reset"))
    await slack_app.slack.wait_until(lambda: len(slack_app.slack.visible(CHANNEL, ts)) == 2)
    await slack_app.adapter.drain()

    assert "History cleared" in slack_app.slack.visible_texts(CHANNEL, ts)[1]


async def test_help_shows_the_commands_as_words_people_can_type_in_slack(
    slack_app: SlackApp,
) -> None:
    # Slack keeps a message that starts with "/" for its own slash commands: the help
    # must name the forms that reach the bot as a message.
    slack = slack_app.slack
    await slack_app.post_event(message_event(channel=DM, text="help"))
    await slack.wait_until(lambda: len(slack.visible(DM)) == 1)
    await slack_app.adapter.drain()

    (help_text,) = slack.visible_texts(DM)
    assert "`reset` - forget this chat's history" in help_text
    assert "`image:` PROMPT" in help_text and "`edit:` INSTRUCTION" in help_text
    assert "/reset" not in help_text and "/image" not in help_text
    # Tagged as a notice: a successor resuming an answer in this conversation leaves it be.
    (notice,) = slack.visible(DM)
    assert notice.metadata is not None and notice.metadata["event_type"] == "relaybot_notice"

    # And each of them does what the help says, typed as shown.
    await slack_app.post_event(message_event(channel=DM, text="budget"))
    await slack.wait_until(lambda: len(slack.visible(DM)) == 2)
    await slack_app.adapter.drain()
    assert "No budget limits apply to you." in slack.visible_texts(DM)[1]
    await slack_app.post_event(message_event(channel=DM, text="translate"))
    await slack.wait_until(lambda: len(slack.visible(DM)) == 3)
    await slack_app.adapter.drain()
    assert "`translate` with a voice note" in slack.visible_texts(DM)[2]
    assert slack_app.openai.chat_requests() == []


async def test_a_new_assistant_thread_gets_suggested_prompts(slack_app: SlackApp) -> None:
    from core.testing.fake_slack import assistant_thread_started_event

    thread = new_ts()
    response = await slack_app.post_event(
        assistant_thread_started_event(channel=DM, thread_ts=thread)
    )
    assert response.status_code == 200
    await slack_app.slack.wait_for("/api/assistant.threads.setSuggestedPrompts")
    prompts = slack_app.slack.suggested_prompts[0]
    assert prompts["thread_ts"] == thread
    assert prompts["prompts"]
