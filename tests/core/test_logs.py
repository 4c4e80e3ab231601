"""Logs an operator can ship: JSON lines off a terminal, extras kept, content and secrets never."""

from __future__ import annotations

import io
import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import Settings
from core.logs import REDACTED, RedactingFilter, configure_logging, settings_secrets
from core.testing.fake_openai import FakeOpenAI
from tests.processes import run_relaybot

TELEGRAM_TOKEN = "123456789:AAHk3_0mX9dQb8cVfZp1sTqWj7yLrNe4uKo"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines_of(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_off_a_terminal_each_record_is_one_json_object_with_its_extras(
    restore_logging: None,
) -> None:
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    logging.getLogger("relaybot.service").info(
        "handled message", extra={"chat": "telegram:42", "outcome": "done", "ms": 812.5}
    )
    (line,) = lines_of(out)
    entry = json.loads(line)
    assert entry["msg"] == "handled message"
    assert entry["level"] == "INFO" and entry["logger"] == "relaybot.service"
    assert (entry["chat"], entry["outcome"], entry["ms"]) == ("telegram:42", "done", 812.5)
    assert entry["ts"].endswith("+00:00")


def test_on_a_terminal_records_are_readable_lines(restore_logging: None) -> None:
    out = Terminal()
    configure_logging("INFO", stream=out)
    logging.getLogger("relaybot.service").info("handled message", extra={"outcome": "done"})
    (line,) = lines_of(out)
    assert "INFO relaybot.service: handled message outcome=done" in line
    assert not line.startswith("{")


def test_configuring_twice_does_not_double_lines(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    configure_logging("INFO", stream=out)
    logging.getLogger("relaybot").warning("once")
    assert len(lines_of(out)) == 1


@pytest.mark.parametrize(
    "leak",
    [
        "sk-proj-4f9QmZ2xL7vT1bN8kR3wY6pA",
        "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOp",
        "xapp-1-A0B1C2D3E4-12345-abcdef",
        TELEGRAM_TOKEN,
    ],
)
def test_secret_shaped_strings_are_redacted_everywhere(restore_logging: None, leak: str) -> None:
    out = io.StringIO()
    configure_logging("DEBUG", stream=out)
    log = logging.getLogger("relaybot.test")
    telegram = leak[0].isdigit()
    url = f"https://api.telegram.org/bot{leak}/getMe" if telegram else f"https://x.test/?k={leak}"
    log.info("calling %s", url)
    log.info("plain %s", "text", extra={"url": f"https://example.test/?token={leak}"})
    try:
        raise RuntimeError(f"upstream said: bad token {leak}")
    except RuntimeError:
        log.exception("request failed")
    text = out.getvalue()
    assert leak not in text
    assert text.count(REDACTED) >= 3


def test_configured_secrets_are_redacted_even_without_a_known_shape(
    restore_logging: None,
) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key="local-server-key-9931",
        slack_signing_secret="8f14e45fceea167a5a36dedd4bea2543",
        telegram_webhook_secret="webhook-secret-value",
        database_url="postgresql+asyncpg://bot:db-password-77@db/relaybot",
    )
    out = io.StringIO()
    configure_logging("INFO", secrets=settings_secrets(settings), stream=out)
    logging.getLogger("relaybot").warning(
        "key %s secret %s webhook %s dsn %s",
        "local-server-key-9931",
        "8f14e45fceea167a5a36dedd4bea2543",
        "webhook-secret-value",
        "postgresql://bot:db-password-77@db",
    )
    text = out.getvalue()
    for secret in ("local-server-key-9931", "8f14e45f", "webhook-secret-value", "db-password"):
        assert secret not in text
    assert (
        RedactingFilter().redact("Authorization: Bearer abc.def-123")
        == "Authorization: Bearer [REDACTED]"
    )


def test_the_http_client_loggers_stay_quiet_at_debug(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("DEBUG", stream=out)
    # httpx logs request lines and headers at debug; they can hold keys and message text.
    logging.getLogger("httpx").debug("HTTP Request: POST with sk-abc")
    logging.getLogger("httpcore.http11").debug("send_request_headers")
    assert out.getvalue() == ""


# -- a real process ------------------------------------------------------------------------
def console(
    fake: FakeOpenAI, cwd: Path, stdin: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return run_relaybot(
        ["console", "--chat", "ops"], cwd, stdin, **{**env, "OPENAI_BASE_URL": fake.base_url}
    )


def test_a_console_run_logs_one_json_line_per_message_without_content_or_key(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    key = "sk-test-Zq81LmN4pV7xC2rT"
    words = "my pelican prefers marmalade"
    result = console(
        endpoint,
        tmp_path,
        f"{words}\n/reset\n",
        OPENAI_API_KEY=key,
        TELEGRAM_BOT_TOKEN=TELEGRAM_TOKEN,
        RELAYBOT_LOG_LEVEL="INFO",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"echo: {words}"
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    handled = [e for e in entries if e["msg"] == "handled message"]
    assert len(handled) == 2
    assert {e["chat"] for e in handled} == {"console:ops"}
    assert [e["outcome"] for e in handled] == ["done", "done"]
    assert all(isinstance(e["ms"], int | float) for e in handled)
    for secret in (key, TELEGRAM_TOKEN, "pelican", "marmalade"):
        assert secret not in result.stderr


def test_debug_logs_of_a_console_run_carry_no_secret(endpoint: FakeOpenAI, tmp_path: Path) -> None:
    key = "sk-test-Zq81LmN4pV7xC2rT"
    endpoint.api_key = key
    result = console(endpoint, tmp_path, "hello\n", OPENAI_API_KEY=key, RELAYBOT_LOG_LEVEL="DEBUG")
    assert result.returncode == 0, result.stderr
    assert result.stderr  # debug is chatty
    assert key not in result.stderr


@pytest.mark.parametrize(
    "text", ["disk-usage-monitoring", "task-0123456789", "at 12:30:05", "askbot-xoxb"]
)
def test_ordinary_words_are_not_mistaken_for_secrets(text: str) -> None:
    assert RedactingFilter().redact(text) == text
