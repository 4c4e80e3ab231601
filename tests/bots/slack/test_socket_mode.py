"""User stories: with SLACK_APP_TOKEN set, events arrive over a Socket Mode WebSocket."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from bots.http_server import HttpServer
from bots.slack import SinkOptions, SlackAdapter
from core.app import Core, open_core
from core.config import Settings
from core.testing.fake_slack import FakeSlack, app_mention_event, event_callback, new_ts

CHANNEL = "C0GENERAL"


@pytest.fixture
async def socket_adapter(settings: Settings, slack: FakeSlack) -> AsyncIterator[SlackAdapter]:
    """The adapter in Socket Mode against the fake's WebSocket; no HTTP route, no secret."""
    socket_settings = settings.model_copy(
        update={
            "slack_app_token": SecretStr(slack.app_token),
            "slack_signing_secret": None,
        }
    )
    core: Core
    async with open_core(socket_settings) as core:
        server = HttpServer("127.0.0.1", 0)
        adapter = SlackAdapter(core, server, sink_options=SinkOptions(stream_interval=0.05))
        await adapter.setup()
        await server.start()
        await adapter.start()
        try:
            yield adapter
        finally:
            await adapter.stop()
            await server.stop()


async def test_a_mention_over_socket_mode_is_acked_and_answered_in_a_thread(
    socket_adapter: SlackAdapter, slack: FakeSlack
) -> None:
    await slack.wait_socket_connected()
    ts = new_ts()
    envelope = await slack.send_envelope(
        event_callback(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> via socket"))
    )
    ack = await slack.wait_ack(envelope)
    assert ack["envelope_id"] == envelope.envelope_id
    await slack.wait_for("/api/chat.stopStream")
    await socket_adapter.drain()

    assert slack.visible_texts(CHANNEL, ts) == ["echo: via socket"]
    (opened,) = slack.api_calls("apps.connections.open")
    assert opened.headers["Authorization"] == f"Bearer {slack.app_token}"


async def test_a_redelivered_socket_event_is_answered_once(
    socket_adapter: SlackAdapter, slack: FakeSlack
) -> None:
    await slack.wait_socket_connected()
    ts = new_ts()
    body = event_callback(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> once"))
    first = await slack.send_envelope(body)
    await slack.wait_ack(first)
    again = await slack.send_envelope(body, retry_attempt=1)
    await slack.wait_ack(again)
    await slack.wait_for("/api/chat.stopStream")
    await socket_adapter.drain()

    assert slack.visible_texts(CHANNEL, ts) == ["echo: once"]


async def test_http_route_is_not_added_in_socket_mode(socket_adapter: SlackAdapter) -> None:
    paths = [r.resource.canonical for r in socket_adapter.server.app.router.routes() if r.resource]
    assert "/slack/events" not in paths
