"""Stopping the Slack adapter waits for its answers without ever cutting one short: only
RELAYBOT_SHUTDOWN_GRACE bounds that wait (it had its own 30 s, past which answers were
cancelled mid-stream, with an ERROR traceback, whatever grace the operator configured),
and an answer the grace cannot cover is released for the next process."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest
from sqlalchemy import text

from bots.runner import run_platforms
from bots.slack.adapter import EVENTS_PATH
from core.app import Core, open_core
from core.config import Settings
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import FakeSlack, event_callback, message_event, signed_request
from tests.bots.slack.conftest import SIGNING_SECRET, SlackApp
from tests.processes import free_port

DM = "D0ALICE"
ANSWER = "one two three four five six seven eight nine ten"


async def events(core: Core) -> list[tuple[str, str | None]]:
    """(status, claimed by) of every stored event, oldest first."""
    async with core.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT status, claimed_by FROM inbound_events ORDER BY id")
        )
        return [(r[0], r[1]) for r in rows]


async def until(predicate: object, within: float = 20) -> None:
    """Wait for an answer streaming in the background: nothing to wait on but time."""
    assert callable(predicate)
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def ready(client: httpx.AsyncClient, url: str) -> None:
    """Wait until the runner says it is ready (its adapters started)."""
    for _ in range(400):
        try:
            if (await client.get(url + "/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass  # the HTTP server is not listening yet
        await asyncio.sleep(0.05)  # starting up: nothing to wait on but time
    raise AssertionError("the runner never became ready")


async def test_an_answer_outlasting_the_adapters_own_wait_is_not_cut_short(
    slack_app: SlackApp, fake_openai: FakeOpenAI, core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    fake_openai.chunk_delay = 0.1  # about a second of answer
    fake_openai.queue_reply(ANSWER)
    assert (await slack_app.post_event(message_event(channel=DM, text="hello"))).status_code == 200
    await fake_openai.wait_for("/chat/completions")

    # The wait runs out long before the answer: the wait ends, the answer does not.
    with pytest.raises(TimeoutError):
        await slack_app.adapter.drain(within=0.2)
    await slack_app.adapter.drain(within=None)

    assert slack_app.slack.visible_texts(DM) == [ANSWER]
    assert await events(core) == [("done", None)]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_past_the_shutdown_grace_a_slack_answer_is_released_and_the_next_start_ends_it(
    settings: Settings, slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    port = free_port()
    settings = settings.model_copy(
        update={
            "http_host": "127.0.0.1",
            "http_port": port,
            "max_retries": 0,
            "shutdown_grace": 1.0,
        }
    )
    fake_openai.chunk_delay = 0.5  # about 5 s of answer: longer than the grace
    fake_openai.queue_reply(ANSWER)
    payload = event_callback(
        message_event(channel=DM, text="hello", team_id=slack.team_id), team_id=slack.team_id
    )
    body, headers = signed_request(SIGNING_SECRET, payload)
    stop = asyncio.Event()
    async with open_core(settings) as core:
        running = asyncio.create_task(run_platforms(core, stop))
        async with httpx.AsyncClient(timeout=10) as client:
            url = f"http://127.0.0.1:{port}"
            await ready(client, url)
            response = await client.post(url + EVENTS_PATH, content=body, headers=headers)
            assert response.status_code == 200
        await fake_openai.wait_for("/chat/completions")
        stop.set()  # what SIGTERM does
        started = time.monotonic()
        await asyncio.wait_for(running, 30)
        took = time.monotonic() - started
        # Released, not left claimed: no lease to wait out before another process resumes it.
        assert await events(core) == [("received", None)]
    assert took < 4
    shown = slack.visible_texts(DM)
    assert shown != [ANSWER]  # cut short by the grace

    fake_openai.chunk_delay = 0
    fake_openai.queue_reply(ANSWER)
    stop = asyncio.Event()
    async with open_core(settings) as core:
        running = asyncio.create_task(run_platforms(core, stop))
        await until(lambda: slack.visible_texts(DM) == [ANSWER])
        stop.set()
        await asyncio.wait_for(running, 30)
        assert await events(core) == [("done", None)]
