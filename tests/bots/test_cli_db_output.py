"""`relaybot db ...` prints relaybot's own lines only, for an operator or a script to read:
not what Alembic prints itself ("No new upgrade operations detected.")."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.db import migrate
from tests.processes import run_relaybot

# Each test migrates a database from nothing itself.
pytestmark = pytest.mark.empty_database


async def test_db_commands_print_only_relaybots_lines(database_url: str, tmp_path: Path) -> None:
    head = migrate.head_revision()
    steps = [
        (["db", "upgrade"], f"database at {head}"),
        (["db", "check"], "models and migrations agree"),
        (["db", "current"], head),
        (["db", "downgrade"], None),  # the revision before head
        (["db", "upgrade"], f"database at {head}"),
        (["db", "check"], "models and migrations agree"),
    ]
    for args, said in steps:
        result = run_relaybot(args, tmp_path, RELAYBOT_DATABASE_URL=database_url)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stderr == "", (args, result.stderr)
        if said is None:
            said = result.stdout.strip()
            assert said.startswith("database at ") and said != f"database at {head}", said
        assert result.stdout == f"{said}\n", args
