"""An app token Slack refuses stops the start with one line naming SLACK_APP_TOKEN.

slack_sdk's Socket Mode client retries a connection Slack refuses for ever: `relaybot run`
logged a traceback every 10 seconds, never became ready and never exited, so systemd's
Restart=on-failure never came into play, and `relaybot doctor` said the set-up was fine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from bots.http_server import HttpServer
from bots.slack import SinkOptions, SlackAdapter
from core.app import open_core
from core.config import Settings
from core.errors import ConfigError
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import FakeSlack
from tests.processes import clean_env, endpoint_env, free_port, run_with_env

WRONG_APP_TOKEN = "xapp-1-A111-222-revoked0123456789"


@pytest.fixture
def threaded_slack() -> Iterator[FakeSlack]:
    """The fake Slack in its own thread, for a child process to reach."""
    with FakeSlack() as server:
        yield server


def run_env(
    endpoint: FakeOpenAI, slack: FakeSlack, app_token: str, database_url: str
) -> dict[str, str]:
    return clean_env(
        **endpoint_env(endpoint),
        SLACK_BOT_TOKEN=slack.bot_token,
        SLACK_APP_TOKEN=app_token,
        SLACK_API_URL=slack.api_url,
        RELAYBOT_DATABASE_URL=database_url,
        RELAYBOT_HTTP_HOST="127.0.0.1",
        RELAYBOT_HTTP_PORT=str(free_port()),
        RELAYBOT_MODERATION="off",
        RELAYBOT_LOG_FORMAT="text",
    )


@pytest.mark.parametrize("kind", ["wrong", "bot token"])
async def test_relaybot_run_with_an_app_token_slack_refuses_exits_at_once_naming_it(
    endpoint: FakeOpenAI,
    threaded_slack: FakeSlack,
    tmp_path: Path,
    database_url: str,
    kind: str,
) -> None:
    # A mistyped or revoked xapp- token (invalid_auth), or the bot's xoxb- token pasted as
    # the app token (not_allowed_token_type).
    token = WRONG_APP_TOKEN if kind == "wrong" else threaded_slack.bot_token
    error = "invalid_auth" if kind == "wrong" else "not_allowed_token_type"
    env = run_env(endpoint, threaded_slack, token, database_url)
    began = time.monotonic()
    result = await asyncio.to_thread(run_with_env, ["run"], tmp_path, env)
    took = time.monotonic() - began

    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert took < 20, f"took {took:.1f} s"
    last = result.stderr.splitlines()[-1]
    assert last.startswith("relaybot: Slack rejected SLACK_APP_TOKEN"), output[-3000:]
    assert f"apps.connections.open: {error}" in last
    assert "App-Level Token" in last
    assert token not in output
    assert "Traceback" not in output and "Retrying" not in output
    # One look, not slack_sdk's retries.
    assert len(threaded_slack.api_calls("apps.connections.open")) == 1


def test_relaybot_doctor_fails_an_app_token_slack_refuses(
    endpoint: FakeOpenAI, threaded_slack: FakeSlack, tmp_path: Path
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'relaybot.db'}"
    env = run_env(endpoint, threaded_slack, WRONG_APP_TOKEN, db)
    assert run_with_env(["db", "upgrade"], tmp_path, env).returncode == 0

    result = run_with_env(["doctor"], tmp_path, env)

    slack_line = next(line for line in result.stdout.splitlines() if " slack: " in line)
    assert result.returncode == 1, result.stdout
    assert slack_line.startswith("FAIL"), slack_line
    assert "Slack rejected SLACK_APP_TOKEN (apps.connections.open: invalid_auth)" in slack_line
    assert "App-Level Token" in slack_line
    assert WRONG_APP_TOKEN not in result.stdout + result.stderr


def test_relaybot_doctor_passes_the_right_app_token(
    endpoint: FakeOpenAI, threaded_slack: FakeSlack, tmp_path: Path
) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'relaybot.db'}"
    env = run_env(endpoint, threaded_slack, threaded_slack.app_token, db)
    assert run_with_env(["db", "upgrade"], tmp_path, env).returncode == 0

    result = run_with_env(["doctor"], tmp_path, env)

    slack_line = next(line for line in result.stdout.splitlines() if " slack: " in line)
    assert slack_line.startswith("OK") and "Socket Mode" in slack_line, slack_line
    assert threaded_slack.api_calls("apps.connections.open")


async def test_slack_not_answering_the_app_token_check_does_not_stop_the_start(
    settings: Settings, slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    # Slack's own trouble at that moment: the start goes on, and slack_sdk connects when
    # Slack answers again (here its second apps.connections.open).
    slack.fail_next("apps.connections.open", "internal_error", status=500)
    socket_settings = settings.model_copy(
        update={"slack_app_token": SecretStr(slack.app_token), "slack_signing_secret": None}
    )
    caplog.set_level(logging.INFO)
    async with open_core(socket_settings) as core:
        server = HttpServer("127.0.0.1", 0)
        adapter = SlackAdapter(core, server, sink_options=SinkOptions())
        await adapter.setup()
        await server.start()
        try:
            await adapter.start()
            await slack.wait_socket_connected()
        finally:
            await adapter.stop()
            await server.stop()
    assert len(slack.api_calls("apps.connections.open")) == 2
    assert "apps.connections.open failed (internal_error, HTTP 500)" in caplog.text


async def test_the_adapter_start_raises_a_config_error_for_a_refused_app_token(
    settings: Settings, slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    socket_settings = settings.model_copy(
        update={"slack_app_token": SecretStr(WRONG_APP_TOKEN), "slack_signing_secret": None}
    )
    caplog.set_level(logging.DEBUG)
    async with open_core(socket_settings) as core:
        server = HttpServer("127.0.0.1", 0)
        adapter = SlackAdapter(core, server, sink_options=SinkOptions())
        await adapter.setup()
        await server.start()
        try:
            with pytest.raises(ConfigError) as raised:
                await asyncio.wait_for(adapter.start(), 10)
        finally:
            await adapter.stop()
            await server.stop()
    assert "SLACK_APP_TOKEN" in str(raised.value)
    assert "\n" not in str(raised.value)
    assert WRONG_APP_TOKEN not in str(raised.value) + caplog.text
