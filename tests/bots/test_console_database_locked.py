"""`relaybot console` while another program holds the SQLite file's write lock.

Seen before: a lock held past the busy timeout made `relaybot console` print
`relaybot: OperationalError: ... database is locked [SQL: INSERT INTO inbound_events ...]`
and exit 1: the typed line was not stored and the lines after it were never read. The
console now says on one line that the message was not stored (send it again) and reads on.
Also: `PRAGMA busy_timeout=10000` overrode the 30 s meant (sqlite3's connect timeout).
"""

from __future__ import annotations

import queue
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection

import core.db.database as database
from core.app import Core
from core.testing.fake_openai import FakeOpenAI
from tests.processes import clean_env, endpoint_env, run_relaybot

# `relaybot console` itself (bots.cli.main, as the console script runs it), its busy timeout
# shortened as for a lock held longer than the 30 s: the test then takes seconds, not a minute.
# Before the fix the timeout was a fixed 10 s (this setting did nothing), so the lock below is
# held up to 11 s: the old console met it too.
CONSOLE = (
    "import sys\n"
    "import core.db.database\n"
    "core.db.database.SQLITE_BUSY_SECONDS = 0.5\n"
    "from bots.cli import main\n"
    "sys.exit(main(['console']))\n"
)


NOT_STORED = (
    "! The database is busy or unreachable, so your message was not stored. "
    "Please send it again.\n"
)


def statuses(db: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        rows = conn.execute("SELECT payload IS NULL, status FROM inbound_events ORDER BY id")
        return [(str(r[0]), r[1]) for r in rows]
    finally:
        conn.close()


def test_a_line_typed_while_the_file_is_locked_is_refused_and_the_console_reads_on(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    db = tmp_path / "relaybot.db"
    first = run_relaybot(["console"], tmp_path, "hello\n", 60, **endpoint_env(endpoint))
    assert first.returncode == 0, first.stderr  # the database exists, migrated
    console = subprocess.Popen(
        [sys.executable, "-c", CONSOLE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=clean_env(**endpoint_env(endpoint)),
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    out: list[str] = []

    def read() -> None:
        assert console.stdout is not None
        for line in console.stdout:
            out.append(line)
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert console.stdin is not None
        console.stdin.write("one\n")
        console.stdin.flush()
        assert lines.get(timeout=30) == "echo: one\n"
        deadline = time.monotonic() + 10
        while statuses(db)[-1][1] != "done":  # its answer stored: the file is idle
            assert time.monotonic() < deadline
            time.sleep(0.05)
        locker = sqlite3.connect(db, timeout=30, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            console.stdin.write("two\n")
            console.stdin.flush()
            try:
                notice = lines.get(timeout=11)  # past the old 10 s busy timeout
            except queue.Empty:
                notice = ""
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        try:
            console.stdin.write("three\n")
            console.stdin.close()
        except BrokenPipeError:
            pass
        console.wait(60)
        reader.join(10)
        err = console.stderr.read() if console.stderr else ""
    finally:
        if console.poll() is None:
            console.kill()
            console.wait(10)
    assert console.returncode == 0, err[-3000:]
    assert notice == NOT_STORED
    assert "".join(out) == f"echo: one\n{NOT_STORED}echo: three\n"
    assert "Traceback" not in err and "INSERT" not in err
    # "two" was not stored (nor asked of the model); every stored message is answered.
    assert [r["messages"][-1]["content"] for r in endpoint.chat_requests()][-2:] == [
        "one",
        "three",
    ]
    assert statuses(db) == [("1", "done")] * 3


async def test_relaybot_waits_the_one_busy_timeout_for_the_sqlite_write_lock(
    core: Core,
) -> None:
    """30 s (SQLITE_BUSY_SECONDS), as sqlite3's connect timeout says; not 10 s."""
    if core.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's own setting")

    def busy_timeout(conn: Connection) -> int:
        return int(conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one())

    assert database.SQLITE_BUSY_SECONDS == 30
    assert await core.store.db.run(busy_timeout) == 30_000
