"""User story: a reasoning model thinks for minutes before its first word. Slack removes an
assistant thread's "is thinking..." two minutes after it was set if no message was sent, so
relaybot sets it again while no answer is posted, and never once the answer appeared.
Times are scaled down here (STATUS_REFRESH patched)."""

from __future__ import annotations

import asyncio

import pytest

import bots.slack.sink as slack_sink
from core.testing.fake_slack import message_event, new_ts
from tests.bots.slack.conftest import SlackApp

DM = "D0ALICE"
SET_STATUS = "assistant.threads.setStatus"
FIRST_POSTS = ("chat.postMessage", "chat.startStream")


async def _answer_in_a_thread(slack_app: SlackApp, settle: float) -> tuple[int, int]:
    """Ask in an assistant thread; the setStatus calls before and after the answer's first
    post."""
    slack = slack_app.slack
    thread = new_ts()
    await slack_app.post_event(message_event(channel=DM, thread_ts=thread, text="think hard"))
    await slack.wait_until(lambda: bool(slack.visible_texts(DM, thread)))
    await slack_app.adapter.drain()
    await asyncio.sleep(settle)  # a refresh due after the answer would have come by now

    assert slack.visible_texts(DM, thread) == ["echo: think hard"]
    methods = [name for name, _ in slack.arguments]
    first = min(i for i, name in enumerate(methods) if name in FIRST_POSTS)
    return methods[:first].count(SET_STATUS), methods[first:].count(SET_STATUS)


async def test_a_long_think_keeps_the_status_up_until_the_answer(
    slack_app: SlackApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slack_sink, "STATUS_REFRESH", 0.3)
    slack_app.openai.think_seconds = 1.2  # past several refreshes before the first byte

    before, after = await _answer_in_a_thread(slack_app, settle=0.8)

    assert before >= 3  # set, then set again while the model thought
    assert after == 0  # none once the answer is there
    assert {args["status"] for args in slack_app.slack.statuses} == {"is thinking..."}


async def test_a_quick_answer_sets_the_status_once(
    slack_app: SlackApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slack_sink, "STATUS_REFRESH", 1.0)  # far longer than the answer takes

    assert await _answer_in_a_thread(slack_app, settle=1.3) == (1, 0)
