"""`relaybot run` resumes a platform's unfinished messages as soon as its adapter started.

Seen before: the runner resumed once every adapter had started. With Slack's Socket Mode
unable to connect (slack_sdk retries for ever), a Telegram message left unanswered by the
process before was never answered, though Telegram itself was running; and a newer message of
that chat, arriving while the other adapters started, was answered before the older one.
"""

from __future__ import annotations

import asyncio

from pydantic import SecretStr

from bots.runner import run_platforms
from core.app import open_core
from core.config import Settings
from core.testing.fake_telegram import FakeTelegram
from core.types import ChatRef, IncomingMessage, Sender
from tests.bots.telegram.conftest import PRIVATE_CHAT
from tests.processes import free_port


async def test_a_left_over_message_is_answered_while_another_platform_cannot_start(
    settings: Settings, telegram: FakeTelegram
) -> None:
    left_over = IncomingMessage(
        chat=ChatRef("telegram", str(PRIVATE_CHAT)),
        sender=Sender(str(PRIVATE_CHAT), "ada"),
        event_key=f"telegram:{PRIVATE_CHAT}:41",
        text="the question asked before the restart",
        platform_message_id="41",
    )
    # Stored, then the process died; its claim has run out by the restart (PostgreSQL: a
    # replica resumes only what no live process holds).
    dying = settings.model_copy(update={"lease_seconds": 0.2})
    async with open_core(dying) as dead:
        assert await dead.service.inbox.record(left_over) is not None
    await asyncio.sleep(0.3)

    settings = settings.model_copy(
        update={
            # Socket Mode against an address where nothing listens: its start never ends.
            "slack_bot_token": SecretStr("xoxb-test-bot-token"),
            "slack_app_token": SecretStr("xapp-1-A1-2-x"),
            "slack_api_url": f"http://127.0.0.1:{free_port()}/api/",
            "http_host": "127.0.0.1",
            "http_port": 0,
        }
    )
    stop = asyncio.Event()
    async with open_core(settings) as core:
        running = asyncio.create_task(run_platforms(core, stop))
        try:
            await telegram.wait_until(lambda: bool(telegram.texts(PRIVATE_CHAT)), within=20)
            update_id = await telegram.push_update(
                telegram.text_update(PRIVATE_CHAT, "and a newer one")
            )
            await telegram.wait_delivered(update_id)
            await telegram.wait_until(lambda: len(telegram.texts(PRIVATE_CHAT)) == 2, within=20)
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)

    assert telegram.texts(PRIVATE_CHAT) == [
        "echo: the question asked before the restart",
        "echo: and a newer one",
    ]
