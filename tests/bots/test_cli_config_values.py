"""Values an operator writes slightly wrong, as the real `relaybot` meets them at start: a key
or token with a newline, spaces or quotes around it (docker's --env-file keeps them), a
proxy URL without its scheme, a database password with an @ not encoded, a Bot API URL with
a trailing slash or without /bot, a webhook URL without https://. Each was a traceback-like
error far from the setting (`Forbidden control character detected in headers`, `Unknown
scheme for proxy URL URL('user:secretpw@...')`, `cannot reach the database at ssw0rd@...`,
`Invalid port: '43865[REDACTED]'`, `path should be started with / or be empty`), blamed on
something else, or showed a password. Now it works as meant, or stops in one line naming
the variable, with no secret in it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_telegram import FakeTelegram
from tests.processes import (
    endpoint_env,
    run_relaybot,
    run_until_ready,
)

KEY = "sk-test-config-values-0123"


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram() as server:
        yield server


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
    assert "Traceback" not in stderr
    return stderr.strip()


def telegram_env(telegram: FakeTelegram, endpoint: FakeOpenAI) -> dict[str, str]:
    return {
        **endpoint_env(endpoint, key=KEY),
        "TELEGRAM_BOT_TOKEN": telegram.token,
        "TELEGRAM_API_BASE_URL": telegram.api_base_url,
        "TELEGRAM_FILE_BASE_URL": telegram.file_base_url,
        "RELAYBOT_MODERATION": "off",
    }


# -- 7. secrets with whitespace or quotes around them -----------------------------------------
@pytest.mark.parametrize("written", [f"{KEY}\n", f"  {KEY} ", f'"{KEY}"', f"'{KEY}'\r\n"])
def test_an_api_key_with_a_newline_spaces_or_quotes_around_it_is_used_as_the_key(
    endpoint: FakeOpenAI, tmp_path: Path, written: str
) -> None:
    endpoint.api_key = KEY
    result = run_relaybot(
        ["console"], tmp_path, "hello\n", OPENAI_API_KEY=written, OPENAI_BASE_URL=endpoint.base_url
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: hello\n"


def test_a_bot_token_with_a_newline_after_it_starts_the_bot(
    endpoint: FakeOpenAI, telegram: FakeTelegram, tmp_path: Path
) -> None:
    env = telegram_env(telegram, endpoint)
    endpoint.api_key = KEY
    log = run_until_ready(
        tmp_path,
        **{**env, "TELEGRAM_BOT_TOKEN": f"{telegram.token}\n", "OPENAI_API_KEY": f"{KEY}\n"},
    )
    assert "NetworkError" not in log
    assert telegram.calls("/getMe"), log[-2000:]


# -- 5. the proxy URL and the database password ------------------------------------------------
@pytest.mark.parametrize("command", [["run"], ["console"], ["db", "current"]])
def test_a_proxy_url_without_its_scheme_stops_the_start_naming_it_without_the_password(
    endpoint: FakeOpenAI, tmp_path: Path, command: list[str]
) -> None:
    result = run_relaybot(
        command,
        tmp_path,
        **endpoint_env(endpoint),
        RELAYBOT_HTTP_PROXY="user:secretpw@corp:3128",
    )
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("relaybot: invalid configuration: RELAYBOT_HTTP_PROXY: must start with")
    assert "secretpw" not in line and "corp" not in line


def test_doctor_names_the_proxy_url_without_the_password(tmp_path: Path) -> None:
    result = run_relaybot(["doctor"], tmp_path, RELAYBOT_HTTP_PROXY="user:secretpw@corp:3128")
    assert result.returncode == 1
    assert "secretpw" not in result.stdout + result.stderr
    assert result.stdout.startswith("FAIL  config: invalid configuration: RELAYBOT_HTTP_PROXY:")


def test_a_database_password_with_an_unencoded_at_is_refused_saying_to_write_it_as_percent_40(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    result = run_relaybot(
        ["run"],
        tmp_path,
        **endpoint_env(endpoint),
        RELAYBOT_DATABASE_URL="postgres://relaybot:p@ssw0rd@127.0.0.1:9/db",
    )
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("relaybot: invalid configuration: RELAYBOT_DATABASE_URL: ")
    assert "%40" in line
    assert "ssw0rd" not in line


# -- 8. TELEGRAM_API_BASE_URL ---------------------------------------------------------------
def test_a_bot_api_url_with_a_trailing_slash_starts_the_bot(
    endpoint: FakeOpenAI, telegram: FakeTelegram, tmp_path: Path
) -> None:
    env = telegram_env(telegram, endpoint)
    log = run_until_ready(
        tmp_path, **{**env, "TELEGRAM_API_BASE_URL": telegram.api_base_url + "/"}
    )
    assert "rejected TELEGRAM_BOT_TOKEN" not in log
    assert telegram.calls("/getMe"), log[-2000:]


def test_a_bot_api_url_without_bot_stops_the_start_naming_it(
    endpoint: FakeOpenAI, telegram: FakeTelegram, tmp_path: Path
) -> None:
    env = telegram_env(telegram, endpoint)
    server = telegram.api_base_url.removesuffix("/bot")  # a self-hosted server's address
    result = run_relaybot(["run"], tmp_path, **{**env, "TELEGRAM_API_BASE_URL": server})
    assert result.returncode == 2, result.stderr
    assert one_line(result.stderr) == (
        "relaybot: invalid configuration: TELEGRAM_API_BASE_URL: must end in /bot (the bot "
        "token is appended to it), e.g. https://api.telegram.org/bot, or http://HOST:8081/bot "
        "for a self-hosted Bot API server"
    )
    assert telegram.calls("/getMe") == []


# -- 9. TELEGRAM_WEBHOOK_URL ------------------------------------------------------------------
@pytest.mark.parametrize(
    "url", ["bot.example.com/telegram/webhook", "http://bot.example.com/telegram/webhook"]
)
def test_a_webhook_url_without_https_stops_the_start_naming_it(
    endpoint: FakeOpenAI, tmp_path: Path, url: str
) -> None:
    result = run_relaybot(
        ["run"],
        tmp_path,
        **endpoint_env(endpoint),
        # Telegram's own Bot API (the default TELEGRAM_API_BASE_URL) posts only to https://.
        TELEGRAM_BOT_TOKEN="123456:not-checked-before-this",
        TELEGRAM_WEBHOOK_URL=url,
        RELAYBOT_HTTP_HOST="127.0.0.1",
        RELAYBOT_HTTP_PORT="0",
    )
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("relaybot: invalid configuration: TELEGRAM_WEBHOOK_URL: must ")
    assert "https://bot.example.com/telegram/webhook" in line


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/slack/events"])
def test_a_webhook_url_on_a_path_relaybot_serves_itself_stops_every_command_and_the_doctor(
    endpoint: FakeOpenAI, telegram: FakeTelegram, tmp_path: Path, path: str
) -> None:
    # The start refused it only once the Telegram adapter was being set up, after migrating:
    # `relaybot doctor` said "nothing to fix" for a set-up that could not start.
    env = {
        **telegram_env(telegram, endpoint),
        "TELEGRAM_WEBHOOK_URL": f"https://bot.example.com{path}",
        "RELAYBOT_HTTP_HOST": "127.0.0.1",
        "RELAYBOT_HTTP_PORT": "0",
    }
    said = (
        f"invalid configuration: TELEGRAM_WEBHOOK_URL: its path {path} is one relaybot serves "
        "for something else; end the URL with /telegram/webhook, e.g. "
        "https://bot.example.com/telegram/webhook"
    )
    for command in (["run"], ["db", "upgrade"]):
        result = run_relaybot(command, tmp_path, **env)
        assert result.returncode == 2, result.stderr
        assert one_line(result.stderr) == f"relaybot: {said}"
    doctor = run_relaybot(["doctor"], tmp_path, **env)
    assert doctor.returncode == 1, doctor.stdout
    assert doctor.stdout.startswith(f"FAIL  config: {said} -> "), doctor.stdout
    assert telegram.calls("/getMe") == [] and telegram.calls("/setWebhook") == []
    assert not (tmp_path / "relaybot.db").exists()
