"""The app's HTTP server as a load balancer and Prometheus see it: real requests on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from bots.http_server import HttpServer
from core.app import Core, open_core
from core.config import Settings
from core.metrics import Metrics
from core.testing.fake_openai import FakeOpenAI, Messages, echo_reply
from core.testing.sink import RecordingSink
from core.types import ChatRef, IncomingMessage, Sender

_ids = itertools.count(1)


def message(
    text: str, *, platform: str = "telegram", chat: str = "42", key: str = ""
) -> IncomingMessage:
    return IncomingMessage(
        chat=ChatRef(platform, chat),
        sender=Sender("u1", "Ada"),
        event_key=key or f"{platform}:{next(_ids)}",
        text=text,
    )


async def serve(core: Core) -> AsyncIterator[httpx.AsyncClient]:
    server = HttpServer(
        "127.0.0.1", 0, ready_check=core.readiness_problem, metrics=core.service.metrics
    )
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            yield client
    finally:
        await server.stop()


@pytest.fixture
async def http(core: Core) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app's server, backed by a migrated database."""
    async for client in serve(core):
        yield client


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: httpx.AsyncClient) -> Samples:
    """Every sample of /metrics, by (name, labels)."""
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_healthz_answers_while_the_process_runs(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ready_on_a_migrated_database(http: httpx.AsyncClient) -> None:
    response = await http.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


@pytest.mark.empty_database
async def test_readyz_says_why_an_unmigrated_database_is_not_ready(settings: Settings) -> None:
    async with open_core(settings, migrate_db=False) as core:
        async for http in serve(core):
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            body = ready.json()
            assert body["status"] == "unavailable"
            assert body["reason"].startswith("database at migration None, code expects ")
            # Liveness does not depend on the database: restarting would not help.
            assert (await http.get("/healthz")).status_code == 200


async def test_readyz_reports_an_unreachable_database(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key="sk-test-not-a-real-key",
        openai_base_url=fake_openai.base_url,
        database_url=f"sqlite+aiosqlite:///{folder / 'relaybot.db'}",
    )
    async with open_core(settings) as core:
        # The database goes away while the bot runs (its volume unmounted, say).
        shutil.rmtree(folder)
        await core.engine.dispose()
        async for http in serve(core):
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["reason"].startswith("database unreachable: ")


async def test_metrics_count_real_traffic(
    core: Core, http: httpx.AsyncClient, fake_openai: FakeOpenAI
) -> None:
    sink = RecordingSink()
    first = message("hello there")
    assert await core.service.handle(first, sink)
    assert not await core.service.handle(first, sink)  # a redelivery
    assert await core.service.handle(message("/help", platform="slack", chat="C1"), sink)
    fake_openai.fail_next(429, code="insufficient_quota", path="/chat/completions")
    assert await core.service.handle(message("this one fails"), sink)
    assert sink.texts[0] == "echo: hello there"

    samples = await scrape(http)
    assert value(samples, "relaybot_messages_in_total", platform="telegram") == 2
    assert value(samples, "relaybot_messages_in_total", platform="slack") == 1
    assert value(samples, "relaybot_duplicate_events_total", platform="telegram") == 1
    assert value(samples, "relaybot_messages_out_total", platform="telegram", kind="answer") == 1
    assert value(samples, "relaybot_messages_out_total", platform="telegram", kind="error") == 1
    assert value(samples, "relaybot_messages_out_total", platform="slack", kind="notice") == 1
    assert (
        value(samples, "relaybot_messages_handled_total", platform="telegram", outcome="done") == 1
    )
    assert (
        value(samples, "relaybot_messages_handled_total", platform="telegram", outcome="failed")
        == 1
    )
    assert value(samples, "relaybot_errors_total", platform="telegram", kind="QuotaExhausted") == 1
    model = core.settings.chat_model
    # Two chat requests were timed, the failed one included.
    assert value(samples, "relaybot_model_request_seconds_count", kind="chat", model=model) == 2
    prompt = value(
        samples, "relaybot_tokens_total", platform="telegram", model=model, type="prompt"
    )
    completion = value(
        samples, "relaybot_tokens_total", platform="telegram", model=model, type="completion"
    )
    assert prompt > 0 and completion > 0
    assert value(samples, "relaybot_handle_seconds_count", platform="telegram") == 2
    assert value(samples, "relaybot_in_flight", platform="telegram") == 0
    assert value(samples, "relaybot_inbox_depth") == 0


async def test_metrics_show_a_message_in_flight_and_waiting_in_the_inbox(
    core: Core, http: httpx.AsyncClient, fake_openai: FakeOpenAI
) -> None:
    reached, release = asyncio.Event(), asyncio.Event()

    async def held_reply(messages: Messages) -> str:
        reached.set()
        await release.wait()
        return echo_reply(messages)

    fake_openai.reply = held_reply
    answering = asyncio.create_task(
        core.service.handle(message("take your time"), RecordingSink())
    )
    await asyncio.wait_for(reached.wait(), 10)  # the model is answering it now
    samples = await scrape(http)
    assert value(samples, "relaybot_in_flight", platform="telegram") == 1
    assert value(samples, "relaybot_inbox_depth") == 1
    release.set()
    assert await answering
    samples = await scrape(http)
    assert value(samples, "relaybot_in_flight", platform="telegram") == 0
    assert value(samples, "relaybot_inbox_depth") == 0


def test_each_core_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.received("telegram")
    assert first.registry is not second.registry
    assert (
        second.registry.get_sample_value("relaybot_messages_in_total", {"platform": "telegram"})
        is None
    )
    assert (
        REGISTRY.get_sample_value("relaybot_messages_in_total", {"platform": "telegram"}) is None
    )


async def test_no_metrics_route_without_metrics(core: Core) -> None:
    server = HttpServer("127.0.0.1", 0, ready_check=core.readiness_problem)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert (await client.get("/metrics")).status_code == 404
    finally:
        await server.stop()
