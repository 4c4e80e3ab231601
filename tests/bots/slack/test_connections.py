"""The adapter talks to Slack's Web API over kept-alive connections, not one per call."""

from __future__ import annotations

from bots.http_server import HttpServer
from bots.slack import SlackAdapter
from core.app import Core
from core.testing.fake_slack import FakeSlack, app_mention_event, message_event, new_ts
from tests.bots.slack.conftest import SlackApp

CHANNEL = "C0GENERAL"


async def test_answers_reuse_the_web_api_connections(slack_app: SlackApp) -> None:
    # Against slack.com every new connection costs a TCP and a TLS handshake: a reply that
    # opens one per call (post, each edit, each stream piece) is slower for the person.
    slack = slack_app.slack
    slack.add_user("U0ALICE", "alice")
    for question in ("one", "two", "three"):
        ts = new_ts()
        await slack_app.post_event(
            app_mention_event(channel=CHANNEL, ts=ts, text=f"<@U0BOT> {question}")
        )
        await slack.wait_for("/api/chat.stopStream")
        await slack_app.adapter.drain()
        assert slack.visible_texts(CHANNEL, ts) == [f"echo: {question}"]
    await slack_app.post_event(message_event(channel="D0ALICE", text="and in a DM"))
    await slack_app.adapter.drain()
    assert slack.visible_texts("D0ALICE") == ["echo: and in a DM"]

    calls = [r for r in slack.requests if r.path.startswith("/api/")]
    assert len(calls) >= 10
    # The listener's own client (Bolt makes one per event) and the sinks' share the pool.
    peers = {r.peer for r in calls}
    assert len(peers) <= 2, f"{len(peers)} connections for {len(calls)} calls"


async def test_stopping_closes_the_connections_and_a_restart_reopens_them(
    core: Core, slack: FakeSlack
) -> None:
    server = HttpServer("127.0.0.1", 0)
    adapter = SlackAdapter(core, server)
    await adapter.setup()
    await adapter.start()
    session = adapter.client.session
    assert session is not None and not session.closed
    await adapter.stop()
    assert session.closed
    assert adapter.client.session is None

    # Stopped, the client still works (on a connection of its own per call).
    assert (await adapter.client.auth_test())["ok"]
    await adapter.start()
    assert adapter.client.session is not None and not adapter.client.session.closed
    await adapter.stop()
