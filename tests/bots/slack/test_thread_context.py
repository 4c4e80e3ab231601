"""Asked in someone's thread, the bot reads the message the thread hangs under."""

from __future__ import annotations

from core.testing.fake_openai import PNG_SIGNATURE
from core.testing.fake_slack import app_mention_event, message_event, new_ts
from tests.bots.slack.conftest import SlackApp
from tests.conftest import FIXTURES

CHANNEL = "C0GENERAL"


def last_user_turn(slack_app: SlackApp) -> str:
    messages = slack_app.openai.chat_requests()[-1]["messages"]
    return str([m for m in messages if m["role"] == "user"][-1]["content"])


async def test_asked_in_someone_elses_thread_the_bot_reads_what_the_thread_is_about(
    slack_app: SlackApp,
) -> None:
    parent = new_ts()
    slack_app.slack.add_person_message(
        CHANNEL, parent, "Does anyone know the VPN address for the Berlin office?", user="U0BOB"
    )
    await slack_app.post_event(
        app_mention_event(
            channel=CHANNEL, ts=new_ts(), thread_ts=parent, text="<@U0BOT> can you answer this?"
        )
    )
    await slack_app.slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()

    assert last_user_turn(slack_app) == (
        "> Does anyone know the VPN address for the Berlin office?\n\ncan you answer this?"
    )

    # Once the bot talks in the thread, its history holds the question: not quoted again.
    await slack_app.post_event(message_event(channel=CHANNEL, thread_ts=parent, text="thanks"))
    await slack_app.slack.wait_for("/api/chat.stopStream", 2)
    await slack_app.adapter.drain()
    assert last_user_turn(slack_app) == "thanks"


async def test_asked_under_someones_photo_the_bot_sees_the_photo(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    photo = slack.add_file(
        (FIXTURES / "photo.jpg").read_bytes(), name="photo.jpg", mimetype="image/jpeg"
    )
    parent = new_ts()
    slack.add_person_message(CHANNEL, parent, "Found this at the flea market", files=[photo])
    await slack_app.post_event(
        app_mention_event(
            channel=CHANNEL, ts=new_ts(), thread_ts=parent, text="<@U0BOT> what is this?"
        )
    )
    await slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()

    content = slack_app.openai.chat_requests()[-1]["messages"][-1]["content"]
    assert [part["type"] for part in content] == ["text", "image_url"]
    assert content[0]["text"] == "> Found this at the flea market\n\nwhat is this?"
    assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")


async def test_edit_asked_under_someones_photo_edits_that_photo(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    photo = slack.add_file(
        (FIXTURES / "photo.jpg").read_bytes(), name="photo.jpg", mimetype="image/jpeg"
    )
    parent = new_ts()
    slack.add_person_message(CHANNEL, parent, "", files=[photo])
    await slack_app.post_event(
        app_mention_event(
            channel=CHANNEL, ts=new_ts(), thread_ts=parent, text="<@U0BOT> edit: add a hat"
        )
    )
    await slack.wait_for("/api/files.completeUploadExternal")
    await slack_app.adapter.drain()

    (edit,) = slack_app.openai.calls("/images/edits")
    assert edit.form["prompt"] == "add a hat"
    (upload,) = slack.uploads.values()
    assert upload.startswith(PNG_SIGNATURE)


async def test_asked_under_someones_document_the_question_is_answered_with_it_named(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    report = slack.add_file(
        b"%PDF-1.4 not read", name="q3-report.pdf", mimetype="application/pdf", filetype="pdf"
    )
    parent = new_ts()
    slack.add_person_message(
        CHANNEL, parent, "Q3 report, thoughts on hiring?", files=[report], user="U0BOB"
    )
    await slack_app.post_event(
        app_mention_event(
            channel=CHANNEL,
            ts=new_ts(),
            thread_ts=parent,
            text="<@U0BOT> how many should we hire?",
        )
    )
    await slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()

    assert last_user_turn(slack_app) == (
        "> Q3 report, thoughts on hiring?\n> [attached: q3-report.pdf]\n\nhow many should we hire?"
    )
    assert slack.downloads() == []  # (nothing fetched that the question did not need)
