"""Rate limits: requests per minute per person, shared by every replica through the database."""

from __future__ import annotations

import itertools
import time

from sqlalchemy import select

from core.app import Core, open_core
from core.config import Settings
from core.db.models import RateLimitWindow
from core.privacy import run_maintenance
from core.ratelimit import RateLimiter
from core.testing.fake_openai import FakeOpenAI
from core.testing.sink import RecordingSink
from core.types import ChatRef, IncomingMessage, Sender

_ids = itertools.count(1)


def message(text: str, user: str = "u1", chat: str = "c1") -> IncomingMessage:
    return IncomingMessage(
        chat=ChatRef("test", chat),
        sender=Sender(user, user),
        event_key=f"rate:{next(_ids)}",
        text=text,
    )


async def test_two_replicas_share_one_rate_limit(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    limited = settings.model_copy(update={"rate_limit_per_minute": 2})
    async with open_core(limited) as first, open_core(limited) as second:

        async def say(core_: Core, text: str, user: str = "u1", chat: str = "c1") -> str:
            sink = RecordingSink()
            await core_.service.handle(message(text, user, chat), sink)
            return sink.texts[0]

        one = await say(first, "one")
        two = await say(second, "two", chat="c2")
        three = await say(first, "three", chat="c3")
        other_person = await say(second, "hi", user="u2", chat="c4")
    assert [one, two, other_person] == ["echo: one", "echo: two", "echo: hi"]
    assert three.startswith("Slow down a little: you can send 2 messages a minute.")
    assert "Try again in about " in three
    # The refused message never reached the model, nor moderation.
    assert [b["messages"][-1]["content"] for b in fake_openai.chat_requests()] == [
        "one",
        "two",
        "hi",
    ]
    assert all("three" not in str(c.json) for c in fake_openai.calls("/moderations"))


async def test_the_limit_slides_across_minute_boundaries_and_frees_up(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(settings) as core:
        now = [1_800_000_000.0 + 59.5]  # half a second before a minute ends
        limiter = RateLimiter(core.engine, 2, clock=lambda: now[0])
        assert await limiter.hit("user:test:u1") is None
        assert await limiter.hit("user:test:u1") is None
        now[0] += 1.0  # the next minute has begun: the previous one still counts
        wait = await limiter.hit("user:test:u1")
        assert wait is not None and wait > 1
        now[0] += wait
        assert await limiter.hit("user:test:u1") is None
        # A refused request was not counted, so waiting is enough.
        now[0] += 300
        assert await limiter.hit("user:test:u1") is None
        assert await limiter.purge() >= 1
        async with core.store._session() as session:
            windows = (await session.execute(select(RateLimitWindow.window))).scalars().all()
        assert windows == [int(now[0] // 60)]


async def test_maintenance_drops_stale_counters(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    limited = settings.model_copy(update={"rate_limit_per_minute": 5})
    async with open_core(limited) as core:
        old = RateLimiter(core.engine, 5, clock=lambda: time.time() - 600)
        await old.hit("user:test:old")
        await core.service.handle(message("hello"), RecordingSink())
        await run_maintenance(core.engine, limited)
        async with core.store._session() as session:
            subjects = (await session.execute(select(RateLimitWindow.subject))).scalars().all()
    assert subjects == ["user:test:u1"]
