"""Settings refuse values that cannot work, naming the variable; they take the ones that can."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from core.config import Settings


def settings(**env: str) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[call-arg]


def refused(env: dict[str, str]) -> list[str]:
    """The variables a ValidationError names for `env` (nothing when it is taken)."""
    try:
        settings(**env)
    except ValidationError as exc:
        return [".".join(str(p) for p in err["loc"]).upper() for err in exc.errors()]
    return []


# Every numeric setting: values it must refuse, and the edge values it must take.
NUMERIC: dict[str, tuple[list[str], list[str]]] = {
    "RELAYBOT_REQUEST_TIMEOUT": (["0", "-5", "nan", "inf"], ["0.5", "600"]),
    "RELAYBOT_STREAM_IDLE_TIMEOUT": (["0", "-1", "nan", "inf"], ["1", "3600"]),
    "RELAYBOT_FIRST_TOKEN_TIMEOUT": (["0", "-1", "nan", "inf"], ["1", "3600"]),
    "RELAYBOT_MAX_CONNECTIONS": (["0", "-1"], ["1", "5100"]),
    "RELAYBOT_MAX_RETRIES": (["-1"], ["0", "10"]),
    "RELAYBOT_CONTEXT_TOKENS": (["0", "-1"], ["1", "1000000"]),
    "RELAYBOT_REPLY_TOKENS": (["0", "-1"], ["1", "32000"]),
    "RELAYBOT_MAX_AUDIO_BYTES": (["0", "-1"], ["1", str(25 * 1024 * 1024)]),
    "RELAYBOT_MAX_INPUT_CHARS": (["0", "-1"], ["1", "100000"]),
    "RELAYBOT_BUDGET_USER_DAILY": (["-0.01", "nan", "inf"], ["0", "0.5"]),
    "RELAYBOT_BUDGET_USER_MONTHLY": (["-1", "nan"], ["0", "20"]),
    "RELAYBOT_BUDGET_CHAT_DAILY": (["-1", "nan"], ["0", "5"]),
    "RELAYBOT_BUDGET_CHAT_MONTHLY": (["-1", "inf"], ["0", "5"]),
    "RELAYBOT_BUDGET_GLOBAL_DAILY": (["-1", "nan"], ["0", "100"]),
    "RELAYBOT_BUDGET_GLOBAL_MONTHLY": (["-1", "inf"], ["0", "1000"]),
    "RELAYBOT_RATE_LIMIT_PER_MINUTE": (["-1"], ["0", "60"]),
    "RELAYBOT_RETENTION_DAYS": (["0", "-1", "9999999"], ["1", "36500"]),
    "RELAYBOT_MAX_IN_FLIGHT": (["0", "-1"], ["1", "2000"]),
    "RELAYBOT_HISTORY_CACHE_MB": (["-1", "nan", "inf"], ["0", "64"]),
    "RELAYBOT_DB_POOL_SIZE": (["0", "-1"], ["1", "50"]),
    "RELAYBOT_DB_MAX_OVERFLOW": (["-1"], ["0", "10"]),
    "RELAYBOT_LEASE_SECONDS": (["0", "-1", "nan", "inf", "1e12"], ["0.5", "86400"]),
    "RELAYBOT_SHUTDOWN_GRACE": (["-1", "nan", "inf"], ["0", "25"]),
    "RELAYBOT_HTTP_PORT": (["-1", "65536", "99999"], ["0", "65535"]),
}


def test_every_numeric_setting_is_covered() -> None:
    numeric = {
        name
        for name, field in Settings.model_fields.items()
        if any(t in str(field.annotation) for t in ("int", "float"))
    }
    covered = {name.removeprefix("RELAYBOT_").lower() for name in NUMERIC}
    assert numeric == covered


@pytest.mark.parametrize("name,value", [(n, v) for n, (bad, _) in NUMERIC.items() for v in bad])
def test_a_numeric_setting_that_cannot_work_is_refused_naming_it(name: str, value: str) -> None:
    assert refused({name: value}) == [name]


@pytest.mark.parametrize("name,value", [(n, v) for n, (_, good) in NUMERIC.items() for v in good])
def test_a_numeric_setting_at_its_edges_is_taken(name: str, value: str) -> None:
    assert refused({name: value}) == []


@pytest.mark.parametrize("value", ["verbose", "trace", "10", ""])
def test_a_log_level_python_does_not_know_is_refused(value: str) -> None:
    assert refused({"RELAYBOT_LOG_LEVEL": value or " "}) == ["RELAYBOT_LOG_LEVEL"]


@pytest.mark.parametrize(
    "value,level", [("debug", "DEBUG"), ("Warning", "WARNING"), ("ERROR", "ERROR")]
)
def test_a_log_level_is_taken_in_any_case(value: str, level: str) -> None:
    assert settings(RELAYBOT_LOG_LEVEL=value).log_level == level


@pytest.mark.parametrize("value", ["bad secret!!", "x" * 257, "ümlaut", "a/b", " "])
def test_a_webhook_secret_telegram_would_refuse_is_refused(value: str) -> None:
    assert refused({"TELEGRAM_WEBHOOK_SECRET": value}) == ["TELEGRAM_WEBHOOK_SECRET"]


@pytest.mark.parametrize("value", ["x", "A-z_09", "s" * 256])
def test_a_webhook_secret_of_telegrams_characters_is_taken(value: str) -> None:
    secret: Any = settings(TELEGRAM_WEBHOOK_SECRET=value).telegram_webhook_secret
    assert secret.get_secret_value() == value


def test_the_webhook_secret_is_not_shown_when_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        settings(TELEGRAM_WEBHOOK_SECRET="my secret phrase!")
    assert "my secret phrase" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://ann:hunter2@db.example.com/relaybot",
        "postgresql+psycopg2://ann:hunter2@db/x",
        "relaybot.db",
    ],
)
def test_a_database_url_relaybot_cannot_use_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, openai_api_key="sk-test", database_url=url)  # type: ignore[call-arg]
    said = str(refused.value)
    assert "RELAYBOT_DATABASE_URL" in said or "database_url" in said
    assert "hunter2" not in said
