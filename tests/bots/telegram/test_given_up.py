"""A message that every process working on it stopped with is given up, not resumed forever.

Each run below takes the message on and dies while answering it (as a crash the message
causes would kill it). Without a limit, every restart resumed it first and died again: the
bot was down for every chat, for good.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from sqlalchemy import select

from core.config import Settings
from core.db.models import InboundEvent
from core.service import GAVE_UP, GIVE_UP_AFTER
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_telegram import FakeTelegram
from tests.bots.telegram.conftest import PRIVATE_CHAT
from tests.bots.telegram.test_resumed_answers import process


async def dies_with_the_message(
    settings: Settings, telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch, *, first: bool
) -> None:
    """One process: takes the message on (from Telegram, or resumed) and dies in it."""
    async with process(settings.model_copy(update={"shutdown_grace": 0})) as (core, adapter):
        working = asyncio.Event()

        async def dies(msg: Any, sink: Any) -> None:
            working.set()
            await asyncio.Event().wait()  # the process dies here

        monkeypatch.setattr(core.service, "_process", dies)
        if first:
            update_id = await telegram.push_update(
                telegram.text_update(PRIVATE_CHAT, "the message")
            )
            await telegram.wait_delivered(update_id)
        else:
            assert await core.service.resume({"telegram": adapter}) == 1
        async with asyncio.timeout(10):
            await working.wait()
        await core.service.shutdown()


async def test_a_message_that_stops_every_process_is_given_up_and_the_chat_goes_on(
    settings: Settings,
    telegram: FakeTelegram,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for attempt in range(GIVE_UP_AFTER):
        await dies_with_the_message(settings, telegram, monkeypatch, first=attempt == 0)
        monkeypatch.undo()
    assert telegram.chat_log(PRIVATE_CHAT) == []

    with caplog.at_level(logging.ERROR, logger="relaybot.service"):
        async with process(settings) as (core, adapter):
            assert await core.service.resume({"telegram": adapter}) == 0
            update_id = await telegram.push_update(
                telegram.text_update(PRIVATE_CHAT, "are you there?")
            )
            await telegram.wait_delivered(update_id)
            await adapter.idle()
            async with core.engine.connect() as conn:
                statuses = (
                    (await conn.execute(select(InboundEvent.status).order_by(InboundEvent.id)))
                    .scalars()
                    .all()
                )

    # The person is told, under their message; the next one is answered as usual.
    given_up, answer = telegram.chat_log(PRIVATE_CHAT)
    assert given_up.text == GAVE_UP
    assert answer.text == "echo: are you there?"
    assert statuses == ["failed", "done"]
    assert "given up after 5 attempts" in caplog.text
    assert len(fake_openai.chat_requests()) == 1, "only the next message reached the model"
