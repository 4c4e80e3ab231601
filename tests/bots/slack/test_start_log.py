"""What the Slack adapter writes to the operator's log as it starts."""

from __future__ import annotations

import logging

import pytest

from bots.http_server import HttpServer
from bots.slack import SlackAdapter
from core.app import Core


async def test_starting_with_the_token_in_the_environment_warns_of_nothing(
    core: Core, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As deployed: SLACK_BOT_TOKEN is in the environment, where Bolt looks for it too.
    assert core.settings.slack_bot_token is not None
    monkeypatch.setenv("SLACK_BOT_TOKEN", core.settings.slack_bot_token.get_secret_value())
    server = HttpServer("127.0.0.1", 0)
    with caplog.at_level(logging.INFO):
        adapter = SlackAdapter(core, server)
        await adapter.setup()
        await adapter.start()
        await adapter.stop()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
