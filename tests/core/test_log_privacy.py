"""What the log of a real `relaybot` process holds when the database refuses a write, or at
DEBUG: the error, its type and where it happened; never the words of the message."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from bots.slack.adapter import EVENTS_PATH
from core.db.store import create_engine
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import FakeSlack, event_callback, message_event, signed_request
from tests.processes import RELAYBOT, clean_env, run_relaybot, wait_ready

WORDS = "my-diagnosis-is-QWERTY-confidential"
PROMPT = "always-mention-ZXCVB-my-secret-prompt"


def entries_of(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


async def refuse_writes(url: str) -> None:
    """The database refuses the message's turn and the chat's system prompt, as a full
    disk or a broken constraint would (the refusal names the row on PostgreSQL)."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                for table, column, when in (
                    ("messages", "content", "INSERT"),
                    ("chats", "system_prompt", "INSERT"),
                    ("chats", "system_prompt", "UPDATE"),
                ):
                    await conn.execute(
                        text(
                            f"CREATE TRIGGER refuse_{table}_{when} BEFORE {when} ON {table} "
                            f"WHEN NEW.{column} LIKE '%-%' "
                            "BEGIN SELECT RAISE(ABORT, 'disk trouble'); END"
                        )
                    )
            else:
                for table, column in (("messages", "content"), ("chats", "system_prompt")):
                    await conn.execute(
                        text(
                            f"ALTER TABLE {table} ADD CONSTRAINT refuse "
                            f"CHECK ({column} NOT LIKE '%-%')"
                        )
                    )
    finally:
        await engine.dispose()


async def test_a_refused_write_is_logged_with_its_error_but_not_the_words(
    database_url: str, endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    env = {"RELAYBOT_DATABASE_URL": database_url, "OPENAI_API_KEY": "sk-test-Zq81LmN4pV7xC2rT"}
    migrated = run_relaybot(["db", "upgrade"], tmp_path, **env)
    assert migrated.returncode == 0, migrated.stderr
    await refuse_writes(database_url)

    result = run_relaybot(
        ["console", "--chat", "ops"],
        tmp_path,
        f"{WORDS}\n/system {PROMPT}\n",
        **env,
        OPENAI_BASE_URL=endpoint.base_url,
        RELAYBOT_LOG_LEVEL="INFO",
        RELAYBOT_LOG_FORMAT="json",
    )

    assert WORDS not in result.stderr and "QWERTY" not in result.stderr
    assert PROMPT not in result.stderr and "ZXCVB" not in result.stderr
    errors = [e for e in entries_of(result.stderr) if e["level"] == "ERROR"]
    assert len(errors) == 2, result.stderr
    for error in errors:
        # What the operator needs stays: the error, its type, the frames that raised it.
        exc = error["exc"]
        assert exc.startswith("Traceback (most recent call last):")
        assert 'File "' in exc and "core/db/" in exc
        if "sqlite" in database_url:
            assert "IntegrityError" in exc and "disk trouble" in exc
        else:
            assert 'violates check constraint "refuse"' in exc
            assert "CheckViolationError" in exc and "SQLSTATE 23514" in exc
            assert "Failing row" not in exc


async def test_the_engines_relaybot_makes_keep_values_out_of_their_errors(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE notes (body VARCHAR(5))"))
            await conn.execute(text("CREATE UNIQUE INDEX one_body ON notes (body)"))
        with pytest.raises(DBAPIError) as raised:
            async with engine.begin() as conn:
                statement = text("INSERT INTO notes (body) VALUES (:body)")
                await conn.execute(statement, [{"body": "x"}, {"body": "x"}, {"body": WORDS}])
        assert WORDS not in str(raised.value)
        assert "INSERT INTO notes" in str(raised.value)  # the statement is still named
    finally:
        await engine.dispose()


def test_debug_logs_of_a_slack_conversation_hold_none_of_it(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    """At DEBUG, Slack's client and Bolt would log whole requests and responses: the
    message, the answer, the people in the conversation."""
    slack, signing = FakeSlack(), "slack-signing-secret-xyz"
    event = message_event(channel="D0ALICE", user="U0ALICE", text=WORDS)
    slack.start_in_thread()
    env = clean_env(
        OPENAI_API_KEY="sk-test-Zq81LmN4pV7xC2rT",
        OPENAI_BASE_URL=endpoint.base_url,
        SLACK_BOT_TOKEN=slack.bot_token,
        SLACK_SIGNING_SECRET=signing,
        SLACK_API_URL=slack.api_url,
        RELAYBOT_HTTP_HOST="127.0.0.1",
        RELAYBOT_HTTP_PORT="0",
        RELAYBOT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        RELAYBOT_LOG_FORMAT="json",
        RELAYBOT_LOG_LEVEL="DEBUG",
        RELAYBOT_MODERATION="off",
    )
    log = tmp_path / "log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [RELAYBOT, "run"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = wait_ready(proc, "http://127.0.0.1:0", time.monotonic() + 60, log=log.read_text)
        body, headers = signed_request(signing, event_callback(event, team_id=slack.team_id))
        with httpx.Client(timeout=15) as client:
            assert client.post(url + EVENTS_PATH, content=body, headers=headers).status_code == 200
        deadline = time.monotonic() + 20
        while '"handled message"' not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)
        slack.stop_thread()
    assert any(WORDS in t for t in slack.visible_texts("D0ALICE"))  # it was answered
    out = log.read_text()
    entries = entries_of(out)
    assert any(e["level"] == "DEBUG" for e in entries)  # debug is on
    assert WORDS not in out
    assert slack.bot_token not in out and signing not in out
