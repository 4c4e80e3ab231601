"""`relaybot run` when its start cannot finish: a platform that cannot be connected, a
database never migrated.

slack_sdk's Socket Mode client retries its connection for as long as it is let: with Slack
unreachable, or failing, the Slack adapter's start never returns. The operator met it as a
process that ignored SIGTERM and Ctrl-C and yet said it was ready. (An app token Slack
refuses stops the start instead: tests/bots/slack/test_app_token_refused.py.)
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bots.runner import run_platforms
from core.app import open_core
from core.config import Settings
from core.errors import ConfigError
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import FakeSlack
from tests.processes import RELAYBOT, clean_env, endpoint_env, free_port, run_with_env

# Long enough for slack_sdk to have failed and retried its connection more than once.
WATCH = 4.0


def socket_mode_env(endpoint: FakeOpenAI, api_url: str, app_token: str) -> dict[str, str]:
    return clean_env(
        **endpoint_env(endpoint),
        SLACK_BOT_TOKEN="xoxb-test-bot-token",
        SLACK_APP_TOKEN=app_token,
        SLACK_API_URL=api_url,
        RELAYBOT_HTTP_HOST="127.0.0.1",
        RELAYBOT_HTTP_PORT=str(free_port()),
        RELAYBOT_MODERATION="off",
        RELAYBOT_LOG_FORMAT="text",
    )


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack() as slack:
        yield slack


def readyz_while_starting(proc: subprocess.Popen[bytes], url: str, log: Path) -> list[int]:
    """The /readyz answers over WATCH seconds, from when the HTTP server first answers."""
    seen: list[int] = []
    with httpx.Client(timeout=2) as client:
        deadline = time.monotonic() + 60
        while not seen:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                seen.append(client.get(url + "/readyz").status_code)
            except httpx.TransportError:
                time.sleep(0.1)  # the process is starting: nothing to wait on but time
        until = time.monotonic() + WATCH
        while time.monotonic() < until:
            assert proc.poll() is None, log.read_text()[-3000:]
            response = client.get(url + "/readyz")
            seen.append(response.status_code)
            if response.status_code != 200:
                assert "slack" in response.json()["reason"]
            time.sleep(0.2)
    return seen


@pytest.mark.parametrize(
    "sig,slack_is",
    [(signal.SIGTERM, "unreachable"), (signal.SIGINT, "failing")],
    ids=["SIGTERM-unreachable", "SIGINT-failing"],
)
def test_socket_mode_that_cannot_connect_is_not_ready_and_stops_when_told(
    endpoint: FakeOpenAI,
    fake_slack: FakeSlack,
    tmp_path: Path,
    sig: signal.Signals,
    slack_is: str,
) -> None:
    if slack_is == "unreachable":  # nothing listens there
        env = socket_mode_env(endpoint, f"http://127.0.0.1:{free_port()}/api/", "xapp-1-A1-2-x")
    else:  # Slack's own trouble: apps.connections.open answers 503, every time
        fake_slack.fail_next("apps.connections.open", "service_unavailable", status=503, times=99)
        env = socket_mode_env(endpoint, fake_slack.api_url, fake_slack.app_token)
    url = f"http://127.0.0.1:{env['RELAYBOT_HTTP_PORT']}"
    log = tmp_path / "relaybot.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [RELAYBOT, "run"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        seen = readyz_while_starting(proc, url, log)
        assert 200 not in seen, f"/readyz said ready while Slack was not connected: {seen}"
        assert set(seen) == {503}
        told = time.monotonic()
        logged = len(log.read_text())
        proc.send_signal(sig)
        code = proc.wait(15)
        took = time.monotonic() - told
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert code == 0, output[-3000:]
    assert took < 5, f"took {took:.1f} s to stop"
    # A clean stop. (slack_sdk logs each failed attempt to connect, with its traceback.)
    assert "Traceback" not in output[logged:], output[logged:][-3000:]
    assert "stopping before start-up finished (not started: slack)" in output[logged:]


def no_migrate_env(endpoint: FakeOpenAI, slack: FakeSlack, database_url: str) -> dict[str, str]:
    return clean_env(
        **endpoint_env(endpoint),
        SLACK_BOT_TOKEN=slack.bot_token,
        SLACK_SIGNING_SECRET="a-signing-secret",
        SLACK_API_URL=slack.api_url,
        RELAYBOT_DATABASE_URL=database_url,
        RELAYBOT_HTTP_HOST="127.0.0.1",
        RELAYBOT_HTTP_PORT=str(free_port()),
        RELAYBOT_MODERATION="off",
        RELAYBOT_LOG_FORMAT="text",
    )


NOT_MIGRATED = "relaybot: the database has no relaybot tables yet; run `relaybot db upgrade`"


@pytest.mark.empty_database
async def test_no_migrate_on_a_database_never_migrated_is_one_line_saying_what_to_run(
    endpoint: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, database_url: str
) -> None:
    env = no_migrate_env(endpoint, fake_slack, database_url)
    result = await asyncio.to_thread(run_with_env, ["--no-migrate", "run"], tmp_path, env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1] == NOT_MIGRATED
    # Nothing was started: no HTTP server, no platform.
    assert "HTTP server on" not in result.stderr
    # Nothing was created: the database is left as it was.
    check = await asyncio.to_thread(run_with_env, ["db", "current"], tmp_path, env)
    assert check.stdout.startswith("empty"), check.stdout + check.stderr


@pytest.mark.parametrize("command", ["run", "console"])
def test_no_migrate_on_a_database_never_migrated_shows_no_sql_error(
    endpoint: FakeOpenAI, fake_slack: FakeSlack, tmp_path: Path, command: str
) -> None:
    # Maintenance (retention, counters) and the console's own start query the tables too:
    # the check comes before them all (bots/cli.py asks migrate.require_migrated as well).
    env = no_migrate_env(endpoint, fake_slack, f"sqlite+aiosqlite:///{tmp_path / 'new.db'}")
    result = run_with_env(["--no-migrate", command], tmp_path, env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr == NOT_MIGRATED + "\n"


@pytest.mark.empty_database
async def test_the_runner_itself_refuses_a_database_never_migrated(
    settings: Settings, tmp_path: Path
) -> None:
    # For a program that embeds the runner (the CLI checks before it too): nothing starts.
    port = free_port()
    settings = settings.model_copy(
        update={"http_host": "127.0.0.1", "http_port": port, "slack_bot_token": None}
    )
    async with open_core(settings, migrate_db=False) as core:
        with pytest.raises(ConfigError) as err:
            await run_platforms(core, asyncio.Event())
    assert str(err.value) == NOT_MIGRATED.removeprefix("relaybot: ")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # no HTTP server was left listening
