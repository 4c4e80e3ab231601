"""Nothing lost, nothing doubled: a real relaybot process killed mid-answer, then restarted."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

from core.testing.fake_openai import FakeOpenAI
from tests.processes import endpoint_env, start_relaybot
from tests.processes import run_relaybot as run


def history(db: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT role, content, status FROM messages ORDER BY id").fetchall()


def events(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT event_key, status FROM inbound_events ORDER BY id").fetchall()


def test_killed_mid_stream_the_answer_comes_after_restart(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    endpoint.chunk_delay = 0.3
    endpoint.queue_reply("once upon a time there was a bot that never lost a message")
    proc = start_relaybot(["console"], tmp_path, **endpoint_env(endpoint))
    try:
        assert proc.stdin is not None
        proc.stdin.write("tell me a story\n")
        proc.stdin.flush()
        endpoint.wait_sync("/chat/completions", within=30)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    db = tmp_path / "relaybot.db"
    assert [status for _, status in events(db)] == ["received"]

    endpoint.chunk_delay = 0
    result = run(["console"], tmp_path, "", **endpoint_env(endpoint))
    assert result.returncode == 0, result.stderr
    # The restarted process answers the message the killed one had taken.
    assert result.stdout.strip() == "echo: tell me a story"
    assert history(db) == [
        ("user", "tell me a story", "ok"),
        ("assistant", "echo: tell me a story", "ok"),
    ]
    assert [status for _, status in events(db)] == ["done"]
    first, second = endpoint.chat_requests()
    assert first["messages"] == second["messages"]

    # A third start has nothing left to do: nothing is answered twice.
    again = run(["console"], tmp_path, "", **endpoint_env(endpoint))
    assert again.stdout == ""
    assert len(endpoint.chat_requests()) == 2
