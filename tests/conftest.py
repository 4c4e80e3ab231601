"""Shared fixtures: the fake OpenAI server and a real core on a real database."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
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


async def _admin(url: str, statement: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of our own on the test server, so parallel test runs never collide."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy.engine import make_url

    def admin(statement: str) -> None:
        # Its own thread and loop: this may be first requested from inside a running loop.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _admin(POSTGRES_URL or "", statement)).result()

    assert POSTGRES_URL
    name = f"relaybot_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=database_params())
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        await reset_postgres(url)
        return url
    return f"sqlite+aiosqlite:///{tmp_path / 'relaybot.db'}"


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
