"""`relaybot export --since` with a UTC offset: the instant it names, on every database.

Turns are stored in UTC; SQLite compares clock times without their zone, so a --since of
another zone must be turned into UTC before it is compared (seen exporting the wrong turns).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from core.testing.fake_openai import FakeOpenAI
from tests.processes import endpoint_env, run_relaybot

PLUS_TWO = timezone(timedelta(hours=2))
MINUS_FIVE = timezone(timedelta(hours=-5))


async def relaybot(args: list[str], cwd: Path, stdin: str = "", **env: str) -> str:
    result = await asyncio.to_thread(run_relaybot, args, cwd, stdin, **env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def exported_texts(jsonl: str) -> list[str]:
    lines = [json.loads(line) for line in jsonl.splitlines() if line.strip()]
    return [m["content"] for line in lines for m in line["messages"] if m["role"] == "user"]


async def test_since_with_an_offset_is_the_instant_it_names(
    database_url: str, endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    env = {**endpoint_env(endpoint), "RELAYBOT_DATABASE_URL": database_url}
    before = datetime.now(UTC).replace(microsecond=0)
    assert await relaybot(["console"], tmp_path, "hello there\n", **env) == "echo: hello there\n"
    after = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)

    def since(when: datetime) -> list[str]:
        return ["export", "--since", when.isoformat(timespec="minutes")]

    # Ten minutes before the talk, written east of UTC (its clock reads two hours later).
    early = (before - timedelta(minutes=10)).astimezone(PLUS_TWO)
    assert exported_texts(await relaybot(since(early), tmp_path, **env)) == ["hello there"]
    # Ten minutes after it, written west of UTC (its clock reads five hours earlier).
    late = (after + timedelta(minutes=10)).astimezone(MINUS_FIVE)
    assert exported_texts(await relaybot(since(late), tmp_path, **env)) == []
    # A time without a zone is UTC, as before.
    naive = (before - timedelta(minutes=10)).replace(tzinfo=None)
    assert exported_texts(await relaybot(since(naive), tmp_path, **env)) == ["hello there"]
    naive_late = (after + timedelta(minutes=10)).replace(tzinfo=None)
    assert exported_texts(await relaybot(since(naive_late), tmp_path, **env)) == []
