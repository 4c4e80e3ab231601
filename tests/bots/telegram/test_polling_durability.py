"""Polling confirms an update to Telegram only once the core has stored it."""

from __future__ import annotations

import asyncio

from bots.http_server import HttpServer
from bots.telegram import TelegramAdapter
from bots.telegram.limits import FloodLimits
from bots.telegram.sink import Pacing
from tests.bots.telegram.conftest import PRIVATE_CHAT, Bot


async def test_an_update_a_stopping_bot_fetched_is_answered_by_the_next_one(bot: Bot) -> None:
    tg = bot.telegram
    # This process is shutting down: it still polls, but the core no longer stores work.
    bot.core.service.accepting = False
    update_id = await tg.push_update(tg.text_update(PRIVATE_CHAT, "are you still there?"))
    poller = bot.adapter._poller
    assert poller is not None
    # It fetches the update, the core refuses to store it, and it stops polling.
    async with asyncio.timeout(10):
        await asyncio.shield(poller)
    # Fetched but never confirmed: Telegram still holds it for the next poller.
    assert [u["update_id"] for u in tg.pending] == [update_id]
    assert tg.texts(PRIVATE_CHAT) == []

    # The next process (here: a fresh adapter on a core that accepts work) answers it.
    bot.core.service.accepting = True
    server = HttpServer("127.0.0.1", 0)
    successor = TelegramAdapter(
        bot.core,
        server,
        rate_limiter=FloodLimits(overall=(0, 1.0), group=(0, 60.0)),
        pacing=Pacing(draft_interval=0.02, edit_interval=0.05, typing_refresh=0.5),
        poll_timeout=1,
    )
    await successor.setup()
    await successor.start()
    try:
        await tg.wait_delivered(update_id)
        await successor.idle()
    finally:
        await successor.stop()
    assert tg.texts(PRIVATE_CHAT) == ["echo: are you still there?"]


async def test_a_burst_fetched_in_one_poll_is_answered_in_order_in_every_chat(bot: Bot) -> None:
    """A poll's updates are stored together; each chat still gets its answers in order."""
    tg = bot.telegram
    chats = [PRIVATE_CHAT + k for k in range(3)]
    updates = [tg.text_update(chat, f"chat {chat} says {n}") for n in range(6) for chat in chats]
    # Queued in one go: the poller's next getUpdates carries (nearly) all of them.
    ids = await asyncio.gather(*(tg.push_update(update) for update in updates))
    await tg.wait_delivered(max(ids))
    await bot.adapter.idle()
    for chat in chats:
        said = [f"chat {chat} says {n}" for n in range(6)]
        assert tg.texts(chat) == [f"echo: {text}" for text in said]
        stored = await bot.stored(f"telegram:{chat}")
        assert [m.content for m in reversed(stored) if m.role == "user"] == said
    # Every update was confirmed: none comes back to the next poller.
    assert tg.pending == []
