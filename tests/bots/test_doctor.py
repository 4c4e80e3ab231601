"""`relaybot doctor` as an operator runs it: a real process against fake servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from core.db import migrate
from core.db.store import create_engine
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import FakeSlack
from core.testing.fake_telegram import FakeTelegram
from core.testing.server import FakeServer
from tests.egress_proxy import EgressProxy
from tests.processes import RELAYBOT, run_until_ready

OPENAI_KEY = "sk-test-doctor-Kq2Vn8Rx"
TELEGRAM_TOKEN = "424242424:AAF7cT2qLm9XvB4nR8sW1yZ6pJ3dK5hGfEo"
SLACK_TOKEN = "xoxb-1111-2222-doctorTOKEN"


class FakeBotApi(FakeServer):
    """Just enough of the Telegram Bot API for getMe."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    @property
    def base_url(self) -> str:
        return self.url + "/bot"

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/bot{token}/getMe", self._get_me)

    async def _get_me(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        result = {"id": 424242424, "is_bot": True, "first_name": "Relay", "username": "relay_bot"}
        return web.json_response({"ok": True, "result": result})


@pytest.fixture
def endpoint() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        server.api_key = OPENAI_KEY
        yield server


@pytest.fixture
def telegram() -> Iterator[FakeBotApi]:
    with FakeBotApi(TELEGRAM_TOKEN) as server:
        yield server


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack(bot_token=SLACK_TOKEN) as server:
        yield server


def migrated_sqlite(path: Path) -> str:
    url = f"sqlite+aiosqlite:///{path}"

    async def upgrade() -> None:
        engine = create_engine(url)
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(upgrade())
    return url


@pytest.fixture
def healthy(
    endpoint: FakeOpenAI, telegram: FakeBotApi, slack: FakeSlack, tmp_path: Path
) -> dict[str, str]:
    """The environment of a set-up where everything works."""
    return {
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": endpoint.base_url,
        "RELAYBOT_DATABASE_URL": migrated_sqlite(tmp_path / "relaybot.db"),
        "TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
        "TELEGRAM_API_BASE_URL": telegram.base_url,
        "SLACK_BOT_TOKEN": SLACK_TOKEN,
        "SLACK_SIGNING_SECRET": "0123456789abcdef0123456789abcdef",
        "SLACK_API_URL": slack.api_url,
    }


def doctor(cwd: Path, env: dict[str, str]) -> tuple[int, dict[str, str], str]:
    """Run `relaybot doctor`; (exit code, {check name: its line}, all output)."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAYBOT_", "OPENAI_", "TELEGRAM_", "SLACK_"))
    }
    base.update(env)
    result = subprocess.run(
        [RELAYBOT, "doctor"], capture_output=True, text=True, cwd=cwd, env=base, timeout=120
    )
    lines: dict[str, str] = {}
    for line in result.stdout.splitlines():
        status, rest = line[:4].strip(), line[6:]
        if status in ("OK", "WARN", "FAIL", "SKIP"):
            lines.setdefault(rest.split(":", 1)[0], line)
    return result.returncode, lines, result.stdout + result.stderr


def test_a_healthy_set_up_passes_every_check(healthy: dict[str, str], tmp_path: Path) -> None:
    code, lines, output = doctor(tmp_path, healthy)
    assert code == 0, output
    assert list(lines) == [
        "config",
        "database",
        "model endpoint",
        "telegram",
        "slack",
        "tokenizer",
    ]
    assert all(line.startswith("OK") for line in lines.values()), output
    assert "migrations at head" in lines["database"]
    assert "lists 6 models" in lines["model endpoint"]
    assert "@relay_bot" in lines["telegram"]
    assert "Fake Team" in lines["slack"]
    assert "o200k_base" in lines["tokenizer"]
    assert "relaybot doctor: nothing to fix (6 OK)" in output
    for secret in (OPENAI_KEY, TELEGRAM_TOKEN, SLACK_TOKEN):
        assert secret not in output


def test_platforms_without_tokens_are_skipped(endpoint: FakeOpenAI, tmp_path: Path) -> None:
    env = {
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": endpoint.base_url,
        "RELAYBOT_DATABASE_URL": migrated_sqlite(tmp_path / "relaybot.db"),
    }
    code, lines, output = doctor(tmp_path, env)
    assert code == 0, output
    assert lines["telegram"].startswith("SKIP") and lines["slack"].startswith("SKIP")
    assert "console only" in lines["config"]


def test_an_unreachable_endpoint_fails_and_names_the_setting(
    healthy: dict[str, str], tmp_path: Path
) -> None:
    code, lines, _ = doctor(tmp_path, {**healthy, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert code == 1
    assert lines["model endpoint"].startswith("FAIL")
    assert "cannot reach http://127.0.0.1:9/v1" in lines["model endpoint"]
    assert "OPENAI_BASE_URL" in lines["model endpoint"]
    assert lines["database"].startswith("OK")  # the other checks still ran


def test_a_configured_model_that_cannot_chat_fails_and_names_chat_models(
    healthy: dict[str, str], tmp_path: Path
) -> None:
    code, lines, output = doctor(tmp_path, {**healthy, "RELAYBOT_CHAT_MODEL": "whisper-1"})
    assert code == 1
    line = lines["chat model"]
    assert line.startswith("FAIL") and "whisper-1 is not a chat model (it is for audio)" in line
    assert "RELAYBOT_CHAT_MODEL to one of: gpt-4o, gpt-4o-mini" in output


def test_a_system_prompt_that_fills_the_window_fails_with_the_settings_to_change(
    healthy: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **healthy,
        "RELAYBOT_SYSTEM_PROMPT": "Always answer in rhyme. " * 1000,
        "RELAYBOT_CONTEXT_TOKENS": "4000",
    }
    code, lines, output = doctor(tmp_path, env)
    assert code == 1
    line = lines["system prompt"]
    assert line.startswith("FAIL") and "nothing of gpt-4o-mini's 4,000 is left" in line
    assert "shorten RELAYBOT_SYSTEM_PROMPT or lower RELAYBOT_REPLY_TOKENS" in output


def test_moderation_on_against_a_server_without_it_fails_with_the_fix(
    healthy: dict[str, str], endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    endpoint.missing_endpoints.add("/moderations")  # as Ollama: every message would fail
    code, lines, output = doctor(tmp_path, healthy)
    assert code == 1
    line = lines["moderation"]
    assert line.startswith("FAIL") and "RELAYBOT_MODERATION=both but the endpoint" in line
    assert "set RELAYBOT_MODERATION=off for a server without moderation" in output
    code, lines, _ = doctor(tmp_path, {**healthy, "RELAYBOT_MODERATION": "off"})
    assert code == 0 and "moderation" not in lines


def test_a_rejected_key_fails_without_printing_it(healthy: dict[str, str], tmp_path: Path) -> None:
    wrong = "sk-test-wrong-key-Hy7Tq3"
    code, lines, output = doctor(tmp_path, {**healthy, "OPENAI_API_KEY": wrong})
    assert code == 1
    assert "rejected OPENAI_API_KEY" in lines["model endpoint"]
    assert wrong not in output


def test_an_unmigrated_database_says_to_run_db_upgrade(
    healthy: dict[str, str], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    code, lines, _ = doctor(
        tmp_path, {**healthy, "RELAYBOT_DATABASE_URL": f"sqlite+aiosqlite:///{empty}"}
    )
    assert code == 1
    assert lines["database"].startswith("FAIL")
    assert "never migrated" in lines["database"]
    assert "relaybot db upgrade" in lines["database"]


def test_a_missing_sqlite_file_is_reported_not_created(
    healthy: dict[str, str], tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.db"
    code, lines, _ = doctor(
        tmp_path, {**healthy, "RELAYBOT_DATABASE_URL": f"sqlite+aiosqlite:///{missing}"}
    )
    assert code == 1
    assert "does not exist" in lines["database"]
    assert not missing.exists()


def test_an_old_database_names_both_revisions(healthy: dict[str, str], tmp_path: Path) -> None:
    url = healthy["RELAYBOT_DATABASE_URL"]
    path = url.removeprefix("sqlite+aiosqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0000_old'")
    code, lines, _ = doctor(tmp_path, healthy)
    assert code == 1
    assert "at migration 0000_old, code expects" in lines["database"]


def test_rejected_platform_tokens_fail_with_where_to_get_new_ones(
    healthy: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **healthy,
        "TELEGRAM_BOT_TOKEN": "999999999:AAwrongwrongwrongwrongwrongwrongwro",
        "SLACK_BOT_TOKEN": "xoxb-wrong-token",
    }
    code, lines, output = doctor(tmp_path, env)
    assert code == 1
    assert lines["telegram"].startswith("FAIL") and "@BotFather" in lines["telegram"]
    assert lines["slack"].startswith("FAIL") and "invalid_auth" in lines["slack"]
    assert "wrongwrong" not in output and "xoxb-wrong-token" not in output


def test_missing_tokenizer_files_are_reported(healthy: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "no-tiktoken"
    empty.mkdir()
    # tiktoken would download the files; the proxy on a closed local port makes that fail fast.
    env = {**healthy, "TIKTOKEN_CACHE_DIR": str(empty), "HTTPS_PROXY": "http://127.0.0.1:9"}
    code, lines, _ = doctor(tmp_path, env)
    assert code == 1
    assert lines["tokenizer"].startswith("FAIL")
    assert "TIKTOKEN_CACHE_DIR" in lines["tokenizer"]


def test_invalid_configuration_is_the_first_failure(tmp_path: Path) -> None:
    code, lines, output = doctor(tmp_path, {"RELAYBOT_MODERATION": "sometimes"})
    assert code == 1
    assert lines["config"].startswith("FAIL")
    assert "RELAYBOT_MODERATION" in lines["config"]
    assert "Traceback" not in output


def test_missing_key_and_unsafe_webhook_are_config_failures(
    healthy: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in healthy.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["TELEGRAM_WEBHOOK_URL"] = "https://bot.example.test/telegram/webhook"
    code, _, output = doctor(tmp_path, env)
    assert code == 1
    assert "FAIL  config: OPENAI_API_KEY is not set" in output
    assert "TELEGRAM_WEBHOOK_SECRET" in output


def test_an_image_setting_the_image_model_does_not_take_fails_with_what_it_takes(
    healthy: dict[str, str], tmp_path: Path
) -> None:
    env = {**healthy, "RELAYBOT_IMAGE_QUALITY": "hd"}  # DALL-E's word, retired with it
    code, lines, output = doctor(tmp_path, env)
    assert code == 1
    line = lines["images"]
    assert line.startswith("FAIL")
    assert "RELAYBOT_IMAGE_QUALITY=hd is not a quality gpt-image-1 takes" in line
    assert "one of low, medium, high, auto" in line
    assert "or RELAYBOT_IMAGE_MODEL to a model that takes it" in output
    # A local server's image model is not second-guessed.
    env = {**healthy, "RELAYBOT_IMAGE_MODEL": "sdxl-turbo", "RELAYBOT_IMAGE_SIZE": "768x768"}
    code, lines, output = doctor(tmp_path, env)
    assert code == 0 and "images" not in lines, output


def test_feature_models_the_endpoint_does_not_list_are_warned_with_the_ones_it_does(
    healthy: dict[str, str], endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    endpoint.models = ["gpt-4o-mini", "whisper-1", "gpt-4o-mini-tts"]  # no image model
    env = {**healthy, "RELAYBOT_TRANSCRIBE_MODEL": "gpt-4o-transcribe"}
    code, lines, output = doctor(tmp_path, env)
    assert code == 0, output  # chatting works: warnings, not failures
    transcription = lines["transcription model"]
    assert transcription.startswith("WARN")
    assert "RELAYBOT_TRANSCRIBE_MODEL=gpt-4o-transcribe is not among" in transcription
    assert "voice notes will fail" in transcription
    assert "set RELAYBOT_TRANSCRIBE_MODEL to one of: whisper-1" in output  # not the tts model
    images = lines["image model"]
    assert images.startswith("WARN") and "/image and /edit will fail" in images
    assert "the endpoint lists no model for /image and /edit" in output
    assert "translation model" not in lines  # whisper-1 is listed


def test_privacy_mode_is_warned_about_when_groups_want_every_voice_note(
    healthy: dict[str, str], tmp_path: Path
) -> None:
    env = {**healthy, "RELAYBOT_GROUP_VOICE_TRANSCRIPT_ONLY": "true"}
    code, lines, output = doctor(tmp_path, env)
    assert code == 0, output
    line = lines["telegram"]
    assert line.startswith("WARN") and "privacy mode on" in line
    assert "in @BotFather, /setprivacy, then Disable" in output


@pytest.mark.parametrize(
    "name,value",
    [
        # Every refused value is in tests/core/test_config.py (in-process).
        ("RELAYBOT_LOG_LEVEL", "verbose"),
        ("TELEGRAM_WEBHOOK_SECRET", "bad secret!!"),
        ("RELAYBOT_REQUEST_TIMEOUT", "0"),
    ],
)
def test_a_setting_that_stops_the_start_fails_the_doctor_naming_it(
    healthy: dict[str, str], tmp_path: Path, name: str, value: str
) -> None:
    code, lines, output = doctor(tmp_path, {**healthy, name: value})
    assert code == 1, output
    line = lines["config"]
    assert line.startswith(f"FAIL  config: invalid configuration: {name}: "), output
    assert "nothing to fix" not in output


@pytest.mark.parametrize(
    "prices,said",
    [
        ("{not json", "RELAYBOT_PRICES is not valid JSON"),
        ("/nowhere/prices.json", "RELAYBOT_PRICES: cannot read /nowhere/prices.json"),
    ],
)
def test_a_price_table_that_stops_the_start_fails_the_doctor(
    healthy: dict[str, str], tmp_path: Path, prices: str, said: str
) -> None:
    code, lines, output = doctor(tmp_path, {**healthy, "RELAYBOT_PRICES": prices})
    assert code == 1, output
    assert lines["prices"].startswith(f"FAIL  prices: {said}"), output
    assert "RELAYBOT_PRICES" in lines["prices"].split("->", 1)[1]
    good = '{"llama3.1:8b": {}, "gpt-4o": {"input": 2.5, "output": 10}}'
    code, lines, output = doctor(tmp_path, {**healthy, "RELAYBOT_PRICES": good})
    assert code == 0 and "prices" not in lines, output


def test_an_endpoint_that_redirects_fails_naming_where_it_goes(
    healthy: dict[str, str], endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    endpoint.redirect_to = "https://llm.example.test/v1"  # http -> https
    code, lines, output = doctor(tmp_path, healthy)
    assert code == 1, output
    line = lines["model endpoint"]
    assert line.startswith("FAIL") and "redirects to https://llm.example.test/v1/models" in line
    assert "set OPENAI_BASE_URL to https://llm.example.test/v1" in line


def test_an_image_folder_the_console_cannot_write_fails(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    env = {
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": endpoint.base_url,
        "RELAYBOT_DATABASE_URL": migrated_sqlite(tmp_path / "relaybot.db"),
        "RELAYBOT_IMAGE_DIR": str(blocker / "images"),
    }
    code, lines, output = doctor(tmp_path, env)  # no platform: `relaybot run` is the console
    assert code == 1, output
    line = lines["image folder"]
    assert line.startswith(f"FAIL  image folder: RELAYBOT_IMAGE_DIR={blocker / 'images'}")
    assert "set RELAYBOT_IMAGE_DIR to a folder this user can write" in line
    assert not (blocker / "images").exists()
    # A folder that is not there yet but can be made is fine, and is not made by the doctor.
    env["RELAYBOT_IMAGE_DIR"] = str(tmp_path / "later" / "images")
    code, lines, output = doctor(tmp_path, env)
    assert code == 0 and "image folder" not in lines, output
    assert not (tmp_path / "later").exists()


# -- the platforms, reached as the bot reaches them ------------------------------------------
def test_the_platforms_are_checked_as_the_bot_reaches_them_not_through_the_model_proxy(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    # RELAYBOT_HTTP_PROXY carries model requests alone: behind an egress proxy that lets out
    # only the model provider the bot reaches Telegram and Slack directly, and the doctor
    # says so (it said it could not reach either: the proxy answered 403).
    model = urlsplit(endpoint.base_url).netloc
    with (
        FakeTelegram() as telegram,
        FakeSlack(bot_token=SLACK_TOKEN) as slack,
        EgressProxy({model}) as proxy,
    ):
        env = {
            "OPENAI_API_KEY": OPENAI_KEY,
            "OPENAI_BASE_URL": endpoint.base_url,
            "RELAYBOT_HTTP_PROXY": proxy.url,
            "RELAYBOT_DATABASE_URL": migrated_sqlite(tmp_path / "relaybot.db"),
            "RELAYBOT_MODERATION": "off",
            "RELAYBOT_LOG_FORMAT": "text",
            "TELEGRAM_BOT_TOKEN": telegram.token,
            "TELEGRAM_API_BASE_URL": telegram.api_base_url,
            "TELEGRAM_FILE_BASE_URL": telegram.file_base_url,
            "SLACK_BOT_TOKEN": SLACK_TOKEN,
            "SLACK_SIGNING_SECRET": "0123456789abcdef0123456789abcdef",
            "SLACK_API_URL": slack.api_url,
        }
        run_until_ready(tmp_path, **env)
        assert telegram.calls("/getMe") and slack.api_calls("auth.test")
        code, lines, output = doctor(tmp_path, env)
        assert code == 0, output
        assert lines["model endpoint"].startswith("OK"), output
        assert lines["telegram"].startswith("OK    telegram: bot @"), output
        assert lines["slack"].startswith("OK    slack: bot "), output
        assert proxy.asked_for(model)
        for platform in (telegram.url, slack.url):
            assert not proxy.asked_for(urlsplit(platform).netloc), proxy.seen


def test_slack_is_checked_through_the_environments_proxy_as_slack_sdk_reaches_it(
    healthy: dict[str, str], slack: FakeSlack, telegram: FakeBotApi, tmp_path: Path
) -> None:
    # slack_sdk, the Slack adapter's client, takes HTTPS_PROXY from the environment (and
    # python-telegram-bot's requests no proxy): one that refuses Slack keeps the bot from it.
    with EgressProxy(set()) as proxy:
        code, lines, output = doctor(tmp_path, {**healthy, "HTTPS_PROXY": proxy.url})
    assert code == 1, output
    assert lines["slack"].startswith("FAIL  slack: cannot reach the Slack API at"), output
    assert lines["telegram"].startswith("OK"), output
    assert lines["model endpoint"].startswith("OK"), output
    assert proxy.seen == [f"POST {slack.api_url}auth.test"]
