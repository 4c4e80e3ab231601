"""Values that used to fail later, somewhere else, are taken as meant or refused when the
settings are read, naming the variable and never showing a secret: a key or token with a
newline, spaces or quotes around it; a proxy URL without its scheme; a database password with
an @ not encoded; a Telegram Bot API URL with a trailing slash or without /bot; a webhook URL
without https://."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from core.config import Settings
from core.logs import settings_secrets


def settings(**env: Any) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[call-arg]


def refusal(env: dict[str, str]) -> tuple[list[str], str]:
    """The variables a ValidationError names for `env`, and what it says."""
    with pytest.raises(ValidationError) as caught:
        settings(**env)
    names = [".".join(str(p) for p in err["loc"]).upper() for err in caught.value.errors()]
    return names, str(caught.value)


SECRETS = {
    "OPENAI_API_KEY": "openai_api_key",
    "TELEGRAM_BOT_TOKEN": "telegram_bot_token",
    "TELEGRAM_WEBHOOK_SECRET": "telegram_webhook_secret",
    "SLACK_BOT_TOKEN": "slack_bot_token",
    "SLACK_SIGNING_SECRET": "slack_signing_secret",
    "SLACK_APP_TOKEN": "slack_app_token",
}


# -- secrets --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SECRETS)
@pytest.mark.parametrize(
    "written",
    ["abc_123-XYZ\n", "abc_123-XYZ\r\n", "  abc_123-XYZ\t", '"abc_123-XYZ"', "'abc_123-XYZ'\n"],
)
def test_a_secret_is_taken_without_whitespace_or_quotes_around_it(name: str, written: str) -> None:
    value = getattr(settings(**{name: written}), SECRETS[name])
    assert value.get_secret_value() == "abc_123-XYZ"


@pytest.mark.parametrize("name", SECRETS)
@pytest.mark.parametrize("written", [" ", "\n", '""', "' '"])
def test_a_blank_secret_is_refused_naming_it(name: str, written: str) -> None:
    names, said = refusal({name: written})
    assert names == [name]
    assert "is blank" in said


def test_quotes_inside_a_secret_are_kept() -> None:
    key: Any = settings(OPENAI_API_KEY='sk-"inner"-x').openai_api_key
    assert key.get_secret_value() == 'sk-"inner"-x'
    key = settings(OPENAI_API_KEY="\"sk-half'").openai_api_key
    assert key.get_secret_value() == "\"sk-half'"


# -- RELAYBOT_HTTP_PROXY ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "proxy",
    [
        "user:secretpw@corp:3128",
        "corp:3128",
        "ftp://user:secretpw@corp:3128",
        "http://user:secretpw@corp:notaport",
        "http://",
    ],
)
def test_a_proxy_url_httpx_cannot_use_is_refused_without_its_password(proxy: str) -> None:
    names, said = refusal({"RELAYBOT_HTTP_PROXY": proxy})
    assert names == ["RELAYBOT_HTTP_PROXY"]
    assert "must start with http://, https:// or socks5://" in said
    assert "secretpw" not in said and "corp" not in said


@pytest.mark.parametrize(
    "proxy", ["http://corp:3128", "https://user:pw@corp:3128", " HTTP://corp.example:8080/ "]
)
def test_an_http_proxy_url_is_taken(proxy: str) -> None:
    assert settings(RELAYBOT_HTTP_PROXY=proxy).http_proxy == proxy.strip()


def test_the_proxy_password_is_a_secret_for_the_logs() -> None:
    found = settings_secrets(settings(RELAYBOT_HTTP_PROXY="http://ann:s3cret%40pw@corp:3128"))
    assert "s3cret%40pw" in found and "s3cret@pw" in found


# -- RELAYBOT_DATABASE_URL ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "postgres://relaybot:p@ssw0rd@127.0.0.1/db",
        "postgresql+asyncpg://relaybot:p@ssw0rd@db.internal:5432/db?ssl=require",
        "postgres://re@lay:pssw0rd@127.0.0.1/db",
    ],
)
def test_a_database_url_with_an_unencoded_at_is_refused_saying_how_to_write_it(url: str) -> None:
    names, said = refusal({"RELAYBOT_DATABASE_URL": url})
    assert names == ["RELAYBOT_DATABASE_URL"]
    assert "%40" in said
    assert "ssw0rd" not in said


@pytest.mark.parametrize(
    "url,taken",
    [
        ("postgres://relaybot:p%40ssw0rd@127.0.0.1/db", "postgresql+asyncpg://"),
        ("sqlite+aiosqlite:///data/a@b.db", "sqlite+aiosqlite:///data/a@b.db"),
        ("postgresql://relaybot@127.0.0.1/db?host=/run/x@y", "postgresql+asyncpg://"),
    ],
)
def test_a_database_url_with_an_encoded_at_or_one_outside_the_password_is_taken(
    url: str, taken: str
) -> None:
    assert settings(RELAYBOT_DATABASE_URL=url).database_url.startswith(taken)


# -- TELEGRAM_API_BASE_URL, TELEGRAM_FILE_BASE_URL ----------------------------------------------
@pytest.mark.parametrize(
    "name,written,taken",
    [
        ("TELEGRAM_API_BASE_URL", "https://api.telegram.org/bot/", "https://api.telegram.org/bot"),
        ("TELEGRAM_API_BASE_URL", " http://127.0.0.1:8081/bot// ", "http://127.0.0.1:8081/bot"),
        ("TELEGRAM_FILE_BASE_URL", "http://tg.local/file/bot/", "http://tg.local/file/bot"),
    ],
)
def test_a_telegram_base_url_is_taken_without_its_trailing_slash(
    name: str, written: str, taken: str
) -> None:
    field = name.lower()
    assert getattr(settings(**{name: written}), field) == taken


@pytest.mark.parametrize("name", ["TELEGRAM_API_BASE_URL", "TELEGRAM_FILE_BASE_URL"])
@pytest.mark.parametrize(
    "written,says",
    [
        ("http://127.0.0.1:8081", "must end in /bot"),
        ("https://api.telegram.org/", "must end in /bot"),
        ("https://api.telegram.org/bot123:AA", "must end in /bot"),
        ("api.telegram.org/bot", "must start with http:// or https://"),
        ("ftp://api.telegram.org/bot", "must start with http:// or https://"),
    ],
)
def test_a_telegram_base_url_the_token_cannot_be_appended_to_is_refused(
    name: str, written: str, says: str
) -> None:
    names, said = refusal({name: written})
    assert names == [name]
    assert says in said


# -- TELEGRAM_WEBHOOK_URL -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "bot.example.com/telegram/webhook",
        "bot.example.com",
        "http://bot.example.com/telegram/webhook",
        "https://",
        "https://bot.example.com:port/telegram/webhook",
    ],
)
def test_a_webhook_url_telegram_cannot_post_to_is_refused_naming_it(url: str) -> None:
    names, said = refusal({"TELEGRAM_WEBHOOK_URL": url})
    assert names == ["TELEGRAM_WEBHOOK_URL"]
    assert "https://" in said


@pytest.mark.parametrize(
    "env",
    [
        {"TELEGRAM_WEBHOOK_URL": " https://bot.example.com/telegram/webhook "},
        {"TELEGRAM_WEBHOOK_URL": "http://127.0.0.1:8080/telegram/webhook"},
        {"TELEGRAM_WEBHOOK_URL": "http://localhost/telegram/webhook"},
        # A self-hosted Bot API server (--local) posts to http:// URLs too.
        {
            "TELEGRAM_WEBHOOK_URL": "http://relaybot:8080/telegram/webhook",
            "TELEGRAM_API_BASE_URL": "http://telegram-bot-api:8081/bot",
        },
    ],
)
def test_a_webhook_url_telegram_posts_to_is_taken(env: dict[str, str]) -> None:
    taken = settings(**env).telegram_webhook_url
    assert taken == env["TELEGRAM_WEBHOOK_URL"].strip()


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/slack/events"])
def test_a_webhook_url_on_a_path_relaybot_serves_itself_is_refused_naming_it(path: str) -> None:
    names, said = refusal({"TELEGRAM_WEBHOOK_URL": f"https://bot.example.com{path}"})
    assert names == ["TELEGRAM_WEBHOOK_URL"]
    assert f"its path {path} is one relaybot serves for something else" in said
    assert "end the URL with /telegram/webhook" in said
