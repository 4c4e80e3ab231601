"""User stories: a bot token Slack rejects stops the start with one clear line; no event
depends on a live auth.test; an event the database could not store is not acknowledged,
so Slack delivers it again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bots.http_server import HttpServer
from bots.slack import SinkOptions, SlackAdapter
from core.app import Core
from core.errors import ConfigError
from core.testing.fake_slack import (
    FakeSlack,
    app_mention_event,
    event_callback,
    new_ts,
    signed_request,
)
from core.types import ChatRef
from tests.bots.slack.conftest import SIGNING_SECRET, SlackApp

CHANNEL = "C0GENERAL"
Start = Callable[[], Awaitable[SlackAdapter]]


@pytest.fixture
async def start_adapter(core: Core, sink_options: SinkOptions) -> AsyncIterator[Start]:
    """Starts the adapter when the test says (after it set the fake up); stops it after."""
    started: list[tuple[SlackAdapter, HttpServer]] = []

    async def start() -> SlackAdapter:
        server = HttpServer("127.0.0.1", 0)
        adapter = SlackAdapter(core, server, sink_options=sink_options)
        started.append((adapter, server))
        await adapter.setup()
        await server.start()
        await adapter.start()
        return adapter

    yield start
    for adapter, server in started:
        await adapter.stop()
        await server.stop()


@pytest.mark.parametrize(
    ("token", "error"),
    [
        ("xoxb-a-wrong-token", "invalid_auth"),  # the fake answers invalid_auth to it
        (None, "token_revoked"),
        (None, "account_inactive"),
    ],
)
async def test_a_bot_token_slack_rejects_stops_the_start_with_one_clear_line(
    core: Core,
    slack: FakeSlack,
    start_adapter: Start,
    caplog: pytest.LogCaptureFixture,
    token: str | None,
    error: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    if token is not None:
        core.settings = core.settings.model_copy(update={"slack_bot_token": SecretStr(token)})
    else:
        slack.fail_next("auth.test", error)

    with pytest.raises(ConfigError) as raised:
        await start_adapter()

    message = str(raised.value)
    assert "\n" not in message
    assert f"auth.test: {error}" in message
    assert "SLACK_BOT_TOKEN" in message
    assert "OAuth & Permissions" in message
    secret = core.settings.slack_bot_token
    assert secret is not None
    assert secret.get_secret_value() not in message
    assert secret.get_secret_value() not in caplog.text
    assert len(slack.api_calls("auth.test")) == 1  # an answer, not a hiccup: not retried


async def test_a_slack_hiccup_on_the_start_up_auth_test_is_retried(
    slack: FakeSlack, start_adapter: Start
) -> None:
    slack.fail_next("auth.test", "internal_error", status=500)
    await start_adapter()
    assert len(slack.api_calls("auth.test")) == 2


async def test_a_slack_hiccup_on_auth_test_after_the_start_costs_no_event(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    slack.fail_next("auth.test", "internal_error", status=500, times=10)
    ts = new_ts()
    response = await slack_app.post_event(
        app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> hi")
    )
    assert response.status_code == 200
    await slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()

    assert slack.visible_texts(CHANNEL, ts) == ["echo: hi"]
    assert len(slack.api_calls("auth.test")) == 1  # the start's only


async def test_when_slack_could_not_answer_auth_test_at_the_start_the_first_event_asks(
    slack: FakeSlack, start_adapter: Start
) -> None:
    # Slack is down for the whole start (every retry): the start goes on regardless.
    slack.fail_next("auth.test", "internal_error", status=500, times=4)
    adapter = await start_adapter()
    assert len(slack.api_calls("auth.test")) == 4

    ts = new_ts()
    body, headers = signed_request(
        SIGNING_SECRET,
        event_callback(
            app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> hello"),
            team_id=slack.team_id,
        ),
    )
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"http://127.0.0.1:{adapter.server.port}/slack/events", content=body, headers=headers
        )
    assert response.status_code == 200
    await slack.wait_for("/api/chat.stopStream")
    await adapter.drain()
    assert slack.visible_texts(CHANNEL, ts) == ["echo: hello"]


# -- the database could not store the event --------------------------------------------
async def break_storing(url: str) -> Callable[[], Awaitable[None]]:
    """Make the database refuse to store inbound events (a real error from the database,
    as in a lock timeout or a failover); returns what mends it."""
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        # A trigger writing to a table that is gone: "no such table" (OperationalError).
        breaking = [
            "CREATE TABLE relaybot_gone (n INTEGER)",
            "CREATE TRIGGER relaybot_hiccup BEFORE INSERT ON inbound_events "
            "BEGIN INSERT INTO relaybot_gone VALUES (1); END",
            "DROP TABLE relaybot_gone",
        ]
    else:
        breaking = [
            "CREATE FUNCTION relaybot_hiccup() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'could not obtain lock on inbound_events' "
            "USING ERRCODE = 'lock_not_available'; END $$",
            "CREATE TRIGGER relaybot_hiccup BEFORE INSERT ON inbound_events "
            "FOR EACH ROW EXECUTE FUNCTION relaybot_hiccup()",
        ]
    mending = (
        ["DROP TRIGGER relaybot_hiccup"]
        if engine.dialect.name == "sqlite"
        else ["DROP TRIGGER relaybot_hiccup ON inbound_events"]
    )
    return await _altered(engine, breaking, mending)


async def _altered(
    engine: AsyncEngine, breaking: list[str], mending: list[str]
) -> Callable[[], Awaitable[None]]:
    """Run `breaking` now; returns what runs `mending` (and lets the engine go)."""
    async with engine.begin() as conn:
        for statement in breaking:
            await conn.execute(text(statement))

    async def mend() -> None:
        try:
            async with engine.begin() as conn:
                for statement in mending:
                    await conn.execute(text(statement))
        finally:
            await engine.dispose()

    return mend


async def test_an_event_the_database_could_not_store_is_not_acknowledged_and_comes_again(
    slack_app: SlackApp, core: Core
) -> None:
    slack = slack_app.slack
    ts = new_ts()
    event = app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> hello")
    mend = await break_storing(core.settings.database_url)
    try:
        first = await slack_app.post_event(event, event_id="Ev0STORE")
        await slack_app.adapter.drain()
    finally:
        await mend()

    # No 2xx: Slack delivers the event again. Nothing was stored, nothing answered.
    assert first.status_code >= 500
    assert slack.visible_texts(CHANNEL, ts) == []
    assert slack_app.openai.chat_requests() == []
    chat = ChatRef("slack", f"{slack.team_id}:{CHANNEL}", ts)
    assert not await core.service.has_history(chat)

    # Slack's retry, once the database is back: stored, acknowledged, answered once.
    again = await slack_app.post_event(event, event_id="Ev0STORE", retry_num=1)
    assert again.status_code == 200
    await slack.wait_for("/api/chat.stopStream")
    await slack_app.adapter.drain()
    assert slack.visible_texts(CHANNEL, ts) == ["echo: hello"]
    assert await core.service.has_history(chat)


async def refuse_storing(url: str, word: str) -> Callable[[], Awaitable[None]]:
    """Make the database refuse, as a constraint violation, to store an event whose
    payload holds `word` (a check or trigger of the operator's, say); returns what mends
    it. The refusal is an integrity error, as a duplicate event key's is."""
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        breaking = [
            "CREATE TRIGGER relaybot_refuse BEFORE INSERT ON inbound_events "
            f"WHEN NEW.payload LIKE '%{word}%' "
            "BEGIN SELECT RAISE(ABORT, 'refused by a check'); END",
        ]
        mending = ["DROP TRIGGER relaybot_refuse"]
    else:
        breaking = [
            "CREATE FUNCTION relaybot_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.payload LIKE '%{word}%' THEN RAISE EXCEPTION 'refused by a check' "
            "USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER relaybot_refuse BEFORE INSERT ON inbound_events "
            "FOR EACH ROW EXECUTE FUNCTION relaybot_refuse()",
        ]
        mending = [
            "DROP TRIGGER relaybot_refuse ON inbound_events",
            "DROP FUNCTION relaybot_refuse()",
        ]
    return await _altered(engine, breaking, mending)


@pytest.mark.parametrize("queued", [False, True], ids=["first-in-its-thread", "queued"])
async def test_an_event_refused_by_a_constraint_is_not_taken_for_a_duplicate(
    slack_app: SlackApp, core: Core, queued: bool
) -> None:
    """Only a stored event key makes an event a duplicate: any other integrity error is
    an error, left unacknowledged (it was acknowledged and dropped without a word)."""
    slack = slack_app.slack
    parent = new_ts()
    if queued:  # an answer in progress in the thread: the next event waits behind it
        slack_app.openai.chunk_delay = 0.05
        busy = await slack_app.post_event(
            app_mention_event(channel=CHANNEL, ts=parent, text="<@U0BOT> one two three"),
            event_id="Ev0BUSY",
        )
        assert busy.status_code == 200
        await slack.wait_for("/api/chat.startStream")
    ts = new_ts()
    event = app_mention_event(
        channel=CHANNEL,
        ts=ts,
        thread_ts=parent if queued else None,
        text="<@U0BOT> zebra crossing",
    )
    mend = await refuse_storing(core.settings.database_url, "zebra")
    try:
        first = await slack_app.post_event(event, event_id="Ev0REFUSED")
    finally:
        await mend()
    slack_app.openai.chunk_delay = 0
    await slack_app.adapter.drain()

    assert first.status_code >= 500  # Slack delivers it again
    thread = parent if queued else ts
    assert not any("zebra" in t for t in slack.visible_texts(CHANNEL, thread))

    # Slack's retry: stored this time, acknowledged and answered once.
    again = await slack_app.post_event(event, event_id="Ev0REFUSED", retry_num=1)
    assert again.status_code == 200
    await slack_app.adapter.drain()
    for _ in range(200):
        if "echo: zebra crossing" in slack.visible_texts(CHANNEL, thread):
            break
        await asyncio.sleep(0.02)
    assert slack.visible_texts(CHANNEL, thread).count("echo: zebra crossing") == 1
