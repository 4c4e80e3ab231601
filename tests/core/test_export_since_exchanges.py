"""`relaybot export --since` where the cut falls between a question and its answer.

The answer came after the cut and its question before it: the example began with that answer
([system, assistant, user, assistant]), teaching a model to answer a question it never saw.
"""

from __future__ import annotations

import asyncio
import io
import json
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from bots.console import run_console
from core.app import Core
from core.db.models import Message, utcnow
from core.testing.fake_openai import FakeOpenAI
from tests.processes import run_relaybot


async def talk(core: Core, name: str, *lines: str) -> None:
    stdin = io.StringIO("".join(f"{x}\n" for x in lines))
    await run_console(core, chat=name, stdin=stdin, stdout=io.StringIO())


async def days_ago(core: Core, chat_key: str, turns: int, days: float) -> None:
    """Date the chat's first `turns` stored turns `days` back."""
    async with core.engine.begin() as conn:
        ids = (
            await conn.execute(
                select(Message.id).where(Message.chat_key == chat_key).order_by(Message.id)
            )
        ).scalars()
        first = list(ids)[:turns]
        await conn.execute(
            update(Message)
            .where(Message.id.in_(first))
            .values(created_at=utcnow() - timedelta(days=days))
        )


async def export(core: Core, cwd: Path, *args: str) -> list[list[tuple[str, str]]]:
    """What `relaybot export ARGS` writes: each example's turns after its system prompt."""
    result = await asyncio.to_thread(
        run_relaybot, ["export", *args], cwd, RELAYBOT_DATABASE_URL=core.settings.database_url
    )
    assert result.returncode == 0, result.stderr
    return [
        [(m["role"], m["content"]) for m in json.loads(line)["messages"][1:]]
        for line in result.stdout.splitlines()
    ]


async def test_an_answer_whose_question_came_before_the_cut_is_left_out(
    core: Core, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    await talk(core, "split", "first question", "second question")
    await talk(core, "recent", "a new question")
    await talk(core, "old", "an old question")
    # The first question was sent just before the cut, its answer came just after it.
    await days_ago(core, "console:split", turns=1, days=7.01)
    await days_ago(core, "console:old", turns=2, days=30)

    assert await export(core, tmp_path, "--since", "7d") == [
        [("user", "a new question"), ("assistant", "echo: a new question")],
        [("user", "second question"), ("assistant", "echo: second question")],
    ]
    # Without --since the whole conversation is there, in order.
    everything = await export(core, tmp_path, "--chat", "console:split")
    assert everything == [
        [
            ("user", "first question"),
            ("assistant", "echo: first question"),
            ("user", "second question"),
            ("assistant", "echo: second question"),
        ]
    ]
