"""The database becomes unavailable while an answer streams, and comes back.

Seen before: PostgreSQL stopped for a few seconds (or another program held the SQLite file's
write lock past the busy timeout) while an answer streamed. The person saw the whole answer,
then "Something went wrong. Please try again."; storing it had been tried once, closing its
event failed too, and once the database was back the sweep answered the same question again
(a second model call, billed twice). The answer the person saw is now kept in memory and
stored once the database is back; its event is closed once, never answered again, and the
chat's next message waits its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pwd
import shutil
import sqlite3
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select

import core.db.database
from core.app import Core, open_core
from core.config import Settings
from core.db.models import InboundEvent, Message
from core.ports import ReplySink
from core.testing.fake_openai import FakeOpenAI
from core.testing.sink import RecordingSink
from core.types import ChatRef, IncomingMessage, Sender
from tests.conftest import settings_for
from tests.processes import free_port

ANSWER = "the one answer to the question"
_ids = itertools.count(1)


def message(text: str) -> IncomingMessage:
    return IncomingMessage(
        chat=ChatRef("test", "c1"),
        sender=Sender("u1", "Alice"),
        event_key=f"test:outage:{next(_ids)}",
        text=text,
    )


class SinkRestorer:
    """What `relaybot run`'s sweep would resume, into one recording sink."""

    def __init__(self, sink: RecordingSink) -> None:
        self.sink = sink

    def restore(self, msg: IncomingMessage) -> tuple[IncomingMessage, ReplySink] | None:
        return msg, self.sink


async def until(condition: Callable[[], object], within: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def stored(core: Core) -> tuple[list[str], list[tuple[str, str]]]:
    """The events' statuses and the history's (role, content), in order."""
    async with core.engine.connect() as conn:
        events = await conn.execute(select(InboundEvent.status).order_by(InboundEvent.id))
        turns = await conn.execute(select(Message.role, Message.content).order_by(Message.id))
        return [r[0] for r in events], [(r[0], r[1]) for r in turns]


Outage = Callable[[], Awaitable[None]]


def _short_busy_timeout(conn: Connection) -> None:
    conn.exec_driver_sql("PRAGMA busy_timeout=300")


async def answered_once_across_an_outage(
    settings: Settings,
    fake: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    begin: Outage,
    end: Outage,
) -> None:
    """An answer streams, the database goes away before it is stored, then comes back."""
    caplog.set_level(logging.INFO)
    async with open_core(settings) as core:
        if core.engine.dialect.name == "sqlite":  # the thread's one connection, already open
            await core.store.db.run(_short_busy_timeout)
        sink = RecordingSink()
        fake.chunk_delay = 0.15
        fake.queue_reply(ANSWER)
        first = await core.service.submit(message("question"), sink)
        second = await core.service.submit(message("next one"), sink)  # waits its turn
        assert first is not None and second is not None
        await until(lambda: sink.streams and sink.streams[0].deltas)
        await begin()
        await until(lambda: sink.shown)  # the whole answer, shown during the outage
        await asyncio.sleep(1.5)
        # Kept, not failed: the person is told nothing more, the chat's next one waits.
        assert sink.shown == [("answer", ANSWER)]
        assert not first.done() and not second.done()
        await end()
        await asyncio.wait_for(asyncio.gather(first, second), 20)
        fake.chunk_delay = 0
        assert sink.shown == [("answer", ANSWER), ("answer", "echo: next one")]
        # What `relaybot run`'s sweep does once the claims could have run out: nothing.
        await asyncio.sleep(settings.lease_seconds + 0.5)
        assert await core.service.resume({"test": SinkRestorer(sink)}) == 0
        await core.service.drain()
        assert len(fake.chat_requests()) == 2  # each question asked (and billed) once
        statuses, turns = await stored(core)
    assert statuses == ["done", "done"]
    assert turns == [
        ("user", "question"),
        ("assistant", ANSWER),
        ("user", "next one"),
        ("assistant", "echo: next one"),
    ]
    said = [r for r in caplog.records if "database is unavailable" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING  # once per outage
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert ANSWER not in caplog.text and "question" not in caplog.text


# -- SQLite: another program holds the file's write lock ------------------------------------
class FileLock:
    """Another program's write transaction on a SQLite file, from `take` until `give`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._taken = threading.Event()
        self._give = threading.Event()
        self._thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            self._taken.set()
            self._give.wait(60)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    async def take(self) -> None:
        self._thread.start()
        assert await asyncio.to_thread(self._taken.wait, 10)

    async def give(self) -> None:
        self._give.set()
        await asyncio.to_thread(self._thread.join, 10)


@pytest.fixture
def sqlite_settings(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    # relaybot waits SQLITE_BUSY_SECONDS (30 s) for the lock: shorter here, as for a longer lock.
    monkeypatch.setattr(core.db.database, "SQLITE_BUSY_SECONDS", 0.3, raising=False)
    url = f"sqlite+aiosqlite:///{tmp_path / 'relaybot.db'}"
    return settings_for(url, fake_openai, tmp_path, lease_seconds=2)


async def test_an_answer_made_while_the_sqlite_file_is_locked_is_stored_once_it_is_free(
    sqlite_settings: Settings,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lock = FileLock(tmp_path / "relaybot.db")
    await answered_once_across_an_outage(
        sqlite_settings, fake_openai, caplog, lock.take, lock.give
    )


async def test_stopping_while_an_answer_waits_for_the_database_leaves_it_open_and_says_so(
    sqlite_settings: Settings,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGTERM past the grace while the database is still unavailable: the wait ends, the
    event stays open for the next process (as any unfinished one), and the log says so once."""
    lock = FileLock(tmp_path / "relaybot.db")
    async with open_core(sqlite_settings) as opened:
        await opened.store.db.run(_short_busy_timeout)
        sink = RecordingSink()
        fake_openai.chunk_delay = 0.15
        fake_openai.queue_reply(ANSWER)
        job = await opened.service.submit(message("question"), sink)
        assert job is not None
        await until(lambda: sink.streams and sink.streams[0].deltas)
        await lock.take()
        try:
            await until(lambda: sink.shown)
            await asyncio.sleep(0.5)
            released = await asyncio.wait_for(opened.service.shutdown(grace=0.3), 10)
        finally:
            await lock.give()
        assert released == 1 and job.cancelled()
        assert sink.shown == [("answer", ANSWER)]
        statuses, turns = await stored(opened)
    assert statuses == ["received"]  # the next start answers it
    assert turns == [("user", "question")]
    stopped = [r for r in caplog.records if "stopped while the database" in r.getMessage()]
    assert len(stopped) == 1 and stopped[0].levelno == logging.ERROR


async def test_an_answer_stored_whose_reply_was_lost_is_not_stored_twice(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """The database stored the answer and closed its event, then the connection dropped
    before saying so: the next try finds it stored (one answer, one bill)."""
    async with open_core(settings) as opened:
        store = opened.service.store
        real = store.append_messages
        lost: list[int] = []

        async def reply_lost(*args: Any, **kwargs: Any) -> Any:
            appended = await real(*args, **kwargs)
            if kwargs.get("close_event") and not lost:
                lost.append(1)
                raise ConnectionResetError("connection lost after the commit")
            return appended

        store.append_messages = reply_lost  # type: ignore[method-assign]
        sink = RecordingSink()
        assert await opened.service.handle(message("question"), sink)
        assert await opened.service.handle(message("next one"), sink)
        statuses, turns = await stored(opened)
    assert sink.texts == ["echo: question", "echo: next one"]
    assert statuses == ["done", "done"]
    assert turns == [
        ("user", "question"),
        ("assistant", "echo: question"),
        ("user", "next one"),
        ("assistant", "echo: next one"),
    ]


# -- PostgreSQL: a server of the test's own is stopped, then started again -------------------
def _pg_bin() -> Path | None:
    """The directory holding initdb and pg_ctl (PATH, or Debian's versioned directory)."""
    found = shutil.which("pg_ctl")
    candidates = [Path(found).parent] if found else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


class PrivateServer:
    """A PostgreSQL server of this test's own (the shared one is never stopped)."""

    def __init__(self, bin_dir: Path, home: Path, as_user: list[str]) -> None:
        self.bin = bin_dir
        self.data = home / "data"
        self.home = home
        self.as_user = as_user
        self.port = free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust")

    def ctl(self, *args: str) -> None:
        options = (
            f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.home / "log"), "-w", *args,
        )  # fmt: skip

    async def stop(self) -> None:
        await asyncio.to_thread(self.ctl, "stop", "-m", "fast")

    async def start(self) -> None:
        await asyncio.to_thread(self.ctl, "start")


@pytest.fixture
def private_postgres() -> Iterator[PrivateServer]:
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("initdb and pg_ctl not found")
    home = Path(tempfile.mkdtemp(prefix="relaybot-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        runuser = shutil.which("runuser")
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            owner = None
        if runuser is None or owner is None:
            shutil.rmtree(home, ignore_errors=True)
            pytest.skip("running as root with no postgres user to run the server as")
        os.chown(home, owner.pw_uid, owner.pw_gid)
        as_user = [runuser, "-u", "postgres", "--"]
    server = PrivateServer(bin_dir, home, as_user)
    try:
        server.init()
        server.ctl("start")
    except (OSError, subprocess.SubprocessError) as err:
        shutil.rmtree(home, ignore_errors=True)
        pytest.skip(f"could not start a private PostgreSQL server: {err}")
    try:
        yield server
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            server.ctl("stop", "-m", "immediate")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
async def postgres_settings(
    private_postgres: PrivateServer, fake_openai: FakeOpenAI, tmp_path: Path
) -> AsyncIterator[Settings]:
    yield settings_for(private_postgres.url, fake_openai, tmp_path, lease_seconds=2)


async def test_an_answer_made_while_postgres_restarts_is_stored_once_it_is_back(
    private_postgres: PrivateServer,
    postgres_settings: Settings,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def stop() -> None:
        await private_postgres.stop()

    async def start() -> None:
        await asyncio.sleep(1)  # down a little longer than the lease
        await private_postgres.start()

    await answered_once_across_an_outage(postgres_settings, fake_openai, caplog, stop, start)
