"""One relaybot process per SQLite file.

Seen before: a second `relaybot console` started on the file a first one was answering from
resumed the first one's answer in progress (SQLite's start-up resumes every open message, as
if it were alone): the same question was answered, and billed, twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.app import Core
from core.testing.fake_openai import FakeOpenAI
from tests.processes import endpoint_env, start_relaybot
from tests.processes import run_relaybot as run

IN_USE = (
    "relaybot: another relaybot process is using relaybot.db: one process per SQLite file; "
    "use PostgreSQL for several\n"
)


def test_a_second_console_on_the_same_sqlite_file_is_refused_and_answers_nothing(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    endpoint.chunk_delay = 0.2
    endpoint.queue_reply("a long answer that takes its time to arrive word by word")
    first = start_relaybot(["console"], tmp_path, **endpoint_env(endpoint))
    try:
        assert first.stdin is not None
        first.stdin.write("tell me a story\n")
        first.stdin.flush()
        endpoint.wait_sync("/chat/completions", within=30)  # the answer is on its way

        second = run(["console"], tmp_path, "hello\n", **endpoint_env(endpoint))

        assert second.returncode == 2
        assert second.stderr == IN_USE
        assert second.stdout == ""
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert first.returncode == 0, err
    assert out == "a long answer that takes its time to arrive word by word\n"
    # One question, asked of the model once.
    assert len(endpoint.chat_requests()) == 1

    # Once the first console has ended the file is free again.
    again = run(["console"], tmp_path, "hello\n", **endpoint_env(endpoint))
    assert again.returncode == 0, again.stderr
    assert again.stdout == "echo: hello\n"


async def test_a_process_is_refused_a_sqlite_file_this_one_has_open(
    core: Core, endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    url = core.settings.database_url
    if core.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL serves several processes")
    result = await asyncio.to_thread(
        run, ["console"], tmp_path, "hello\n", RELAYBOT_DATABASE_URL=url, **endpoint_env(endpoint)
    )

    assert result.returncode == 2
    assert "another relaybot process is using" in result.stderr
    assert not endpoint.chat_requests()


def test_in_memory_sqlite_takes_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.app import lock_sqlite_file

    monkeypatch.chdir(tmp_path)
    for url in ("sqlite+aiosqlite:///:memory:", "sqlite+aiosqlite://"):
        assert lock_sqlite_file(url) is None
    assert list(tmp_path.iterdir()) == []
