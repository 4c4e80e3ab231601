"""Fixtures: real relaybot replicas on PostgreSQL against fakes running in threads."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy.engine import make_url

from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import FakeSlack
from core.testing.fake_telegram import FakeTelegram
from tests.conftest import POSTGRES_URL, _admin
from tests.reliability.cluster import Cluster, Slack, Telegram, fresh_database

REPLICAS = 3


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "settings(**fields): Settings fields for the core")


def _run_admin(statement: str) -> None:
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _admin(POSTGRES_URL or "", statement)).result()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Fakes in threads and replicas on a database of their own, shared by the tests here.

    Starting three processes is the slow part, so the scale-out and crash tests share them
    (each uses chats of its own). Their own database: other tests reset `postgres_url`.
    At the end every replica must stop gracefully on SIGTERM.
    """
    if not POSTGRES_URL:
        pytest.skip("replicas share a PostgreSQL database: set RELAYBOT_TEST_POSTGRES_URL")
    name = f"relaybot_replicas_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    _run_admin(f'CREATE DATABASE "{name}"')
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        fresh_database(url)
        with FakeTelegram() as telegram, FakeOpenAI() as openai, FakeSlack() as slack:
            made = Cluster(tmp_path_factory.mktemp("replicas"), url, telegram, openai, slack)
            try:
                yield made
                codes = made.stop_all()
                assert set(codes.values()) <= {0}, (codes, made.logs())
            finally:
                made.close()
    finally:
        _run_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def replicas(cluster: Cluster) -> Cluster:
    """The shared cluster with `REPLICAS` live replicas and the fakes' knobs at rest."""
    cluster.openai.chunk_delay = 0.0
    missing = REPLICAS - len(cluster.live())
    if missing > 0:
        cluster.start(missing)
    return cluster


@pytest.fixture
def telegram(replicas: Cluster) -> Iterator[Telegram]:
    """Telegram's side: delivers updates to the replicas' webhooks, again until acknowledged."""
    made = Telegram(replicas)
    try:
        yield made
    finally:
        made.client.close()


@pytest.fixture
def slack(replicas: Cluster) -> Iterator[Slack]:
    """Slack's side: delivers signed events to the replicas, again until acknowledged."""
    made = Slack(replicas)
    try:
        yield made
    finally:
        made.client.close()
