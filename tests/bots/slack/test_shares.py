"""User stories: forwarded messages, integration alerts and blocks-only messages reach the
model; a slash command's text arrives as the person typed it."""

from __future__ import annotations

from core.testing.fake_slack import (
    app_mention_event,
    message_event,
    new_ts,
    shared_message,
    slash_command,
)
from tests.bots.slack.conftest import SlackApp

DM = "D0ALICE"
CHANNEL = "C0GENERAL"
OOM = "Deploy of payments-api failed: OOMKilled on pod 3 &amp; pod 4"


def last_user_turn(slack_app: SlackApp) -> str:
    messages = slack_app.openai.chat_requests()[-1]["messages"]
    return str([m for m in messages if m["role"] == "user"][-1]["content"])


async def answered(slack_app: SlackApp) -> None:
    await slack_app.slack.wait_for("/api/chat.postMessage")
    await slack_app.adapter.drain()


async def test_a_message_forwarded_with_a_comment_reaches_the_model(slack_app: SlackApp) -> None:
    event = message_event(channel=DM, text="what does this mean?")
    event["attachments"] = [shared_message(OOM)]
    await slack_app.post_event(event)
    await answered(slack_app)

    assert last_user_turn(slack_app) == (
        "what does this mean?\n\n"
        "Forwarded from Bob in #ops:\n"
        "> Deploy of payments-api failed: OOMKilled on pod 3 & pod 4"
    )


async def test_a_message_forwarded_without_a_comment_is_answered_about_it(
    slack_app: SlackApp,
) -> None:
    event = message_event(channel=DM, text="", attachments=[shared_message(OOM)])
    await slack_app.post_event(event)
    await answered(slack_app)

    assert last_user_turn(slack_app) == (
        "Forwarded from Bob in #ops:\n> Deploy of payments-api failed: OOMKilled on pod 3 & pod 4"
    )
    (reply,) = slack_app.slack.visible_texts(DM)
    assert "empty" not in reply.lower()
    assert reply.startswith("echo: Forwarded from Bob")


async def test_a_forward_mentioning_the_bot_in_a_channel_reaches_the_model(
    slack_app: SlackApp,
) -> None:
    ts = new_ts()
    event = app_mention_event(
        channel=CHANNEL,
        ts=ts,
        text="<@U0BOT> is this bad?",
        attachments=[shared_message("disk 91% full on db-2", author_name="Carol")],
    )
    await slack_app.post_event(event)
    await slack_app.slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()

    assert last_user_turn(slack_app) == (
        "is this bad?\n\nForwarded from Carol in #ops:\n> disk 91% full on db-2"
    )


async def test_asked_under_an_integration_alert_the_bot_reads_the_alert(
    slack_app: SlackApp,
) -> None:
    # A monitoring tool's alert: empty text, its content in legacy attachments.
    channel = "C0ALERTS"
    parent = new_ts()
    slack_app.slack.add_integration_message(
        channel,
        parent,
        attachments=[
            {
                "fallback": "Triggered: CPU > 95% on db-1",
                "title": "Triggered: CPU &gt; 95% on db-1",
                "text": "avg(last_5m):cpu{host:db-1} &gt; 95",
                "fields": [{"title": "Priority", "value": "P1", "short": True}],
                "color": "danger",
            }
        ],
    )
    await slack_app.post_event(
        app_mention_event(
            channel=channel,
            ts=new_ts(),
            thread_ts=parent,
            text="<@U0BOT> what does this alert mean?",
        )
    )
    await slack_app.slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()

    assert last_user_turn(slack_app) == (
        "> > Triggered: CPU > 95% on db-1\n"
        "> > avg(last_5m):cpu{host:db-1} > 95\n"
        "> > Priority: P1\n\n"
        "what does this alert mean?"
    )


async def test_asked_under_a_forward_the_bot_reads_the_forwarded_message(
    slack_app: SlackApp,
) -> None:
    parent = new_ts()
    forward = slack_app.slack.add_person_message(CHANNEL, parent, "FYI", user="U0BOB")
    forward.attachments = [shared_message("The release is moved to Friday")]
    await slack_app.post_event(
        app_mention_event(
            channel=CHANNEL, ts=new_ts(), thread_ts=parent, text="<@U0BOT> which day again?"
        )
    )
    await slack_app.slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()

    assert last_user_turn(slack_app) == (
        "> FYI\n>\n> Forwarded from Bob in #ops:\n> > The release is moved to Friday\n\n"
        "which day again?"
    )


async def test_asked_under_a_blocks_only_message_the_bot_reads_its_blocks(
    slack_app: SlackApp,
) -> None:
    channel = "C0DEPLOYS"
    parent = new_ts()
    slack_app.slack.add_integration_message(
        channel,
        parent,
        blocks=[
            {"type": "header", "text": {"type": "plain_text", "text": "Deploy finished"}},
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "*web* 1.4.2 &amp; *api* 2.0.1 are live"},
            },
        ],
    )
    await slack_app.post_event(
        app_mention_event(channel=channel, ts=new_ts(), thread_ts=parent, text="<@U0BOT> which?")
    )
    await slack_app.slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()

    assert last_user_turn(slack_app) == (
        "> Deploy finished\n> *web* 1.4.2 & *api* 2.0.1 are live\n\nwhich?"
    )


async def test_a_message_with_only_rich_text_blocks_is_read(slack_app: SlackApp) -> None:
    blocks = [
        {
            "type": "rich_text",
            "elements": [
                {
                    "type": "rich_text_section",
                    "elements": [
                        {"type": "text", "text": "is "},
                        {"type": "text", "text": "a < b", "style": {"code": True}},
                        {"type": "text", "text": " true? see "},
                        {"type": "link", "url": "https://example.com/spec"},
                    ],
                }
            ],
        }
    ]
    await slack_app.post_event(message_event(channel=DM, text="", blocks=blocks))
    await answered(slack_app)

    assert last_user_turn(slack_app) == "is a < b true? see https://example.com/spec"


async def test_an_image_slash_command_prompt_reaches_the_model_as_typed(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    # What Slack sends for "/image salt & pepper shakers <3 for @bob".
    response = await slack_app.post(
        slash_command(
            "/image",
            "salt &amp; pepper shakers &lt;3 for <@U0BOB|bob>",
            channel=DM,
            response_url=slack.response_url,
        ),
        form=True,
    )
    assert response.status_code == 200
    await slack_app.openai.wait_for("/v1/images/generations")
    await slack_app.adapter.drain()

    (request,) = slack_app.openai.calls("/v1/images/generations")
    assert request.json["prompt"] == "salt & pepper shakers <3 for @bob"


async def test_people_a_forward_or_blocks_mention_reach_the_model_by_name(
    slack_app: SlackApp,
) -> None:
    """The model reads "@carol", not "<@U0CAROL>", in what a message carries too."""
    slack_app.slack.add_user("U0CAROL", "carol", "Carol Diaz")
    slack_app.slack.add_user("U0DAN", "dan", "Dan Wu")
    event = message_event(
        channel=DM,
        text="",
        attachments=[shared_message("<@U0CAROL> owns the rollback")],
    )
    await slack_app.post_event(event)
    await answered(slack_app)
    assert last_user_turn(slack_app) == "Forwarded from Bob in #ops:\n> @carol owns the rollback"

    blocks = [
        {
            "type": "rich_text",
            "elements": [
                {
                    "type": "rich_text_section",
                    "elements": [
                        {"type": "user", "user_id": "U0DAN"},
                        {"type": "text", "text": " is on call"},
                    ],
                }
            ],
        }
    ]
    await slack_app.post_event(message_event(channel=DM, text="", blocks=blocks))
    await answered(slack_app)
    assert last_user_turn(slack_app) == "@dan is on call"
