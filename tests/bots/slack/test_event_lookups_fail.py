"""User stories: a database that cannot say, while an event is read, whether the bot talks in
its thread costs no message: Slack gets no 2xx and sends the event again, as when storing it
fails. Only an event the adapter cannot make sense of is acknowledged and left."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.exc import OperationalError

from core.app import Core
from core.testing.fake_slack import app_mention_event, message_event, new_ts
from core.types import ChatRef
from tests.bots.slack.conftest import SlackApp

CHANNEL = "C0GENERAL"


def database_blips(core: Core, times: int = 1) -> None:
    """The next `times` history look-ups fail as a dropped database connection does."""
    store = core.service.store
    real = store.has_history
    left = [times]

    async def blip(chat_key: str) -> bool:
        if left[0] > 0:
            left[0] -= 1
            raise OperationalError(
                "SELECT messages.id FROM messages", {}, Exception("server closed the connection")
            )
        return await real(chat_key)

    store.has_history = blip  # type: ignore[method-assign]


async def test_a_mention_in_someones_thread_during_a_database_blip_comes_again_and_is_answered(
    slack_app: SlackApp, core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    slack = slack_app.slack
    parent = new_ts()
    slack.add_person_message(CHANNEL, parent, "what is 2+2?", user="U0BOB")
    ts = new_ts()
    event = app_mention_event(
        channel=CHANNEL, ts=ts, thread_ts=parent, text="<@U0BOT> can you answer this?"
    )
    database_blips(core)
    first = await slack_app.post_event(event, event_id="Ev0BLIP")
    await slack_app.adapter.drain()

    # No 2xx: Slack delivers it again. Nothing stored, nothing answered yet.
    assert first.status_code >= 500
    assert slack.visible_texts(CHANNEL, parent) == []
    assert not await core.service.has_history(
        ChatRef("slack", f"{slack.team_id}:{CHANNEL}", parent)
    )
    assert "not acknowledged" in caplog.text and "skipped" not in caplog.text

    again = await slack_app.post_event(event, event_id="Ev0BLIP", retry_num=1)
    assert again.status_code == 200
    await slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()
    assert slack.visible_texts(CHANNEL, parent) == ["echo: > what is 2+2?\n\ncan you answer this?"]


async def test_a_reply_in_the_bots_thread_reaching_a_new_replica_during_a_blip_is_answered(
    slack_app: SlackApp, core: Core
) -> None:
    slack = slack_app.slack
    ts = new_ts()
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> hi"))
    await slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()
    slack_app.adapter._threads._known.clear()  # a freshly started replica knows nothing
    reply = message_event(channel=CHANNEL, thread_ts=ts, text="and then?")
    database_blips(core)
    first = await slack_app.post_event(reply, event_id="Ev0BLIP2")
    await slack_app.adapter.drain()
    assert first.status_code >= 500
    assert slack.visible_texts(CHANNEL, ts) == ["echo: hi"]

    again = await slack_app.post_event(reply, event_id="Ev0BLIP2", retry_num=1)
    assert again.status_code == 200
    await slack.wait_for("/api/chat.stopStream", 2)
    await slack_app.adapter.drain()
    assert slack.visible_texts(CHANNEL, ts) == ["echo: hi", "echo: and then?"]


async def test_an_event_the_adapter_cannot_read_is_acknowledged_once_and_logged(
    slack_app: SlackApp, caplog: pytest.LogCaptureFixture
) -> None:
    # Sent again it would read no better: four more failures, and Slack turning the app's
    # events off after enough of them.
    event = message_event(channel="D0ALICE", text="hello")
    event["subtype"] = "file_share"
    event["files"] = 5  # not a list of files
    with caplog.at_level(logging.ERROR, logger="relaybot.slack"):
        response = await slack_app.post_event(event)
        await slack_app.adapter.drain()

    assert response.status_code == 200
    assert "could not be read; skipped" in caplog.text
    assert slack_app.slack.bot_messages() == []
