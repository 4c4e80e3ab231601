"""A billed model call sent but not answered is recorded at its estimate. When that write
fails (the database locked at that moment), the person is still told what the model did (or
gets the answer, asked again), not "something went wrong"; the operator's log says the cost
went unrecorded, at ERROR, without the person's words or a key. Through the console, on a
real database whose lock another connection holds."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from bots.console import run_console
from core.app import Core, open_core
from core.config import Settings
from core.db.models import Message
from core.testing.fake_openai import FakeOpenAI
from tests.conftest import FIXTURES

UNRECORDED = "could not record the cost of a model call sent but not answered"
KEY = "sk-test-not-a-real-key"  # the settings fixture's


def locks_briefly(settings: Settings) -> Settings:
    """A billed answer (and a stream's first words) is waited for 0.5 s; a statement waits
    0.2 s for a lock on PostgreSQL (the server's lock_timeout, set in the URL)."""
    url = settings.database_url
    if not url.startswith("sqlite"):
        url += "?options=" + quote("-c lock_timeout=200")
    update = {
        "database_url": url,
        "request_timeout": 0.2,
        "first_token_timeout": 0.5,
        "max_retries": 1,
    }
    return settings.model_copy(update=update)


def _short_busy_timeout(conn: Connection) -> None:
    conn.exec_driver_sql("PRAGMA busy_timeout=200")  # relaybot waits 30 s for the lock


def _nothing(conn: Connection) -> None:
    pass


class Told(io.StringIO):
    """The console's output; `event` is set once something is written to it."""

    def __init__(self, event: asyncio.Event) -> None:
        super().__init__()
        self.event = event

    def write(self, text: str) -> int:
        if text:
            self.event.set()
        return super().write(text)


class OnError(logging.Handler):
    """Sets `event` when an ERROR is logged."""

    def __init__(self, event: asyncio.Event) -> None:
        super().__init__(logging.ERROR)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        self.event.set()


@asynccontextmanager
async def lock_usage_when_asked(
    core: Core, fake: FakeOpenAI, path: str, done: asyncio.Event
) -> AsyncIterator[None]:
    """Another connection holds the lock a usage row needs (SQLite: the database's write
    lock, from when the endpoint receives a request to `path`; PostgreSQL: the usage
    table's, from the start) until `done` is set."""
    url = make_url(core.settings.database_url)
    sqlite = url.get_backend_name() == "sqlite"
    if sqlite:
        await core.store.db.run(_short_busy_timeout)
        holder = sqlite3.connect(str(url.database), isolation_level=None)
    else:
        engine = create_async_engine(url.set(query={}))
        conn = await engine.connect()
        transaction = await conn.begin()
        # Nothing before the model call uses the usage table.
        await conn.execute(text("LOCK TABLE usage IN ACCESS EXCLUSIVE MODE"))

    async def hold() -> None:
        if sqlite:
            # SQLite's lock is the whole database's: taken once the request went out, and
            # the person's turn, stored meanwhile, is (the units of relaybot's SQLite thread
            # run in order).
            await fake.wait_for(path, within=30)
            await core.store.db.run(_nothing)
            holder.execute("BEGIN IMMEDIATE")
        await done.wait()
        if sqlite:
            holder.execute("ROLLBACK")
        else:
            await transaction.rollback()

    holding = asyncio.create_task(hold())
    try:
        yield
    finally:
        if not holding.done():
            holding.cancel()
        await asyncio.gather(holding, return_exceptions=True)
        if sqlite:
            holder.close()
        else:
            if transaction.is_active:
                await transaction.rollback()
            await conn.close()
            await engine.dispose()


async def told(
    settings: Settings, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture, line: str, path: str
) -> list[str]:
    """What the console prints for `line`, the usage write of `path`'s request locked out."""
    # Released once the person was told, or the failed write logged (a request made again
    # then goes on with the database free).
    done = asyncio.Event()
    out = Told(done)
    on_error = OnError(done)
    caplog.set_level(logging.INFO, logger="relaybot")
    logging.getLogger("relaybot").addHandler(on_error)
    try:
        async with (
            open_core(locks_briefly(settings)) as core,
            lock_usage_when_asked(core, fake, path, done),
        ):
            stdin = io.StringIO(line + "\n")
            await run_console(core, chat="default", user="you", stdin=stdin, stdout=out)
    finally:
        logging.getLogger("relaybot").removeHandler(on_error)
    return out.getvalue().splitlines()


def unrecorded_logged(caplog: pytest.LogCaptureFixture, words: str) -> None:
    """The operator's log says, once, at ERROR, that the cost went unrecorded, and why; not
    the person's words, nor the key."""
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage().split(" (")[0] for r in errors] == [UNRECORDED], caplog.text
    logged = logging.Formatter().format(errors[0])
    assert "database is locked" in logged or "lock timeout" in logged, logged
    assert KEY not in logged and words not in logged, logged


@pytest.mark.parametrize(
    ("line", "path", "said"),
    [
        (
            "/image a lighthouse-in-fog",
            "/images/generations",
            "! The image service took too long to answer. Please try again in a minute.",
        ),
        (
            f"/edit {FIXTURES / 'square.png'} add a red-hat",
            "/images/edits",
            "! The image service took too long to answer. Please try again in a minute.",
        ),
        (
            f"/voice {FIXTURES / 'voice-note.ogg'}",
            "/audio/transcriptions",
            "! The transcription service took too long to answer. Please try again in a minute.",
        ),
    ],
    ids=["image", "edit", "transcription"],
)
async def test_an_unanswered_billed_call_says_so_when_its_cost_cannot_be_written(
    settings: Settings,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    line: str,
    path: str,
    said: str,
) -> None:
    fake_openai.answer_delays[path] = 1.0
    assert await told(settings, fake_openai, caplog, line, path) == [said]
    assert len(fake_openai.calls(path)) == 1
    unrecorded_logged(caplog, line.split()[-1])


async def test_a_stream_that_never_starts_says_so_when_its_cost_cannot_be_written(
    settings: Settings, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake_openai.think_seconds = 1.0
    out = await told(settings, fake_openai, caplog, "think hard-about-it", "/chat/completions")
    assert len(out) == 1 and out[0].startswith("! The model took too long to start answering.")
    unrecorded_logged(caplog, "hard-about-it")


async def test_an_empty_answer_says_so_when_its_cost_cannot_be_written(
    settings: Settings, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake_openai.queue_reply("")
    fake_openai.think_seconds = 0.2
    out = await told(settings, fake_openai, caplog, "say nothing-at-all", "/chat/completions")
    assert len(out) == 1 and out[0].startswith("! The model sent back an empty answer."), out
    unrecorded_logged(caplog, "nothing-at-all")


async def test_a_stream_cut_before_its_words_is_asked_again_when_its_cost_cannot_be_written(
    settings: Settings, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    # The stream's head comes after 0.2 s, then the connection drops: the client asks again.
    fake_openai.cut_next_streams = 1
    fake_openai.prompt_filter_results = True
    fake_openai.think_seconds = 0.2
    out = await told(settings, fake_openai, caplog, "what is-the-answer", "/chat/completions")
    assert out == ["echo: what is-the-answer"]
    assert len(fake_openai.chat_requests()) == 2
    unrecorded_logged(caplog, "is-the-answer")


async def test_a_request_made_again_for_a_stale_history_goes_on_when_its_cost_cannot_be_written(
    settings: Settings, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    # A turn written by a script into a chat with no chats row: the request, sent while the
    # person's turn was stored, is made again with the history as stored. The first one's
    # answer starts after 0.2 s, and is dropped.
    async with open_core(settings) as core, core.store._session() as session:
        session.add(
            Message(
                chat_key="console:default",
                role="user",
                content="an older turn",
                token_count=4,
                encoding="o200k_base",
            )
        )
        await session.commit()
    fake_openai.think_seconds = 0.2
    out = await told(settings, fake_openai, caplog, "hello there-again", "/chat/completions")
    assert out == ["echo: hello there-again"]
    first, second = fake_openai.chat_requests()
    assert "an older turn" in json.dumps(second) and "an older turn" not in json.dumps(first)
    unrecorded_logged(caplog, "there-again")
