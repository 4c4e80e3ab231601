"""`relaybot export --since` with more days back than the calendar has: one line naming the
value, not Python's OverflowError."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.testing.fake_openai import FakeOpenAI
from tests.processes import endpoint_env, run_relaybot


@pytest.mark.parametrize("since", ["99999999d", "9999999999d", "0001-01-01T00:00+01:00"])
def test_a_since_before_the_year_one_is_one_clear_line(
    endpoint: FakeOpenAI, tmp_path: Path, since: str
) -> None:
    env = {
        **endpoint_env(endpoint),
        "RELAYBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'relaybot.db'}",
    }
    assert run_relaybot(["db", "upgrade"], tmp_path, **env).returncode == 0
    result = run_relaybot(["export", "--since", since], tmp_path, **env)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"relaybot: --since {since!r}: "), result.stderr
    assert "Overflow" not in result.stderr
