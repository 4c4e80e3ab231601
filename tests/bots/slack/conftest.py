"""Slack fixtures: the fake Web API, a real core, and the adapter on a real HTTP server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from bots.http_server import HttpServer
from bots.slack import SinkOptions, SlackAdapter
from core.app import Core
from core.config import Settings
from core.db.models import Message, UsageRecord
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import FakeSlack, event_callback, signed_request

SIGNING_SECRET = "test-signing-secret"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    """The fake Slack Web API on 127.0.0.1."""
    async with FakeSlack() as server:
        yield server


@pytest.fixture
def settings(settings: Settings, slack: FakeSlack) -> Settings:
    """The core's test settings plus Slack in HTTP mode against the fake."""
    return settings.model_copy(
        update={
            "slack_bot_token": SecretStr(slack.bot_token),
            "slack_signing_secret": SecretStr(SIGNING_SECRET),
            "slack_api_url": slack.api_url,
            # Room for the long answers the streaming stories ask for.
            "reply_tokens": 16_000,
        }
    )


@dataclass
class SlackApp:
    """The running adapter and what a test needs to talk to it."""

    adapter: SlackAdapter
    server: HttpServer
    slack: FakeSlack
    openai: FakeOpenAI
    http: httpx.AsyncClient

    @property
    def events_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/slack/events"

    async def post_event(
        self, event: dict[str, Any], *, event_id: str | None = None, **sign: Any
    ) -> httpx.Response:
        """POST a correctly signed Events API callback carrying `event`."""
        payload = event_callback(event, team_id=self.slack.team_id, event_id=event_id)
        return await self.post(payload, **sign)

    async def post(
        self, payload: dict[str, Any] | str, *, secret: str = SIGNING_SECRET, **sign: Any
    ) -> httpx.Response:
        """POST any payload, signed with `secret`."""
        body, headers = signed_request(secret, payload, **sign)
        return await self.http.post(self.events_url, content=body, headers=headers)


@pytest.fixture
def sink_options() -> SinkOptions:
    """Fast pacing for tests; limits stay Slack's."""
    return SinkOptions(update_interval=0.05, stream_interval=0.05)


@pytest.fixture
async def slack_app(
    core: Core, slack: FakeSlack, fake_openai: FakeOpenAI, sink_options: SinkOptions
) -> AsyncIterator[SlackApp]:
    """The adapter on the app's HTTP server (port 0), answering through the fake Slack."""
    server = HttpServer("127.0.0.1", 0)
    adapter = SlackAdapter(core, server, sink_options=sink_options)
    await adapter.setup()
    await server.start()
    await adapter.start()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            yield SlackApp(adapter, server, slack, fake_openai, http)
    finally:
        await adapter.stop()
        await server.stop()


async def stored_rows(core: Core) -> list[tuple[str, str, str]]:
    """Every stored turn: (role, content, status), oldest first."""
    async with core.engine.connect() as conn:
        rows = await conn.execute(
            select(Message.role, Message.content, Message.status).order_by(Message.id)
        )
        return [(r.role, r.content, r.status) for r in rows]


async def chat_usage(core: Core) -> list[Any]:
    """The usage rows of chat answers (what was billed for them)."""
    async with core.engine.connect() as conn:
        return list(await conn.execute(select(UsageRecord).where(UsageRecord.kind == "chat")))
