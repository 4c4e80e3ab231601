"""`relaybot db upgrade` is all or nothing, and migrators started together take turns, on
SQLite as on PostgreSQL.

The sqlite3 driver runs DDL outside any transaction by default: a migration that failed
part-way left tables behind with no recorded revision (every later start: "table chats
already exists"), and several migrators on a new file raced each other.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from core.db import migrate
from core.db.store import create_engine
from tests.processes import RELAYBOT, clean_env, run_relaybot

# Each test migrates a database from nothing itself.
pytestmark = pytest.mark.empty_database

# The name of an index migration 0008 creates: an object of that name already there makes
# the first upgrade fail part-way (after 0001-0007 ran).
CLASHING_INDEX = "ix_inbound_events_waiting"


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def _execute(url: str, *statements: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def test_a_failed_first_upgrade_leaves_nothing_behind_and_the_next_one_works(
    database_url: str, tmp_path: Path
) -> None:
    await _execute(
        database_url,
        "CREATE TABLE operator_notes (note VARCHAR(20))",
        f"CREATE INDEX {CLASHING_INDEX} ON operator_notes (note)",
    )

    failed = run_relaybot(["db", "upgrade"], tmp_path, RELAYBOT_DATABASE_URL=database_url)
    assert failed.returncode != 0, failed.stdout
    assert CLASHING_INDEX in failed.stderr, failed.stderr
    # Rolled back whole: no relaybot table, no recorded revision.
    assert await _tables(database_url) == {"operator_notes"}

    # The operator removes the clash and runs the upgrade again: it starts from scratch.
    await _execute(database_url, f"DROP INDEX {CLASHING_INDEX}")
    again = run_relaybot(["db", "upgrade"], tmp_path, RELAYBOT_DATABASE_URL=database_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"database at {migrate.head_revision()}"
    assert "already exists" not in again.stderr


def test_upgrades_started_together_on_a_new_sqlite_file_all_succeed(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'relaybot.db'}"
    env = clean_env(RELAYBOT_DATABASE_URL=url)
    procs = [
        subprocess.Popen(
            [RELAYBOT, "db", "upgrade"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outcomes = [(proc, *proc.communicate(timeout=120)) for proc in procs]
    for proc, out, err in outcomes:
        assert proc.returncode == 0, err
        assert out.strip() == f"database at {migrate.head_revision()}", err
    current = run_relaybot(["db", "current"], tmp_path, RELAYBOT_DATABASE_URL=url)
    assert current.stdout.strip() == migrate.head_revision(), current.stderr
