"""User stories: which channel threads are the bot's, across replicas and Slack's bad days."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from bots.http_server import HttpServer
from bots.slack import SlackAdapter
from core.testing.fake_slack import (
    FakeSlack,
    app_mention_event,
    event_callback,
    message_event,
    new_ts,
    signed_request,
)
from tests.bots.slack.conftest import SIGNING_SECRET, SlackApp
from tests.conftest import FIXTURES

CHANNEL = "C0GENERAL"


class MoodySlack(FakeSlack):
    """FakeSlack whose methods can answer late, or drop the connection without an answer."""

    def __init__(self) -> None:
        super().__init__()
        self.delays: dict[str, float] = {}
        self.broken: set[str] = set()

    def _api(self, name: str, handler: Any) -> Any:
        async def moody(request: web.Request, args: dict[str, Any]) -> web.Response:
            if name in self.broken:
                assert request.transport is not None
                request.transport.close()  # the connection drops: aiohttp.ClientError
                return web.Response()
            if name in self.delays:
                await asyncio.sleep(self.delays[name])
            response: web.Response = await handler(request, args)
            return response

        return super()._api(name, moody)


@pytest.fixture
async def slack() -> AsyncIterator[MoodySlack]:
    async with MoodySlack() as server:
        yield server


class Replica:
    """A second `relaybot run` process: its own adapter (and memory), the same database."""

    def __init__(self, slack_app: SlackApp) -> None:
        self.slack_app = slack_app
        self.server = HttpServer("127.0.0.1", 0)
        self.adapter = SlackAdapter(
            slack_app.adapter.core, self.server, sink_options=slack_app.adapter.sink_options
        )

    async def __aenter__(self) -> Replica:
        await self.adapter.setup()
        await self.server.start()
        await self.adapter.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.adapter.stop()
        await self.server.stop()

    async def post_event(self, event: dict[str, Any]) -> httpx.Response:
        payload = event_callback(event, team_id=self.slack_app.slack.team_id)
        body, headers = signed_request(SIGNING_SECRET, payload)
        url = f"http://127.0.0.1:{self.server.port}/slack/events"
        return await self.slack_app.http.post(url, content=body, headers=headers)


async def start_thread(slack_app: SlackApp, ts: str, text: str = "<@U0BOT> hi") -> None:
    """A person mentions the bot at the top of the channel; the bot answers in its thread."""
    slack = slack_app.slack
    answered = len(slack.api_calls("chat.stopStream"))
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text=text))
    await slack.wait_for("/api/chat.stopStream", answered + 1)
    await slack_app.adapter.drain()


async def test_an_unaddressed_clip_leaves_the_thread_under_it_to_the_people(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    clip = slack.add_file(
        (FIXTURES / "audio-clip.m4a").read_bytes(), name="clip.m4a", mimetype="audio/mp4"
    )
    ts = new_ts()
    await slack_app.post_event(message_event(channel=CHANNEL, ts=ts, files=[clip]))
    await slack_app.adapter.drain()
    # Colleagues talk about the clip in its thread; nobody mentions the bot.
    await slack_app.post_event(
        message_event(channel=CHANNEL, thread_ts=ts, user="U0BOB", text="nice one")
    )
    await slack_app.adapter.drain()

    assert slack.bot_messages() == []
    assert slack_app.openai.requests == []


async def test_in_a_channel_wanting_transcripts_the_thread_under_a_clip_stays_the_peoples(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    setting = new_ts()
    await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=setting, text="<@U0BOT> voicemode transcript")
    )
    await slack.wait_until(lambda: bool(slack.visible(CHANNEL, setting)))
    await slack_app.adapter.drain()
    clip = slack.add_file(
        (FIXTURES / "audio-clip.m4a").read_bytes(), name="clip.m4a", mimetype="audio/mp4"
    )
    ts = new_ts()
    await slack_app.post_event(message_event(channel=CHANNEL, ts=ts, files=[clip]))
    await slack.wait_until(lambda: bool(slack.visible(CHANNEL, ts)))
    await slack_app.adapter.drain()
    await slack_app.post_event(
        message_event(channel=CHANNEL, thread_ts=ts, user="U0BOB", text="nice one")
    )
    await slack_app.adapter.drain()

    assert slack.visible_texts(CHANNEL, ts) == ["*Transcript:* " + slack_app.openai.transcript]
    assert slack_app.openai.chat_requests() == []


async def test_a_reply_reaching_another_replica_is_answered_in_the_bots_thread(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    async with Replica(slack_app) as other:
        parent = new_ts()
        slack.add_person_message(CHANNEL, parent, "deploy failed again")
        # Colleagues talk in the thread; the other replica hears it and learns "not ours".
        await other.post_event(
            message_event(channel=CHANNEL, thread_ts=parent, user="U0BOB", text="ugh")
        )
        await other.adapter.drain()
        # Someone brings the bot in; this replica answers.
        await slack_app.post_event(
            message_event(channel=CHANNEL, thread_ts=parent, text="<@U0BOT> any idea why?")
        )
        await slack.wait_for("/api/chat.stopStream")
        await slack_app.adapter.drain()
        # The follow-up, without a mention, reaches the other replica.
        await other.post_event(
            message_event(channel=CHANNEL, thread_ts=parent, text="and how do I fix it?")
        )
        await slack.wait_for("/api/chat.stopStream", 2)
        await other.adapter.drain()

    # (The first question comes with the message the thread hangs under, quoted.)
    asked = "> deploy failed again\n\nany idea why?"
    assert slack.visible_texts(CHANNEL, parent) == [
        f"echo: {asked}",
        "echo: and how do I fix it?",
    ]
    last = slack_app.openai.chat_requests()[-1]["messages"]
    assert [m["content"] for m in last if m["role"] != "system"] == [
        asked,
        f"echo: {asked}",
        "and how do I fix it?",
    ]


async def test_a_new_replica_knows_the_bots_threads_from_the_shared_history(
    slack_app: SlackApp,
) -> None:
    # conversations.replies is rate limited hard for apps outside the Marketplace: a replica
    # that started after the bot answered must not need it to know the thread is the bot's.
    slack = slack_app.slack
    ts = new_ts()
    await start_thread(slack_app, ts)
    slack.fail_next("conversations.replies", retry_after=30, times=5)
    async with Replica(slack_app) as fresh:
        await fresh.post_event(message_event(channel=CHANNEL, thread_ts=ts, text="and then?"))
        await slack.wait_for("/api/chat.stopStream", 2)
        await fresh.adapter.drain()

    assert slack.visible_texts(CHANNEL, ts) == ["echo: hi", "echo: and then?"]
    assert slack.api_calls("conversations.replies") == []


async def test_a_thread_whose_history_was_forgotten_is_still_the_bots(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    ts = new_ts()
    await start_thread(slack_app, ts)
    await slack_app.post_event(message_event(channel=CHANNEL, thread_ts=ts, text="forget"))
    await slack.wait_until(lambda: len(slack.visible(CHANNEL, ts)) == 2)
    await slack_app.adapter.drain()
    async with Replica(slack_app) as fresh:  # knows nothing; the database has no history
        await fresh.post_event(message_event(channel=CHANNEL, thread_ts=ts, text="again?"))
        await slack.wait_until(lambda: len(slack.visible(CHANNEL, ts)) == 3)
        await fresh.adapter.drain()

    assert slack.visible_texts(CHANNEL, ts)[-1] == "echo: again?"
    assert slack.api_calls("conversations.replies")  # Slack said the bot had answered there


@pytest.mark.parametrize("trouble", ["slow", "broken", "error"])
async def test_a_mention_is_answered_whatever_users_info_does(
    slack_app: SlackApp, trouble: str, caplog: pytest.LogCaptureFixture
) -> None:
    slack = slack_app.slack
    assert isinstance(slack, MoodySlack)
    if trouble == "slow":
        slack.delays["users.info"] = 5
    elif trouble == "broken":
        slack.broken.add("users.info")
    else:
        slack.fail_next("users.info", "ratelimited", retry_after=30)
    ts = new_ts()
    started = time.monotonic()
    response = await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> hello?")
    )
    acked_in = time.monotonic() - started
    await slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()

    assert response.status_code == 200 and acked_in < 3  # Slack's deadline for the ack
    assert slack.visible_texts(CHANNEL, ts) == ["echo: hello?"]
    # Named by the user id when Slack would not say more.
    user_turn = slack_app.openai.chat_requests()[-1]["messages"][-1]
    assert user_turn.get("name") == "U0ALICE"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert slack.bot_token not in caplog.text


async def test_a_name_slack_could_not_give_is_asked_for_again_later(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    slack.add_user("U0ALICE", "alice")
    slack.fail_next("users.info", "internal_error", status=500)
    first, second = new_ts(), new_ts()
    await start_thread(slack_app, first, "<@U0BOT> one")
    await start_thread(slack_app, second, "<@U0BOT> two")

    names = [r["messages"][-1].get("name") for r in slack_app.openai.chat_requests()]
    assert names == ["U0ALICE", "alice"]


@pytest.mark.parametrize("trouble", ["slow", "broken", "rate-limited"])
async def test_a_thread_slack_cannot_describe_is_left_alone_without_holding_the_ack(
    slack_app: SlackApp, trouble: str, caplog: pytest.LogCaptureFixture
) -> None:
    slack = slack_app.slack
    assert isinstance(slack, MoodySlack)
    parent = new_ts()
    slack.add_person_message(CHANNEL, parent, "lunch?")
    if trouble == "slow":
        slack.delays["conversations.replies"] = 5
    elif trouble == "broken":
        slack.broken.add("conversations.replies")
    else:
        slack.fail_next("conversations.replies", retry_after=30)
    started = time.monotonic()
    response = await slack_app.post_event(
        message_event(channel=CHANNEL, thread_ts=parent, user="U0BOB", text="sure")
    )
    acked_in = time.monotonic() - started
    await slack_app.adapter.drain()

    assert response.status_code == 200 and acked_in < 3
    assert slack.visible(CHANNEL, parent) == []  # no answer in the thread
    assert slack_app.openai.requests == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
