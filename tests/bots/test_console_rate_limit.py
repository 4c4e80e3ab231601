"""The per-person rate limit as a console user meets it: a true sliding one-minute window."""

from __future__ import annotations

import io

import pytest

from bots.console import run_console
from core.app import Core
from core.config import Settings
from core.testing.fake_openai import FakeOpenAI

START = 1_800_000_020.0  # 20 s into a minute


class StepClock:
    """The limiter's clock: each reading moves it on by `step` seconds."""

    def __init__(self, step: float) -> None:
        self.now = START - step
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"rate_limit_per_minute": 1})


async def chat(core: Core, *lines: str) -> list[str]:
    out = io.StringIO()
    await run_console(core, stdin=io.StringIO("".join(f"{x}\n" for x in lines)), stdout=out)
    return out.getvalue().splitlines()


async def test_one_a_minute_sent_61_s_apart_are_all_answered(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    core.service.policy.limiter.clock = StepClock(61.0)
    lines = [f"message {i}" for i in range(6)]
    assert await chat(core, *lines) == [f"echo: {x}" for x in lines]


async def test_the_second_within_a_minute_is_told_the_true_wait_in_the_singular(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    core.service.policy.limiter.clock = StepClock(1.0)
    out = await chat(core, "one", "two")
    assert out == [
        "echo: one",
        "! Slow down a little: you can send 1 message a minute. Try again in about 59 s.",
    ]
    assert [r.json["messages"][-1]["content"] for r in fake_openai.calls("/chat/completions")] == [
        "one"
    ]
