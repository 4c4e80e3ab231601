"""Telegram's flood limits: ~20 sends and edits a minute in a group, ~30 a second in all.
Finished answers must not wait for that budget behind "typing…" and streaming previews
(edits in groups, drafts in private chats)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from bots.http_server import HttpServer
from bots.telegram import TelegramAdapter
from bots.telegram.limits import FloodLimits
from bots.telegram.sink import Pacing
from core.app import Core
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_telegram import FakeTelegram
from tests.bots.telegram.conftest import GROUP, PRIVATE_CHAT

# A small group budget, so the test spends it in a second: 6 messages a minute, of which
# previews may take 4 (the rest is kept for finished answers).
BUDGET = 6


@asynccontextmanager
async def running(core: Core, limits: FloodLimits) -> AsyncIterator[TelegramAdapter]:
    """The adapter with these flood limits (polling the fake)."""
    adapter = TelegramAdapter(
        core,
        HttpServer("127.0.0.1", 0),
        rate_limiter=limits,
        pacing=Pacing(draft_interval=0.02, edit_interval=0.05, typing_refresh=0.5),
        poll_timeout=1,
    )
    await adapter.setup()
    await adapter.start()
    try:
        yield adapter
    finally:
        await adapter.stop()


@pytest.fixture
async def busy_group_bot(core: Core, telegram: FakeTelegram) -> AsyncIterator[TelegramAdapter]:
    """The adapter with its flood limits on; the fake refuses what goes over them."""
    telegram.flood_limit(BUDGET, 60.0)
    async with running(core, FloodLimits(group=(BUDGET, 60.0), reserve=1 / 3)) as adapter:
        yield adapter


async def ask(adapter: TelegramAdapter, telegram: FakeTelegram, update: dict[str, Any]) -> None:
    update_id = await telegram.push_update(update)
    await telegram.wait_delivered(update_id)
    await adapter.idle()


LONG_ANSWER = " ".join(f"word{i}" for i in range(80))


async def ask_twice(
    adapter: TelegramAdapter,
    telegram: FakeTelegram,
    fake_openai: FakeOpenAI,
    chat: int,
    questions: tuple[str, str],
    then: str | None = None,
) -> None:
    """Two questions in `chat`, the first answered with LONG_ANSWER streamed (the second
    with `then`, else an echo). Both must be answered within 8 s: refilling one message of
    the budgets here takes 10 s or more, so no finished answer may wait for it."""
    fake_openai.chunk_delay = 0.01
    fake_openai.queue_reply(LONG_ANSWER)
    if then is not None:
        fake_openai.queue_reply(then)
    async with asyncio.timeout(8):
        for question in questions:
            await ask(adapter, telegram, telegram.text_update(chat, question))


async def test_in_a_busy_group_previews_use_only_the_budget_to_spare(
    busy_group_bot: TelegramAdapter, telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    questions = ("@relay_test_bot count", "@relay_test_bot again")
    await ask_twice(busy_group_bot, telegram, fake_openai, GROUP, questions, "a short answer")

    first, second = telegram.chat_log(GROUP)
    assert first.text == LONG_ANSWER
    # The first answer was previewed while there was budget to spare, then finished...
    assert 1 <= len(first.edits) <= 4
    # ... and the second one still went out at once, as one message without previews.
    assert second.text == "a short answer" and second.edits == []
    # Telegram never had to refuse anything; typing indicators were shown for both
    # questions, the budget notwithstanding (chat actions are not messages).
    assert not [c for c in telegram.api_calls if c.error_code == 429]
    typing = [a for a in telegram.chat_actions if a.get("chat_id") == GROUP]
    assert len(typing) >= 2


async def test_drafts_in_private_chats_use_only_what_finished_answers_leave(
    core: Core, telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    # 4 messages a minute over all chats, half of it for previews: two drafts at most,
    # and every finished answer still goes out at once.
    limits = FloodLimits(overall=(4, 60.0), group=(0, 60.0), reserve=0.5)
    async with running(core, limits) as adapter:
        await ask_twice(adapter, telegram, fake_openai, PRIVATE_CHAT, ("count", "and again"))

    assert 1 <= len(telegram.drafts) <= 2
    assert telegram.texts(PRIVATE_CHAT) == [LONG_ANSWER, "echo: and again"]
