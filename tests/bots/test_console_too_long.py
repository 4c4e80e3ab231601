"""A message too long for the model's window, met through the console: the person is asked
for a shorter one, and the conversation goes on as if it had not been sent.

Seen before: the refused message stayed in the history as an answered turn. Every later
request's trimming stopped at it, so the model never again saw anything said before it
("my name is Bob" forgotten), and `relaybot export` exported it as answered.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from bots.console import run_console, to_incoming
from core.app import Core, open_core
from core.config import Settings
from core.db.models import Message
from core.export import export_openai_jsonl
from core.testing.fake_openai import FakeOpenAI
from core.tokens import counter_for
from tests.bots.test_console import chat

HUGE = ("lorem ipsum dolor sit amet " * 400).strip()  # ~2,000 tokens: over the window
TOO_LONG = "! That message is too long for the model"


@pytest.fixture
async def small(settings: Settings) -> AsyncIterator[Core]:
    """A core whose model window holds about 900 tokens of history."""
    narrow = settings.model_copy(update={"context_tokens": 1200, "reply_tokens": 256})
    async with open_core(narrow) as core:
        yield core


def user_turns(request: dict) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


async def stored_users(core: Core) -> list[tuple[str, str]]:
    async with core.engine.connect() as conn:
        rows = await conn.execute(
            select(Message.content, Message.status)
            .where(Message.role == "user")
            .order_by(Message.id)
        )
        return [(content, status) for content, status in rows]


async def test_a_refused_long_message_does_not_make_the_bot_forget(
    small: Core, fake_openai: FakeOpenAI
) -> None:
    out = await chat(small, "my name is Bob", HUGE, "what is my name?")

    lines = out.splitlines()
    assert lines[0] == "echo: my name is Bob"
    assert lines[1].startswith(TOO_LONG)
    assert lines[2] == "echo: what is my name?"
    requests = fake_openai.chat_requests()
    assert len(requests) == 2  # the long message was never sent
    assert user_turns(requests[-1]) == ["my name is Bob", "what is my name?"]
    # Nothing the person sent is lost: it is kept, out of the history.
    assert await stored_users(small) == [
        ("my name is Bob", "ok"),
        (HUGE, "withheld"),
        ("what is my name?", "ok"),
    ]
    # The export holds what the model read and answered, nothing else.
    buf = io.StringIO()
    await export_openai_jsonl(small.engine, buf, default_system_prompt="sys")
    (example,) = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert user_turns(example) == ["my name is Bob", "what is my name?"]


async def test_retry_after_a_refused_long_message_answers_the_one_before(
    small: Core, fake_openai: FakeOpenAI
) -> None:
    out = await chat(small, "my name is Bob", HUGE, "/retry", "and now?")

    lines = out.splitlines()
    assert lines[1].startswith(TOO_LONG)
    assert lines[2:] == ["echo: my name is Bob", "echo: and now?"]
    retried, last = fake_openai.chat_requests()[-2:]
    assert user_turns(retried) == ["my name is Bob"]
    assert user_turns(last) == ["my name is Bob", "and now?"]


async def test_a_resumed_long_message_is_refused_and_kept_out_of_the_history(
    settings: Settings, fake_openai: FakeOpenAI, database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("the console resumes its chat's open messages at start-up on SQLite")
    settings = settings.model_copy(update={"context_tokens": 1200, "reply_tokens": 256})
    async with open_core(settings) as core:
        assert (await chat(core, "my name is Bob")).splitlines() == ["echo: my name is Bob"]
    # A console stored the long message and its turn, and was killed before answering.
    msg = to_incoming(HUGE, "default", "you")
    assert not isinstance(msg, str)
    counter = counter_for(settings.chat_model)
    async with open_core(settings) as dead:
        assert await dead.service.inbox.record(msg) is not None
        row = {
            "role": "user",
            "content": HUGE,
            "token_count": counter.count(HUGE),
            "encoding": counter.stored_as,
            "event_key": msg.event_key,
        }
        await dead.service.store.append_messages(msg.chat.key, [row])

    async with open_core(settings) as core:
        out = io.StringIO()
        await run_console(core, stdin=io.StringIO("what is my name?\n"), stdout=out)
        lines = out.getvalue().splitlines()
        assert lines[0].startswith(TOO_LONG)
        assert lines[1:] == ["echo: what is my name?"]
        assert user_turns(fake_openai.chat_requests()[-1]) == [
            "my name is Bob",
            "what is my name?",
        ]
        assert (HUGE, "withheld") in await stored_users(core)
