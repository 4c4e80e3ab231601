"""An answer made while its chat is forgotten (/forget said at the top level while a thread
is answered) is not stored, but what it cost still counts toward the person's and the chat's
budgets, as /forget keeps what the chat had cost: forgetting gives nobody a fresh budget."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import select

from core.app import open_core
from core.config import ModerationPolicy, Settings
from core.db.models import SpendTotal
from core.testing.fake_openai import FakeOpenAI
from core.testing.sink import RecordingSink
from core.types import ChatRef, IncomingMessage, Sender

PRICES = {"gpt-4o-mini": {"input": 1000, "output": 1000}}


def message(text: str, key: str, thread: str | None = None) -> IncomingMessage:
    return IncomingMessage(
        chat=ChatRef("test", "c1", thread), sender=Sender("u1", "Ann"), event_key=key, text=text
    )


async def test_an_answer_made_while_its_chat_is_forgotten_counts_toward_the_budgets(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    priced = settings.model_copy(
        update={
            "prices": json.dumps(PRICES),
            "moderation": ModerationPolicy.OFF,
            "budget_user_daily": 100.0,
        }
    )
    asked, go = asyncio.Event(), asyncio.Event()

    async def slow(messages: list[dict[str, Any]]) -> str:
        asked.set()
        await go.wait()
        return "a long answer here"

    async with open_core(priced) as core:
        fake_openai.reply = slow
        answer_sink = RecordingSink()
        answering = asyncio.create_task(
            core.service.handle(message("hello there friend", "k1", "7"), answer_sink)
        )
        await asyncio.wait_for(asked.wait(), 10)
        forget = RecordingSink()
        await core.service.handle(message("/forget", "k2"), forget)
        assert forget.texts[0].startswith("Done.")
        go.set()
        await answering
        async with core.engine.connect() as conn:
            spent = dict(
                (row[0], row[1])
                for row in await conn.execute(select(SpendTotal.scope, SpendTotal.cost_usd))
            )
        assert spent["global"] > 0
        assert spent["user"] == spent["global"]
        assert spent["chat"] == spent["global"]
        assert await core.store.count_messages("test:c1:7") == 0
