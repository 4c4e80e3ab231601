"""Streaming against a slow Web API: few calls, the whole answer, the model never held up."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from core.testing.fake_slack import FakeSlack, app_mention_event, new_ts
from tests.bots.slack.conftest import SlackApp

CHANNEL = "C0GENERAL"
STREAM_CALLS = ("chat.appendStream", "chat.update")


class SlowSlack(FakeSlack):
    """FakeSlack whose methods can answer late, or wait at a gate until it is opened."""

    def __init__(self) -> None:
        super().__init__()
        self.delays: dict[str, float] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.held: Counter[str] = Counter()

    def hold(self, method: str) -> asyncio.Event:
        gate = self.gates[method] = asyncio.Event()
        return gate

    def _api(self, name: str, handler: Any) -> Any:
        async def slowed(request: web.Request, args: dict[str, Any]) -> web.Response:
            gate = self.gates.get(name)
            if gate is not None and not gate.is_set():
                self.held[name] += 1
                await self._notify()
                try:
                    await gate.wait()
                finally:
                    self.held[name] -= 1
            if name in self.delays:
                await asyncio.sleep(self.delays[name])
            response: web.Response = await handler(request, args)
            return response

        return super()._api(name, slowed)


@pytest.fixture
async def slack() -> AsyncIterator[SlowSlack]:
    async with SlowSlack() as server:
        yield server


def answer_in_chunks(chunks: int = 80) -> str:
    """`chunks` words (one model chunk each), in paragraphs of ten."""
    paragraphs = (" ".join(f"word{i}" for i in range(p, p + 10)) for p in range(0, chunks, 10))
    return "\n\n".join(paragraphs)


def words(texts: list[str]) -> list[str]:
    return " ".join(texts).split()


@pytest.mark.parametrize("native", [True, False], ids=["native-stream", "edits"])
async def test_a_slow_slack_gets_few_calls_and_the_whole_answer(
    slack_app: SlackApp, native: bool
) -> None:
    # Each stream piece or edit takes 100 ms to answer, longer than the pause between them:
    # the pieces must not pile up behind each other (one per model chunk).
    slack = slack_app.slack
    assert isinstance(slack, SlowSlack)
    slack.native_streaming = native
    for method in STREAM_CALLS:
        slack.delays[method] = 0.1
    answer = answer_in_chunks()
    slack_app.openai.queue_reply(answer)
    slack_app.openai.chunk_delay = 0.005
    ts = new_ts()
    await slack_app.post_event(app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> count"))
    await slack_app.adapter.drain(within=30)

    assert words(slack.visible_texts(CHANNEL, ts)) == answer.split()
    calls = sum(len(slack.api_calls(method)) for method in STREAM_CALLS)
    assert 1 <= calls <= len(answer.split()) // 3, f"{calls} calls for 80 chunks"


@pytest.mark.parametrize(
    ("native", "call"),
    [(True, "chat.appendStream"), (False, "chat.update")],
    ids=["native", "edits"],
)
async def test_the_model_stream_is_not_held_up_by_a_pending_slack_call(
    slack_app: SlackApp, native: bool, call: str
) -> None:
    slack = slack_app.slack
    assert isinstance(slack, SlowSlack)
    slack.native_streaming = native
    answer = " ".join(f"word{i}" for i in range(40))
    slack_app.openai.queue_reply(answer)
    slack_app.openai.chunk_delay = 0.005
    gate = slack.hold(call)
    ts = new_ts()
    try:
        await slack_app.post_event(
            app_mention_event(channel=CHANNEL, ts=ts, text="<@U0BOT> count")
        )
        # The whole answer came out of the model, and relaybot moved on to moderating it,
        # while Slack still had not answered the call carrying the first words.
        await slack.wait_until(lambda: slack.held[call] == 1)
        await slack_app.openai.moderated(answer)
        assert slack.held[call] == 1
    finally:
        gate.set()
        await slack_app.adapter.drain(within=30)

    assert slack.visible_texts(CHANNEL, ts) == [answer]
    assert len(slack.api_calls(call)) <= 2, "one call waited; then only the rest went out"
