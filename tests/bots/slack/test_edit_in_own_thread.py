"""User stories: `edit: INSTRUCTION` in a thread edits the latest picture there (the photo
the thread hangs under, or the bot's last edit of it), also once the bot talks in the
thread; where the thread holds no picture it is talk."""

from __future__ import annotations

from core.testing.fake_openai import PNG_SIGNATURE
from core.testing.fake_slack import app_mention_event, message_event, new_ts
from tests.bots.slack.conftest import SlackApp
from tests.conftest import FIXTURES

CHANNEL = "C0GENERAL"
DM = "D0ALICE"
PHOTO = (FIXTURES / "photo.jpg").read_bytes()


async def test_edit_in_the_thread_under_ones_own_photo_edits_it_and_then_the_edit(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    photo = slack.add_file(PHOTO, name="photo.jpg", mimetype="image/jpeg")
    ts = new_ts()
    slack.add_person_message(CHANNEL, ts, "<@U0BOT> what is this?", files=[photo])
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> what is this?", files=[photo])
    )
    await slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()
    asked = len(slack_app.openai.chat_requests())

    await slack_app.post_event(
        message_event(channel=CHANNEL, thread_ts=ts, text="edit: add a party hat")
    )
    await slack.wait_for("/api/files.completeUploadExternal")
    await slack_app.adapter.drain()

    (edit,) = slack_app.openai.calls("/images/edits")
    assert edit.form["prompt"] == "add a party hat"
    assert edit.form["image"]["data"] == PHOTO
    _answer, picture = slack.visible(CHANNEL, ts)
    assert picture.files and picture.text == "add a party hat"
    assert len(slack_app.openai.chat_requests()) == asked  # no chat reply instead

    # The next edit goes on from the bot's picture, the latest in the thread.
    await slack_app.post_event(
        message_event(channel=CHANNEL, thread_ts=ts, text="edit: make the hat blue")
    )
    await slack.wait_for("/api/files.completeUploadExternal", 2)
    await slack_app.adapter.drain()

    _first, second = slack_app.openai.calls("/images/edits")
    assert second.form["prompt"] == "make the hat blue"
    (hatted,) = [slack.uploads[f["id"]] for f in picture.files]
    assert second.form["image"]["data"] == hatted and hatted.startswith(PNG_SIGNATURE)
    assert [m.text for m in slack.visible(CHANNEL, ts)[1:]] == [
        "add a party hat",
        "make the hat blue",
    ]


async def test_edit_in_a_dm_thread_under_a_photo_edits_it(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    photo = slack.add_file(PHOTO, name="photo.jpg", mimetype="image/jpeg")
    ts = new_ts()
    slack.add_person_message(DM, ts, "nice, right?", files=[photo])
    await slack_app.post_event(
        message_event(channel=DM, ts=ts, text="nice, right?", files=[photo])
    )
    await slack.wait_until(lambda: bool(slack.visible(DM)))
    await slack_app.adapter.drain()

    await slack_app.post_event(message_event(channel=DM, thread_ts=ts, text="Edit: add a hat"))
    await slack.wait_for("/api/files.completeUploadExternal")
    await slack_app.adapter.drain()

    (edit,) = slack_app.openai.calls("/images/edits")
    assert edit.form["prompt"] == "add a hat" and edit.form["image"]["data"] == PHOTO
    (picture,) = slack.visible(DM, ts)
    assert picture.files


async def test_edit_talk_in_a_thread_without_pictures_is_answered(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    ts = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> meeting on Monday?")
    )
    await slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()

    await slack_app.post_event(
        message_event(channel=CHANNEL, thread_ts=ts, text="Edit: I meant Tuesday")
    )
    await slack.wait_for("/api/chat.stopStream", 2)
    await slack_app.adapter.drain()

    assert slack.visible_texts(CHANNEL, ts)[-1] == "echo: Edit: I meant Tuesday"
    assert slack_app.openai.calls("/images/edits") == []
