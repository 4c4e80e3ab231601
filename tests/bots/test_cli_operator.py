"""What an operator meets starting and running `relaybot`: wrong settings, a refused token, a
redirecting endpoint, a database that is not there. Each is one line saying what to do,
with no secret in it, and nothing changed that the operator did not ask to change."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.db import migrate
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_telegram import FakeTelegram
from tests.processes import endpoint_env, free_port, run_relaybot

run = run_relaybot

# A token of Telegram's shape that the fake Bot API does not know (it answers 401).
WRONG_TOKEN = "7012345678:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"


@pytest.fixture
def telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram() as server:
        yield server


def one_line(text: str) -> str:
    assert text.count("\n") == 1 and text.endswith("\n"), text
    assert "Traceback" not in text
    return text.strip()


def migrated(path: Path) -> str:
    url = f"sqlite+aiosqlite:///{path}"
    result = run(["db", "upgrade"], path.parent, RELAYBOT_DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    return url


# -- 2. a Telegram token the Bot API refuses ---------------------------------------------------
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_rejected_telegram_token_is_never_printed_and_the_line_says_what_to_do(
    endpoint: FakeOpenAI, telegram: FakeTelegram, tmp_path: Path, fmt: str
) -> None:
    env = {
        **endpoint_env(endpoint),
        "TELEGRAM_BOT_TOKEN": WRONG_TOKEN,
        "TELEGRAM_API_BASE_URL": telegram.api_base_url,
        "TELEGRAM_FILE_BASE_URL": telegram.file_base_url,
        "RELAYBOT_HTTP_HOST": "127.0.0.1",
        "RELAYBOT_HTTP_PORT": str(free_port()),
        "RELAYBOT_LOG_FORMAT": fmt,
    }
    result = run(["run"], tmp_path, **env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert WRONG_TOKEN not in output
    assert WRONG_TOKEN.split(":", 1)[1] not in output
    said = [line for line in result.stderr.splitlines() if line.startswith("relaybot:")]
    assert said == ["relaybot: Telegram rejected TELEGRAM_BOT_TOKEN; check it with @BotFather"]
    # It is the last word: the Bot API connections were closed, no "Unclosed connector".
    assert result.stderr.splitlines()[-1] == said[0]


def test_every_line_the_command_prints_is_redacted(
    endpoint: FakeOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Whatever an unexpected failure says, the configured secrets are not in it."""
    import logging

    from bots import cli

    key = "sk-operator-secret-Zq81xK"
    slack = "xoxb-9-secret-slack"
    password = "pw-Hunter2-db"

    async def boom(settings: object, args: object) -> None:
        raise RuntimeError(f"upstream said: key {key}, token {slack}, password {password}")

    root = logging.getLogger()  # main() sets up logging: put it back afterwards
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)

    for name, value in {
        **endpoint_env(endpoint, key=key),
        "SLACK_BOT_TOKEN": slack,
        "RELAYBOT_DATABASE_URL": f"postgresql+asyncpg://ann:{password}@127.0.0.1:9/x",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(cli.COMMANDS, "usage", boom)
    assert cli.main(["usage"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("relaybot: RuntimeError: upstream said: key [REDACTED], token ")
    assert key not in err and slack not in err and password not in err


# -- 3. RELAYBOT_AUTO_MIGRATE=false --------------------------------------------------------
@pytest.mark.parametrize(
    "args,env",
    [
        (["console"], {"RELAYBOT_AUTO_MIGRATE": "false"}),
        (["run", "--no-migrate"], {}),
        (["--no-migrate", "console"], {}),
    ],
)
def test_a_start_told_not_to_migrate_leaves_the_database_alone_and_says_what_to_run(
    endpoint: FakeOpenAI, tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    db = tmp_path / "fresh.db"
    sqlite3.connect(db).close()  # an empty database, as a new volume's
    env = {**endpoint_env(endpoint), "RELAYBOT_DATABASE_URL": f"sqlite+aiosqlite:///{db}", **env}
    result = run(args, tmp_path, "hi\n", **env)
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert "has no relaybot tables yet; run `relaybot db upgrade`" in line, line
    assert result.stdout == "" and endpoint.chat_requests() == []
    current = run(["db", "current"], tmp_path, **env)
    assert current.stdout.strip() == "empty (no migrations)", current.stderr
    # Left to itself, the same start migrates and answers.
    started = run(args, tmp_path, "hi\n", **{**env, "RELAYBOT_AUTO_MIGRATE": "true"})
    if "--no-migrate" in args:
        assert started.returncode == 2
    else:
        assert started.returncode == 0, started.stderr
        assert started.stdout.splitlines() == ["echo: hi"]


def test_auto_migrate_false_on_a_missing_sqlite_file_does_not_create_it(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    env = {**endpoint_env(endpoint), "RELAYBOT_AUTO_MIGRATE": "false"}
    for args in (["console"], ["run"]):
        result = run(args, tmp_path, "hi\n", **env)
        assert result.returncode == 2
        line = one_line(result.stderr)
        assert line == f"relaybot: {migrate.NOT_MIGRATED}", line
        assert not (tmp_path / "relaybot.db").exists()
    current = run(["db", "current"], tmp_path, **env)
    assert current.returncode == 0
    assert current.stdout == (
        f"empty (the database file {tmp_path / 'relaybot.db'} does not exist)\n"
    )
    assert not (tmp_path / "relaybot.db").exists()


# -- 5. an endpoint that redirects -------------------------------------------------------------
def test_an_endpoint_that_redirects_stops_the_start_naming_where_it_redirects(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    endpoint.redirect_to = "https://llm.example.test/v1"  # as an http -> https redirect
    result = run(["console"], tmp_path, "hi\n", **endpoint_env(endpoint))
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert f"the model endpoint at {endpoint.base_url} redirects to " in line, line
    assert "https://llm.example.test/v1/models" in line
    assert "set OPENAI_BASE_URL to https://llm.example.test/v1" in line
    assert result.stdout == ""
    # A proxy's login page: no base URL to suggest, but where it goes is named.
    endpoint.redirect_to = "https://sso.example.test/login?next="
    result = run(["console"], tmp_path, "hi\n", **endpoint_env(endpoint))
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "redirects to https://sso.example.test/login?next=/models" in line, line
    assert "OPENAI_BASE_URL" in line


# -- 6, 7. settings that cannot work fail every command at once, naming the variable -----------
# Every value each setting refuses is in tests/core/test_config.py (in-process); these few
# show that every command stops on one before doing anything.
BAD_SETTINGS = [
    ("RELAYBOT_LOG_LEVEL", "verbose"),
    ("RELAYBOT_HTTP_PORT", "99999"),
    ("RELAYBOT_MAX_CONNECTIONS", "-1"),
]


@pytest.mark.parametrize("name,value", BAD_SETTINGS)
def test_a_setting_that_cannot_work_is_one_line_naming_it_before_anything_happens(
    endpoint: FakeOpenAI, tmp_path: Path, name: str, value: str
) -> None:
    env = {**endpoint_env(endpoint), name: value}
    for args in (["console"], ["run"], ["db", "upgrade"]):
        result = run(args, tmp_path, "hi\n", timeout=30, **env)
        assert result.returncode == 2, (args, result.stdout + result.stderr)
        line = one_line(result.stderr)
        assert line.startswith(f"relaybot: invalid configuration: {name}: "), line
        assert result.stdout == ""
    assert not (tmp_path / "relaybot.db").exists()  # nothing was migrated
    assert endpoint.requests == []


def test_log_level_and_webhook_secret_take_what_they_should(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    env = {
        **endpoint_env(endpoint),
        "RELAYBOT_LOG_LEVEL": "debug",  # any case
        "TELEGRAM_WEBHOOK_SECRET": "A-z_09-" * 30,  # 210 of Telegram's characters
        "RELAYBOT_HTTP_PORT": "0",
    }
    result = run(["console"], tmp_path, "hi\n", **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["echo: hi"]


def test_invalid_prices_stop_the_start_before_the_database_is_touched(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    env = {**endpoint_env(endpoint), "RELAYBOT_PRICES": "{not json"}
    result = run(["console"], tmp_path, "hi\n", **env)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith("relaybot: RELAYBOT_PRICES is not valid JSON"), line
    assert not (tmp_path / "relaybot.db").exists()


# -- 14. an image folder that cannot be written ------------------------------------------------
def test_image_with_an_unwritable_image_dir_is_refused_before_the_model_is_asked(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    image_dir = blocker / "images"
    env = {**endpoint_env(endpoint), "RELAYBOT_IMAGE_DIR": str(image_dir)}
    result = run(["console"], tmp_path, "/image a red bicycle\nhi\n", **env)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0].startswith(f"! I cannot save images: RELAYBOT_IMAGE_DIR={image_dir} "), out
    assert "set RELAYBOT_IMAGE_DIR to a folder this user can write" in out[0]
    assert out[1:] == ["echo: hi"]
    assert endpoint.calls("/images/generations") == []  # nothing generated, nothing billed
    assert "Traceback" not in result.stderr and "ERROR" not in result.stderr


# -- 15. small things ----------------------------------------------------------------------
def test_export_to_a_folder_that_does_not_exist_names_the_path(tmp_path: Path) -> None:
    url = migrated(tmp_path / "relaybot.db")
    target = tmp_path / "nowhere" / "x.jsonl"
    result = run(["export", "-o", str(target)], tmp_path, RELAYBOT_DATABASE_URL=url)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line == f"relaybot: cannot write {target}: No such file or directory", line


@pytest.mark.parametrize("args", [["usage"], ["export"], ["db", "downgrade"]])
def test_commands_that_only_read_do_not_create_a_mistyped_database_file(
    tmp_path: Path, args: list[str]
) -> None:
    migrated(tmp_path / "relaybot.db")
    typo = tmp_path / "relaybto.db"
    result = run(args, tmp_path, RELAYBOT_DATABASE_URL=f"sqlite+aiosqlite:///{typo}")
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert line.startswith(f"relaybot: the database file {typo} does not exist; "), line
    assert "check RELAYBOT_DATABASE_URL and the working directory" in line
    assert not typo.exists()


def test_db_downgrade_to_base_says_the_database_is_empty(tmp_path: Path) -> None:
    url = migrated(tmp_path / "relaybot.db")
    result = run(["db", "downgrade", "base"], tmp_path, RELAYBOT_DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "database empty (no migrations)"
    assert run(["db", "current"], tmp_path, RELAYBOT_DATABASE_URL=url).stdout.strip() == (
        "empty (no migrations)"
    )
    upgraded = run(["db", "upgrade"], tmp_path, RELAYBOT_DATABASE_URL=url)
    assert upgraded.stdout.strip() == f"database at {migrate.head_revision()}"
