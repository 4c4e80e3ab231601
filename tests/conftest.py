"""Shared fixtures: the fake OpenAI server and a real core on a real database."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# tiktoken downloads its BPE files; offline we point it at a local, hash-checked copy.
from core.testing.tokenizer import use_offline_tokenizer_files  # noqa: E402

use_offline_tokenizer_files(REPO)

from core.app import Core, open_core  # noqa: E402
from core.config import Settings  # noqa: E402
from core.testing.fake_openai import FakeOpenAI  # noqa: E402

POSTGRES_URL = os.environ.get("RELAYBOT_TEST_POSTGRES_URL")


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # once, in the process that starts the workers
        # The `relaybot` processes tests start read relaybot's own modules from bytecode
        # compiled here: with PYTHONDONTWRITEBYTECODE set (as on CI machines) every start
        # compiled ~40 modules from source again (~60 ms of CPU each start).
        import compileall

        for package in ("core", "bots", "migrations"):
            compileall.compile_dir(REPO / package, quiet=1)
    config.addinivalue_line(
        "markers",
        "empty_database: the database fixture gives a database with no tables at all (the "
        "default is one the migrations took to head, with no rows)",
    )


def database_params() -> list[object]:
    """SQLite always; PostgreSQL when RELAYBOT_TEST_POSTGRES_URL is set."""
    params: list[object] = ["sqlite"]
    params.append(
        pytest.param(
            "postgres",
            marks=pytest.mark.skipif(not POSTGRES_URL, reason="RELAYBOT_TEST_POSTGRES_URL unset"),
        )
    )
    return params


async def reset_postgres(url: str) -> None:
    """Drop every table so each test starts from an empty PostgreSQL database."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()


# What a PostgreSQL test database holds, as one hash: tables, columns, indexes, constraints,
# triggers, functions, table options and the migration it is at. A test that changed any of
# it (a trigger that refuses writes, a downgrade) leaves a different hash, and the next test
# gets the schema made again from nothing.
SCHEMA_FINGERPRINT = """
SELECT md5(coalesce(string_agg(x, E'\\n' ORDER BY x), '')) FROM (
  SELECT 'c ' || table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable
         || ' ' || coalesce(column_default, '') || ' ' || coalesce(collation_name, '') AS x
    FROM information_schema.columns WHERE table_schema = 'public'
  UNION ALL SELECT 'i ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
  UNION ALL SELECT 'k ' || conrelid::regclass::text || ' ' || conname || ' '
         || pg_get_constraintdef(oid)
    FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL SELECT 'r ' || relname || ' ' || relkind::text || ' '
         || coalesce(array_to_string(reloptions, ','), '')
    FROM pg_class WHERE relnamespace = 'public'::regnamespace
  UNION ALL SELECT 't ' || tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
    WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal
  UNION ALL SELECT 'f ' || proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace
  UNION ALL SELECT 'v ' || version_num FROM alembic_version
) s
"""
# The hash of this run's database once migrated to head (set by the first test to migrate).
_migrated_fingerprint: list[str] = []


async def migrated_postgres(url: str) -> None:
    """Make the database what the migrations leave on an empty one: at head, no rows.

    Migrating from nothing takes ~0.1 s of CPU per test; a database already at head with
    the schema the migrations made (the hash above) only has its tables emptied."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.ext.asyncio import create_async_engine

    from core.db import migrate

    engine = create_async_engine(url)
    try:
        try:
            async with engine.connect() as conn:
                found = (await conn.execute(text(SCHEMA_FINGERPRINT))).scalar_one()
        except DBAPIError:  # no alembic_version table
            found = None
        if _migrated_fingerprint and found == _migrated_fingerprint[0]:
            async with engine.begin() as conn:
                tables = await conn.scalars(
                    text(
                        "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = "
                        f"'public' AND tablename <> '{migrate.VERSION_TABLE}'"
                    )
                )
                await conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
            return
        await reset_postgres(url)
        await migrate.upgrade(engine)
        if not _migrated_fingerprint:
            async with engine.connect() as conn:
                _migrated_fingerprint.append(
                    (await conn.execute(text(SCHEMA_FINGERPRINT))).scalar_one()
                )
    finally:
        await engine.dispose()


async def _admin(url: str, statement: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def in_own_loop(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` to its end in a thread and event loop of its own: a session fixture may
    be first requested from inside a test's running loop."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, work).result()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of our own on the test server, so parallel test runs never collide."""
    from sqlalchemy.engine import make_url

    def admin(statement: str) -> None:
        in_own_loop(_admin(POSTGRES_URL or "", statement))

    assert POSTGRES_URL
    name = f"relaybot_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file the migrations took to head, for tests to start from a copy of."""
    from core.db import migrate
    from core.db.store import create_engine

    path = tmp_path_factory.mktemp("migrated") / "relaybot.db"

    async def build() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    in_own_loop(build())
    return path


@pytest.fixture(params=database_params())
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each kind, migrated to head with no rows in it (as the first
    start leaves it); with no tables at all for a test marked `empty_database`."""
    empty = request.node.get_closest_marker("empty_database") is not None
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        await (reset_postgres(url) if empty else migrated_postgres(url))
        return url
    path = tmp_path / "relaybot.db"
    if not empty:
        shutil.copyfile(request.getfixturevalue("migrated_sqlite_file"), path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
def endpoint() -> Iterator[FakeOpenAI]:
    """The fake OpenAI server in its own thread, so a child process can reach it."""
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A fake OpenAI-compatible server on 127.0.0.1, in the test's event loop."""
    async with FakeOpenAI() as server:
        yield server


def settings_for(
    database_url: str, fake_openai: FakeOpenAI, tmp_path: Path, **overrides: Any
) -> Settings:
    """Settings pointing the core at the fake server and `database_url` (and `overrides`)."""
    return Settings(
        _env_file=None,
        openai_api_key="sk-test-not-a-real-key",
        openai_base_url=fake_openai.base_url,
        database_url=database_url,
        image_dir=str(tmp_path / "images"),
        max_retries=1,
        **overrides,
    )


@pytest.fixture
def settings(database_url: str, fake_openai: FakeOpenAI, tmp_path: Path) -> Settings:
    """Settings pointing the core at the fake server and the test database."""
    return settings_for(database_url, fake_openai, tmp_path)


@pytest.fixture
async def core(settings: Settings) -> AsyncIterator[Core]:
    """A real core: migrated database, HTTP client, store and service."""
    async with open_core(settings) as opened:
        yield opened
