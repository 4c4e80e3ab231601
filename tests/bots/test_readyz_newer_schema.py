"""/readyz during a rolling release (README: push the image, run the migration job, roll out).

Once the job has migrated the database, the replicas still running the previous version
work on the newer schema (migrations add), so they must stay ready: a 503 from every one of
them leaves the Service with no endpoint and the platforms' webhooks fail. A database behind
the code still makes a replica not ready.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import text

from core.db import migrate
from core.db.store import create_engine
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import FakeSlack
from tests.processes import RELAYBOT, clean_env, endpoint_env, run_relaybot, wait_ready

NEWER = "0012_next_release"


async def _set_revision(url: str, revision: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE alembic_version SET version_num = :v"), {"v": revision}
            )
    finally:
        await engine.dispose()


@contextmanager
def running(endpoint: FakeOpenAI, tmp_path: Path, database_url: str) -> Iterator[tuple[str, Path]]:
    """`relaybot run` (Slack over HTTP) on `database_url`, ready; yields its URL and log."""
    log = tmp_path / "relaybot.log"
    with FakeSlack() as slack:
        env = clean_env(
            **endpoint_env(endpoint),
            SLACK_BOT_TOKEN=slack.bot_token,
            SLACK_SIGNING_SECRET="a-signing-secret",
            SLACK_API_URL=slack.api_url,
            RELAYBOT_DATABASE_URL=database_url,
            RELAYBOT_HTTP_HOST="127.0.0.1",
            RELAYBOT_HTTP_PORT="0",
            RELAYBOT_MODERATION="off",
            RELAYBOT_LOG_LEVEL="INFO",
            RELAYBOT_LOG_FORMAT="text",
        )
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [RELAYBOT, "run"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            url = wait_ready(proc, "http://127.0.0.1:0", time.monotonic() + 60, log=log.read_text)
            yield url, log
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()[-3000:]


async def test_a_replica_stays_ready_after_the_next_release_migrated_the_database(
    endpoint: FakeOpenAI, tmp_path: Path, database_url: str
) -> None:
    with running(endpoint, tmp_path, database_url) as (url, log):
        # The migration job of the next release ran: the database is one revision ahead.
        await _set_revision(database_url, NEWER)
        async with httpx.AsyncClient(timeout=5) as client:
            answers = [await client.get(url + "/readyz") for _ in range(4)]
        await asyncio.sleep(0.3)
        said = log.read_text()
    for response in answers:
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "ready"}
    # The operator hears of it once, not on every probe.
    warnings = [line for line in said.splitlines() if NEWER in line]
    assert len(warnings) == 1, said[-3000:]
    assert "newer than this code" in warnings[0]
    assert str(migrate.head_revision()) in warnings[0]


async def test_a_database_behind_the_code_is_still_not_ready(
    endpoint: FakeOpenAI, tmp_path: Path, database_url: str
) -> None:
    head = migrate.head_revision()
    older = next(r for r in ("0010", "0009") if r != head and migrate.is_known(r))
    with running(endpoint, tmp_path, database_url) as (url, _log):
        await _set_revision(database_url, older)
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(url + "/readyz")
        await _set_revision(database_url, head or "")  # (so it stops cleanly as it started)
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "reason": f"database at migration {older}, code expects {head}",
    }


async def test_doctor_tells_a_newer_database_from_one_behind(
    endpoint: FakeOpenAI, tmp_path: Path, database_url: str
) -> None:
    env = {**endpoint_env(endpoint), "RELAYBOT_DATABASE_URL": database_url}
    assert run_relaybot(["db", "upgrade"], tmp_path, **env).returncode == 0

    def database_line() -> str:
        result = run_relaybot(["doctor"], tmp_path, **env)
        (line,) = [ln for ln in result.stdout.splitlines() if " database: " in ln]
        return line

    await _set_revision(database_url, NEWER)
    newer = database_line()
    assert newer.startswith("FAIL") and f"at migration {NEWER}, code expects" in newer
    assert "a newer relaybot migrated it" in newer
    assert "db upgrade" not in newer  # (this code cannot upgrade past its own head)

    await _set_revision(database_url, "0010")
    behind = database_line()
    assert "at migration 0010, code expects" in behind
    assert behind.endswith("-> run `relaybot db upgrade` (with the newest code) before starting")


async def test_db_commands_on_a_newer_database_say_so_in_one_line(
    endpoint: FakeOpenAI, tmp_path: Path, database_url: str
) -> None:
    env = {**endpoint_env(endpoint), "RELAYBOT_DATABASE_URL": database_url}
    assert run_relaybot(["db", "upgrade"], tmp_path, **env).returncode == 0
    await _set_revision(database_url, NEWER)
    for action in ("upgrade", "check"):
        result = run_relaybot(["db", action], tmp_path, **env)
        assert result.returncode == 2, result.stderr
        assert result.stderr == (
            f"relaybot: the database is at migration {NEWER}, newer than this relaybot knows "
            f"(its newest is {migrate.head_revision()}): a newer version migrated it; "
            "run that version\n"
        )


async def test_a_replica_of_the_previous_release_restarting_after_the_migration_still_answers(
    endpoint: FakeOpenAI, tmp_path: Path, database_url: str
) -> None:
    # The migration job of the next release ran; an old replica restarts (a crash, a node
    # drained) with RELAYBOT_AUTO_MIGRATE on, as by default: it serves, with a warning.
    env = {**endpoint_env(endpoint), "RELAYBOT_DATABASE_URL": database_url}
    assert run_relaybot(["db", "upgrade"], tmp_path, **env).returncode == 0
    await _set_revision(database_url, NEWER)
    for extra in ([], ["--no-migrate"]):
        result = run_relaybot(
            ["console", *extra], tmp_path, stdin="hi\n", RELAYBOT_MODERATION="off", **env
        )
        assert result.returncode == 0, result.stderr
        assert "echo: hi" in result.stdout
        (warning,) = [line for line in result.stderr.splitlines() if NEWER in line]
        assert "newer than this relaybot knows" in warning and "serving on it" in warning
