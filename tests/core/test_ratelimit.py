"""Rate limits: requests per minute per person, shared by every replica through the database."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time

from sqlalchemy import select

from core.app import Core, open_core
from core.config import Settings
from core.db.models import RateLimitWindow
from core.privacy import run_maintenance
from core.ratelimit import LOCK_ROW, RateLimiter
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
        # What is left: the last request let through, and the person's lock row.
        assert sorted(windows) == [LOCK_ROW, round(now[0] * 1000)]


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
    assert set(subjects) == {"user:test:u1"}


START = 1_800_000_020.0  # 20 s into a minute


def sliding_window(limit: int, times: list[float]) -> list[float | None]:
    """What a true sliding one-minute window says to requests at `times`: None (let
    through), or the whole seconds until the oldest of the last `limit` let through leaves."""
    taken: list[float] = []
    said: list[float | None] = []
    for t in times:
        inside = [a for a in taken if t - a < 60]
        if len(inside) < limit:
            taken.append(t)
            said.append(None)
        else:
            said.append(float(max(1, math.ceil(inside[-limit] + 60 - t))))
    return said


def schedule(gaps: list[float]) -> list[float]:
    return [START + g for g in itertools.accumulate(gaps, initial=0.0)]


async def said_by(
    limiter: RateLimiter, now: list[float], subject: str, times: list[float]
) -> list[float | None]:
    said: list[float | None] = []
    for t in times:
        now[0] = t
        said.append(await limiter.hit(subject))
    return said


async def test_under_the_limit_is_never_refused_and_over_it_always_is(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    shuffled = random.Random(7)
    cases = {
        (1, "61 s apart"): schedule([61.0] * 8),
        (1, "90 s apart"): schedule([90.0] * 8),
        (1, "60 s apart, just out"): schedule([60.0] * 8),
        (1, "59.5 s apart, just in"): schedule([59.5] * 8),
        (5, "13 s apart"): schedule([13.0] * 20),
        (5, "11 s apart, one too many a minute"): schedule([11.0] * 20),
        (3, "bursts"): schedule([0.5, 0.5, 0.5, 0.5, 30.0, 29.0, 0.5, 1.0, 61.0, 0.0, 0.0, 0.0]),
        (4, "at random"): schedule([float(shuffled.randint(0, 40)) for _ in range(60)]),
    }
    async with open_core(settings) as core:
        now = [START]
        for (limit, name), times in cases.items():
            limiter = RateLimiter(core.engine, limit, clock=lambda: now[0])
            said = await said_by(limiter, now, f"user:test:{limit}:{name}", times)
            assert said == sliding_window(limit, times), (limit, name)
    # The model itself: under the limit all pass, over it some do not.
    for name in ("61 s apart", "90 s apart", "60 s apart, just out"):
        assert sliding_window(1, cases[1, name]) == [None] * len(cases[1, name])
    assert sliding_window(1, cases[1, "59.5 s apart, just in"])[:3] == [None, 1.0, None]
    assert sliding_window(5, cases[5, "13 s apart"]) == [None] * 21
    assert sliding_window(5, cases[5, "11 s apart, one too many a minute"])[5] == 5.0


async def test_a_burst_up_to_the_limit_passes_and_the_next_waits_for_the_oldest(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(settings) as core:
        now = [START]
        limiter = RateLimiter(core.engine, 5, clock=lambda: now[0])
        burst = await said_by(limiter, now, "user:test:u1", [START + i for i in range(5)])
        assert burst == [None] * 5
        # The oldest (START) leaves the window at START + 60.
        assert await said_by(limiter, now, "user:test:u1", [START + 10]) == [50.0]
        assert await said_by(limiter, now, "user:test:u1", [START + 59.5]) == [1.0]
        assert await said_by(limiter, now, "user:test:u1", [START + 60]) == [None]
        # Full again; the next to leave is START + 1, half a second on: "about 1 s".
        assert await said_by(limiter, now, "user:test:u1", [START + 60.5]) == [1.0]
        assert await said_by(limiter, now, "user:test:u1", [START + 61]) == [None]
        # Someone else has a minute of their own.
        assert await said_by(limiter, now, "user:test:u2", [START + 61]) == [None]


async def test_a_person_has_at_most_limit_rows_and_quiet_people_are_forgotten(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(settings) as core:
        now = [START]
        limiter = RateLimiter(core.engine, 3, clock=lambda: now[0])

        async def rows() -> list[str]:
            async with core.store._session() as session:
                query = select(RateLimitWindow.subject).where(RateLimitWindow.window != LOCK_ROW)
                return list((await session.execute(query)).scalars().all())

        # Half an hour of a message every 7 s, most of them over the limit.
        said = await said_by(limiter, now, "user:test:busy", schedule([7.0] * 250))
        assert said.count(None) == sliding_window(3, schedule([7.0] * 250)).count(None)
        assert len(await rows()) == 3
        for person in range(40):
            await limiter.hit(f"user:test:p{person}")
        assert len(await rows()) == 3 + 40
        # A minute later nobody has a request left in the window: all of it goes.
        now[0] += 60
        assert await limiter.purge() == (3 + 1) + 40 * (1 + 1)
        async with core.store._session() as session:
            assert (await session.execute(select(RateLimitWindow))).all() == []


async def test_replicas_let_exactly_one_of_simultaneous_requests_through(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    now = [START]
    async with open_core(settings) as first, open_core(settings) as second:
        limiters = [RateLimiter(c.engine, 1, clock=lambda: now[0]) for c in (first, second)]
        assert await limiters[0].hit("user:test:u1") is None
        now[0] = START + 61  # the first left the window a second ago
        said = await asyncio.gather(*(limiters[i % 2].hit("user:test:u1") for i in range(6)))
    assert sorted(said, key=lambda w: w or 0) == [None, 60.0, 60.0, 60.0, 60.0, 60.0]
