"""`relaybot run` with an HTTP address it cannot listen on: a RELAYBOT_HTTP_HOST that does not
resolve or is not this machine's, a RELAYBOT_HTTP_PORT another program holds. The start
ended in "relaybot: Name or service not known" or "error while attempting to bind on
address ('0.0.0.0', 8080): address already in use", naming no setting. It is one line naming
both, said before anything is asked of the platform (no webhook registered)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_telegram import FakeTelegram
from tests.processes import endpoint_env, run_relaybot


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram() as server:
        yield server


def start(endpoint: FakeOpenAI, telegram: FakeTelegram, cwd: Path, host: str, port: int) -> str:
    """`relaybot run` (a Telegram webhook) on host:port: its one line of output, which it
    exits with (2)."""
    result = run_relaybot(
        ["run"],
        cwd,
        **endpoint_env(endpoint),
        TELEGRAM_BOT_TOKEN=telegram.token,
        TELEGRAM_API_BASE_URL=telegram.api_base_url,
        TELEGRAM_FILE_BASE_URL=telegram.file_base_url,
        TELEGRAM_WEBHOOK_URL="https://bot.example.com/telegram/webhook",
        RELAYBOT_HTTP_HOST=host,
        RELAYBOT_HTTP_PORT=str(port),
        RELAYBOT_MODERATION="off",
        RELAYBOT_LOG_LEVEL="WARNING",
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    # Nothing was asked of Telegram: the webhook is registered only once the server listens.
    assert telegram.calls("/getMe") == [] and telegram.calls("/setWebhook") == []
    return result.stderr.strip()


# bot.invalid and 999.1.1.1 do not resolve; 192.0.2.1 (TEST-NET-1) is nobody's address.
@pytest.mark.parametrize("host", ["bot.invalid", "999.1.1.1", "192.0.2.1"])
def test_a_host_that_cannot_be_listened_on_is_one_line_naming_the_settings(
    endpoint: FakeOpenAI, telegram: FakeTelegram, tmp_path: Path, host: str
) -> None:
    line = start(endpoint, telegram, tmp_path, host, 8080)
    assert line.startswith(f"relaybot: cannot listen on {host}:8080 ("), line
    assert line.endswith("); check RELAYBOT_HTTP_HOST and RELAYBOT_HTTP_PORT"), line


def test_a_port_in_use_is_one_line_naming_the_settings(
    endpoint: FakeOpenAI, telegram: FakeTelegram, tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        line = start(endpoint, telegram, tmp_path, "127.0.0.1", port)
    assert line == (
        f"relaybot: cannot listen on 127.0.0.1:{port} (address already in use); check "
        "RELAYBOT_HTTP_HOST and RELAYBOT_HTTP_PORT"
    )
