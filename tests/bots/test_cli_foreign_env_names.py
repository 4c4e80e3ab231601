"""relaybot reads its settings from their documented names only. Every setting was also read
from its field's bare name (`populate_by_name`): a corporate `http_proxy` sent the model's
traffic to that proxy (NO_PROXY ignored), another program's `LOG_LEVEL=trace` stopped the
start, an undocumented `DATABASE_URL` was silently used. Settings given in code by field
name (`Settings(database_url=...)`) still work."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Settings
from core.testing.fake_openai import FakeOpenAI
from tests.processes import endpoint_env, run_relaybot

# What other programs on the same machine or container set, under relaybot's field names.
FOREIGN = {
    "http_proxy": "http://127.0.0.1:9",  # nothing listens there
    "no_proxy": "127.0.0.1,localhost",
    "LOG_LEVEL": "trace",
    "DATABASE_URL": "postgres://app:pw@127.0.0.1:9/app",
    "ADMINS": "telegram:1",  # no visible effect in the console: checked in code below
    "CHAT_MODEL": "llama3",
    "MODERATION": "sometimes",
}
ALONE = [
    {"http_proxy": FOREIGN["http_proxy"], "no_proxy": FOREIGN["no_proxy"]},
    {"HTTP_PROXY": FOREIGN["http_proxy"], "NO_PROXY": FOREIGN["no_proxy"]},
    *({name: value} for name, value in FOREIGN.items() if name.isupper() and name != "ADMINS"),
    FOREIGN,
]


@pytest.mark.parametrize("foreign", ALONE, ids=lambda env: "+".join(env))
def test_variables_under_the_fields_bare_names_are_not_read(
    endpoint: FakeOpenAI, tmp_path: Path, foreign: dict[str, str]
) -> None:
    result = run_relaybot(["console"], tmp_path, "hello\n", **endpoint_env(endpoint), **foreign)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: hello\n"
    assert result.stderr == ""
    # The model was reached directly, with the default model, and history went to SQLite.
    assert endpoint.chat_requests()[-1]["model"] == "gpt-4o-mini"
    assert (tmp_path / "relaybot.db").is_file()


def test_a_dotenv_line_under_a_fields_bare_name_is_not_read(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "DATABASE_URL=postgres://app:pw@127.0.0.1:9/app\nlog_level=trace\n"
        f"OPENAI_API_KEY=sk-from-dotenv\nOPENAI_BASE_URL={endpoint.base_url}\n"
    )
    result = run_relaybot(["console"], tmp_path, "hello\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: hello\n"
    assert (tmp_path / "relaybot.db").is_file()


def test_the_documented_names_are_still_read(endpoint: FakeOpenAI, tmp_path: Path) -> None:
    result = run_relaybot(
        ["console"],
        tmp_path,
        "hello\n",
        **endpoint_env(endpoint),
        **FOREIGN,
        RELAYBOT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'named.db'}",
        RELAYBOT_CHAT_MODEL="gpt-4o",
        RELAYBOT_MODERATION="off",
    )
    assert result.returncode == 0, result.stderr
    assert endpoint.chat_requests()[-1]["model"] == "gpt-4o"
    assert endpoint.calls("/moderations") == []
    assert (tmp_path / "named.db").is_file()
    assert not (tmp_path / "relaybot.db").exists()


def test_in_code_a_setting_is_still_given_by_its_field_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in FOREIGN.items():
        monkeypatch.setenv(name, value)
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert defaults.http_proxy is None
    assert defaults.database_url == "sqlite+aiosqlite:///relaybot.db"
    assert (defaults.log_level, defaults.admins) == ("INFO", "")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url="sqlite:///x.db",
        log_level="ERROR",
        http_proxy="http://proxy.example:3128",
        admins="telegram:5",
    )
    assert settings.database_url == "sqlite+aiosqlite:///x.db"
    assert settings.log_level == "ERROR"
    assert settings.http_proxy == "http://proxy.example:3128"
    assert settings.admins == "telegram:5"
