"""Fixtures: real relaybot replicas on PostgreSQL against fakes running in threads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_telegram import FakeTelegram
from tests.conftest import POSTGRES_URL
from tests.reliability.cluster import Cluster, fresh_database


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """The fakes started, an empty migrated database; start replicas with `cluster.start`."""
    if not POSTGRES_URL:
        pytest.skip("replicas share a PostgreSQL database: set RELAYBOT_TEST_POSTGRES_URL")
    url: str = request.getfixturevalue("postgres_url")
    fresh_database(url)
    with FakeTelegram() as telegram, FakeOpenAI() as openai:
        made = Cluster(tmp_path, url, telegram, openai)
        try:
            yield made
        finally:
            made.close()
