"""User stories: "is thinking..." in an assistant thread is decoration. A Slack slow to set
it does not keep the model waiting, and one that drops the call does not cost the answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from core.testing.fake_slack import FakeSlack, message_event, new_ts
from tests.bots.slack.conftest import SlackApp

DM = "D0ALICE"


class StatusSlack(FakeSlack):
    """setStatus held until the test lets it go, or its connection dropped unanswered."""

    def __init__(self) -> None:
        super().__init__()
        self.status_gate = asyncio.Event()
        self.drop_status = False

    async def _set_status(self, request: web.Request, args: dict[str, Any]) -> web.Response:
        if self.drop_status:
            self.statuses.append(args)
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError("dropped")
        await self.status_gate.wait()
        return await super()._set_status(request, args)


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with StatusSlack() as server:
        yield server


async def test_the_model_is_asked_while_slack_is_still_setting_the_status(
    slack_app: SlackApp,
) -> None:
    slack = slack_app.slack
    assert isinstance(slack, StatusSlack)
    thread = new_ts()
    await slack_app.post_event(message_event(channel=DM, thread_ts=thread, text="in a thread"))

    # setStatus has not answered yet: the model is asked all the same.
    await slack_app.openai.wait_for("/chat/completions", within=10)
    assert slack.visible_texts(DM, thread) == []  # the answer waits for the status, not more
    slack.status_gate.set()
    await slack.wait_until(lambda: bool(slack.visible_texts(DM, thread)))
    await slack_app.adapter.drain()
    assert slack.visible_texts(DM, thread) == ["echo: in a thread"]


async def test_a_dropped_status_call_does_not_cost_the_answer(slack_app: SlackApp) -> None:
    slack = slack_app.slack
    assert isinstance(slack, StatusSlack)
    slack.drop_status = True
    thread = new_ts()
    await slack_app.post_event(message_event(channel=DM, thread_ts=thread, text="in a thread"))
    await slack.wait_until(lambda: bool(slack.visible_texts(DM, thread)))
    await slack_app.adapter.drain()

    assert slack.visible_texts(DM, thread) == ["echo: in a thread"]
