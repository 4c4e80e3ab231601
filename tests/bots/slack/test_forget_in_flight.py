"""/forget in a Slack DM while a message in one of its threads is being answered.

/forget at the DM's top level takes its threads too, without waiting for what they are
answering. Seen before: the thread's turn was deleted, then its answer was stored under the
thread (sent back to the model as history next time) with its finished event.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from sqlalchemy import inspect, text

from core.testing.fake_slack import message_event, new_ts, slash_command
from tests.bots.slack.conftest import SlackApp

DM = "D0ALICE"
KEY = f"slack:T0TEAM:{DM}"


async def every_row(slack_app: SlackApp) -> list[str]:
    async with slack_app.adapter.core.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
        rows: list[str] = []
        for table in tables:
            found = await conn.execute(text(f'SELECT * FROM "{table}"'))
            rows += [f"{table}: " + " | ".join(str(v) for v in row) for row in found]
    return rows


async def test_an_answer_made_while_its_dm_is_forgotten_is_not_stored(
    slack_app: SlackApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "relaybot")
    slack, openai = slack_app.slack, slack_app.openai
    top = new_ts()
    await slack_app.post_event(message_event(channel=DM, user="U0ALICE", ts=top, text="hello"))
    await slack.wait_until(lambda: "echo: hello" in slack.visible_texts(DM))
    await slack_app.adapter.drain()

    asked, answer_now = asyncio.Event(), asyncio.Event()

    async def slow_answer(messages: list[dict[str, Any]]) -> str:
        asked.set()
        await answer_now.wait()
        return "About your PIN-4321: noted."

    openai.reply = slow_answer
    await slack_app.post_event(
        message_event(channel=DM, user="U0ALICE", ts=new_ts(), thread_ts=top, text="PIN-4321")
    )
    await asyncio.wait_for(asked.wait(), 10)
    response = await slack_app.post(
        slash_command("/forget", "", channel=DM, response_url=slack.response_url), form=True
    )
    assert response.status_code == 200
    await slack.wait_until(lambda: any("Done." in t for t in slack.visible_texts(DM)))
    answer_now.set()
    await slack.wait_until(lambda: any("noted" in t for t in slack.visible_texts(DM, top)))
    await slack_app.adapter.drain()

    # On screen it stays (Slack's to delete); stored, nothing of it does.
    # (The budgets' day totals keep the DM's key, a day and an amount: what it cost counts.)
    rows = [r for r in await every_row(slack_app) if not r.startswith("spend_totals: ")]
    assert not [r for r in rows if "4321" in r or "hello" in r or DM in r], rows
    assert not [r for r in rows if r.startswith(("messages:", "inbound_events:", "chats:"))]
    # The operator reads why, not that another replica took the message over.
    said = [r.getMessage() for r in caplog.records]
    assert "answer not stored: its chat was forgotten" in said
    assert not [line for line in said if "took over" in line]

    # The thread goes on afresh: the model is not sent the forgotten answer as history.
    openai.reply = lambda messages: "fresh start"
    await slack_app.post_event(
        message_event(channel=DM, user="U0ALICE", ts=new_ts(), thread_ts=top, text="again")
    )
    await slack.wait_until(lambda: "fresh start" in slack.visible_texts(DM, top))
    await slack_app.adapter.drain()
    sent = openai.chat_requests()[-1]["messages"]
    assert [m["content"] for m in sent if m["role"] != "system"] == ["again"]
    stored = [r for r in await every_row(slack_app) if r.startswith("messages:")]
    assert len(stored) == 2 and "again" in stored[0] and "fresh start" in stored[1]
