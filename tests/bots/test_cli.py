"""The `relaybot` command as a person runs it: real processes, real files, the fake endpoint."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from core.db import migrate
from core.testing.fake_openai import FakeOpenAI
from tests.conftest import POSTGRES_URL, reset_postgres
from tests.processes import endpoint_env, free_port, run_relaybot

run = run_relaybot


def test_piped_console_answers_each_line(endpoint: FakeOpenAI, tmp_path: Path) -> None:
    result = run(["console"], tmp_path, "hi\n/reset\n", **endpoint_env(endpoint))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["echo: hi", "History cleared. Let's start over."]
    # Embedded default: a SQLite file in the working directory.
    assert (tmp_path / "relaybot.db").is_file()


def test_a_mistyped_command_is_explained_in_the_chat_without_log_noise(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    result = run(["console"], tmp_path, "/fo\n/image\n", **endpoint_env(endpoint))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "! Unknown command /fo. Send /help to see what I can do.",
        "! Describe the image: /image PROMPT",
    ]
    assert result.stderr == ""


def test_second_run_continues_the_conversation(endpoint: FakeOpenAI, tmp_path: Path) -> None:
    env = endpoint_env(endpoint)
    assert run(["console", "--chat", "work"], tmp_path, "my name is Ada\n", **env).returncode == 0
    result = run(["console", "--chat", "work"], tmp_path, "what is my name?\n", **env)
    assert result.returncode == 0, result.stderr
    last = endpoint.chat_requests()[-1]["messages"]
    assert [m["content"] for m in last[1:]] == [
        "my name is Ada",
        "echo: my name is Ada",
        "what is my name?",
    ]


def test_env_file_is_read(endpoint: FakeOpenAI, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"OPENAI_API_KEY=sk-from-dotenv\nOPENAI_BASE_URL={endpoint.base_url}\n"
        "RELAYBOT_SYSTEM_PROMPT=Speak like a sailor.\n"
    )
    result = run(["console"], tmp_path, "hello\n")
    assert result.returncode == 0, result.stderr
    body = endpoint.chat_requests()[-1]
    assert body["messages"][0]["content"] == "Speak like a sailor."
    assert endpoint.calls("/chat/completions")[-1].headers["Authorization"] == (
        "Bearer sk-from-dotenv"
    )


def test_missing_key_is_one_clear_line(tmp_path: Path) -> None:
    result = run(["console"], tmp_path, "hi\n")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "OPENAI_API_KEY is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_endpoint_is_one_clear_line(tmp_path: Path) -> None:
    env = {"OPENAI_API_KEY": "sk-test-key", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    result = run(["console"], tmp_path, "hi\n", **env)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "cannot reach the model endpoint" in result.stderr
    assert "OPENAI_BASE_URL" in result.stderr
    assert "sk-test-key" not in result.stderr + result.stdout


def test_invalid_setting_is_one_clear_line(endpoint: FakeOpenAI, tmp_path: Path) -> None:
    env = {**endpoint_env(endpoint), "RELAYBOT_MODERATION": "sometimes"}
    result = run(["console"], tmp_path, "hi\n", **env)
    assert result.returncode == 2
    assert "RELAYBOT_MODERATION" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_upgrade_and_current(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    current = run(["db", "current"], tmp_path, RELAYBOT_DATABASE_URL=db)
    assert (
        current.stdout.strip() == f"empty (the database file {tmp_path / 'x.db'} does not exist)"
    )
    assert not (tmp_path / "x.db").exists()  # reading creates nothing
    result = run(["db", "upgrade"], tmp_path, RELAYBOT_DATABASE_URL=db)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"database at {migrate.head_revision()}"
    assert run(["db", "check"], tmp_path, RELAYBOT_DATABASE_URL=db).returncode == 0


def test_no_migrate_leaves_the_database_alone(endpoint: FakeOpenAI, tmp_path: Path) -> None:
    result = run(["--no-migrate", "console"], tmp_path, "hi\n", **endpoint_env(endpoint))
    # Without migrations there are no tables: the person is told, not shown a traceback.
    assert "Traceback" not in result.stderr
    assert result.stderr == (
        "relaybot: the database has no relaybot tables yet; run `relaybot db upgrade`\n"
    )
    assert run(["db", "current"], tmp_path).stdout.startswith("empty")
    assert not (tmp_path / "relaybot.db").exists()


def test_starts_without_tokenizer_files(endpoint: FakeOpenAI, tmp_path: Path) -> None:
    empty = tmp_path / "no-tiktoken"
    empty.mkdir()
    env = {**endpoint_env(endpoint), "TIKTOKEN_CACHE_DIR": str(empty)}
    result = run(["console"], tmp_path, "hello without tokenizer\n", **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "echo: hello without tokenizer"
    assert "TIKTOKEN_CACHE_DIR" in result.stderr


def test_a_base_url_without_v1_is_named_at_start(endpoint: FakeOpenAI, tmp_path: Path) -> None:
    env = endpoint_env(endpoint)
    env["OPENAI_BASE_URL"] = env["OPENAI_BASE_URL"].removesuffix("/v1")  # every path 404s
    result = run(["console"], tmp_path, "hi\n", **env)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "has no /models (HTTP 404)" in result.stderr
    assert f"set OPENAI_BASE_URL={endpoint.base_url}" in result.stderr
    # With moderation off too: tests/bots/test_cli_readme.py.


def test_moderation_on_against_a_server_without_it_stops_the_start_with_the_fix(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    endpoint.missing_endpoints.add("/moderations")  # as Ollama: every message would fail
    result = run(["console"], tmp_path, "hi\n", **endpoint_env(endpoint))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "cannot moderate with omni-moderation-latest" in result.stderr
    assert "set RELAYBOT_MODERATION=off" in result.stderr
    assert endpoint.chat_requests() == []
    ok = run(["console"], tmp_path, "hi\n", **endpoint_env(endpoint), RELAYBOT_MODERATION="off")
    assert ok.returncode == 0 and ok.stdout.splitlines() == ["echo: hi"]


def test_an_image_size_the_model_does_not_make_is_named_at_start(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    env = {**endpoint_env(endpoint), "RELAYBOT_IMAGE_SIZE": "512x512"}  # not for gpt-image-1
    result = run(["console"], tmp_path, "hi\n", **env)
    # Chatting works, so the bot starts; the operator learns before the first /image.
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["echo: hi"]
    assert "/image and /edit will fail: RELAYBOT_IMAGE_SIZE=512x512" in result.stderr
    assert "one of 1024x1024, 1024x1536, 1536x1024, auto" in result.stderr


def test_models_the_endpoint_does_not_serve_are_named_at_start(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    endpoint.models = ["llama3.1:8b"]  # as Ollama: no transcription, translation or images
    result = run(
        ["console"], tmp_path, "hi\n", **endpoint_env(endpoint), RELAYBOT_CHAT_MODEL="llama3.1:8b"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["echo: hi"]
    for warning in (
        "RELAYBOT_TRANSCRIBE_MODEL=gpt-4o-mini-transcribe is not among the endpoint's models: "
        "voice notes will fail",
        "RELAYBOT_TRANSLATE_MODEL=whisper-1 is not among the endpoint's models: /translate "
        "will fail",
        "RELAYBOT_IMAGE_MODEL=gpt-image-1 is not among the endpoint's models: /image and /edit "
        "will fail (the endpoint lists no model for /image and /edit: it will not work there)",
    ):
        assert warning in result.stderr


# -- RELAYBOT_DATABASE_URL as hosting platforms and people write it ----------------------------
def test_a_sqlite_url_without_its_async_driver_is_used_as_meant(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    env = {**endpoint_env(endpoint), "RELAYBOT_DATABASE_URL": "sqlite:///chats.db"}
    result = run(["console"], tmp_path, "hi\n", **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["echo: hi"]
    assert (tmp_path / "chats.db").is_file()
    assert run(["db", "upgrade"], tmp_path, **env).stdout.strip() == (
        f"database at {migrate.head_revision()}"
    )
    doctor = run(["doctor"], tmp_path, **env)
    assert "OK    database: sqlite+aiosqlite:///chats.db reachable" in doctor.stdout


@pytest.mark.skipif(not POSTGRES_URL, reason="RELAYBOT_TEST_POSTGRES_URL unset")
@pytest.mark.parametrize(
    "scheme,query",
    [
        ("postgres", {"sslmode": "disable"}),
        ("postgresql", {"sslmode": "disable"}),
        # Neon's settings (its URLs end in ?sslmode=require&channel_binding=require; the test
        # server has no TLS, so the values a server without it takes).
        ("postgresql", {"sslmode": "prefer", "channel_binding": "prefer"}),
        # libpq's, as people add them: each stopped every connection with a TypeError.
        (
            "postgres",
            {
                "sslmode": "disable",
                "connect_timeout": "10",
                "application_name": "relaybot-hosted",
                "options": "-c statement_timeout=60000",
            },
        ),
    ],
)
async def test_a_postgres_url_as_hosting_platforms_give_it_is_used_as_meant(
    endpoint: FakeOpenAI, tmp_path: Path, postgres_url: str, scheme: str, query: dict[str, str]
) -> None:
    await reset_postgres(postgres_url)
    # As Heroku, Render, Fly.io or Neon hand it out: no driver, libpq's settings.
    url = make_url(postgres_url).set(drivername=scheme).update_query_dict(query)
    env = {
        **endpoint_env(endpoint),
        "RELAYBOT_DATABASE_URL": url.render_as_string(hide_password=False),
    }
    upgraded = await asyncio.to_thread(run, ["db", "upgrade"], tmp_path, **env)
    assert upgraded.returncode == 0, upgraded.stderr
    result = await asyncio.to_thread(run, ["console"], tmp_path, "hi\n", **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["echo: hi"]
    doctor = await asyncio.to_thread(run, ["doctor"], tmp_path, **env)
    assert "OK    database: postgresql+asyncpg://" in doctor.stdout


@pytest.mark.skipif(not POSTGRES_URL, reason="RELAYBOT_TEST_POSTGRES_URL unset")
async def test_a_url_requiring_channel_binding_is_not_used_without_what_it_guards(
    endpoint: FakeOpenAI, tmp_path: Path, postgres_url: str
) -> None:
    # asyncpg has no channel binding; Neon's URLs require it. Instead the server's
    # certificate and name are checked (sslmode=verify-full): a server without TLS, as the
    # test's, is refused as libpq refuses it, never used without the protection asked for.
    query = {"sslmode": "require", "channel_binding": "require"}
    url = make_url(postgres_url).set(drivername="postgresql").update_query_dict(query)
    env = {**endpoint_env(endpoint), "RELAYBOT_DATABASE_URL": url.render_as_string(False)}
    result = await asyncio.to_thread(run, ["db", "upgrade"], tmp_path, **env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    line = result.stderr.strip()
    host = f"{make_url(postgres_url).host}:{make_url(postgres_url).port or 5432}"
    assert line.startswith(f"relaybot: cannot reach the database at {host} ("), line
    assert "SSL" in line and "check RELAYBOT_DATABASE_URL" in line


def test_a_connect_timeout_in_the_url_bounds_the_wait_for_the_database(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    # A server that takes the connection and never answers (asyncpg waits 60 s by default).
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        url = f"postgres://ann:hunter2@127.0.0.1:{port}/relaybot?sslmode=disable&connect_timeout=2"
        env = {**endpoint_env(endpoint), "RELAYBOT_DATABASE_URL": url}
        began = time.monotonic()
        result = run(["db", "current"], tmp_path, **env)
        took = time.monotonic() - began
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith(f"relaybot: cannot reach the database at 127.0.0.1:{port} ("), line
    assert "check RELAYBOT_DATABASE_URL" in line and "hunter2" not in line
    assert took < 20


@pytest.mark.parametrize("setting", ["keepalives=1", "sslpassword=hunter3", "dbname=other"])
def test_a_postgres_url_setting_relaybot_cannot_take_is_one_line_naming_it(
    endpoint: FakeOpenAI, tmp_path: Path, setting: str
) -> None:
    url = f"postgres://ann:hunter2@db.example.com/relaybot?sslmode=require&{setting}"
    env = {**endpoint_env(endpoint), "RELAYBOT_DATABASE_URL": url}
    name = setting.partition("=")[0]
    result = run(["console"], tmp_path, "hi\n", **env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        f"relaybot: invalid configuration: RELAYBOT_DATABASE_URL: the URL's ?{name}= is a "
        "setting relaybot's PostgreSQL driver (asyncpg) does not take; remove it from the URL"
    )
    assert "hunter" not in result.stderr
    doctor = run(["doctor"], tmp_path, **env)
    assert f"FAIL  config: invalid configuration: RELAYBOT_DATABASE_URL: the URL's ?{name}=" in (
        doctor.stdout
    )
    assert "hunter" not in doctor.stdout


@pytest.mark.parametrize(
    "url",
    [
        "mysql://ann:hunter2@db.example.com/relaybot",
        "relaybot.db",
    ],
)
def test_a_database_url_relaybot_cannot_use_is_one_line_naming_the_variable(
    endpoint: FakeOpenAI, tmp_path: Path, url: str
) -> None:
    env = {**endpoint_env(endpoint), "RELAYBOT_DATABASE_URL": url}
    for args in (["console"], ["db", "upgrade"]):
        result = run(args, tmp_path, "hi\n", **env)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("relaybot: invalid configuration: RELAYBOT_DATABASE_URL")
        assert "sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST/DB" in (
            result.stderr
        )
        assert "hunter2" not in result.stderr
    doctor = run(["doctor"], tmp_path, **env)
    assert "FAIL  config: invalid configuration: RELAYBOT_DATABASE_URL" in doctor.stdout
    assert "hunter2" not in doctor.stdout
    assert not list(tmp_path.glob("*.db"))


def test_an_unreachable_database_is_one_line_naming_the_variable_and_the_server(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql+asyncpg://ann:hunter2@127.0.0.1:{port}/relaybot"
    env = {**endpoint_env(endpoint), "RELAYBOT_DATABASE_URL": url}
    for args in (["console"], ["db", "upgrade"], ["usage"]):
        result = run(args, tmp_path, "hi\n", **env)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        line = result.stderr.strip()
        assert line.startswith(f"relaybot: cannot reach the database at 127.0.0.1:{port}"), line
        assert "RELAYBOT_DATABASE_URL" in line
        assert "hunter2" not in line
    doctor = run(["doctor"], tmp_path, **env)
    assert f"FAIL  database: postgresql+asyncpg://ann:***@127.0.0.1:{port}/relaybot" in (
        doctor.stdout
    )
    assert "RELAYBOT_DATABASE_URL" in doctor.stdout and "hunter2" not in doctor.stdout
