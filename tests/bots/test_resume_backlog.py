"""A restart with more unanswered messages than one claim takes (100): every one is taken over
at once, so no chat's next message overtakes an older one still waiting.

Seen before: a SQLite restart took the oldest 100; the rest kept the dead process's lease, so
a newer message of such a chat was answered without the older turn, and the older one ~90 s
later (or, in the console, which has no sweeper, not in that run at all).
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from bots.console import to_incoming
from core.app import Core, open_core
from core.config import Settings
from core.db.models import InboundEvent, Message, utcnow
from core.ports import ReplySink
from core.testing.fake_openai import FakeOpenAI
from core.testing.sink import RecordingSink
from core.types import ChatRef, IncomingMessage, Sender
from tests.processes import endpoint_env, run_relaybot

BACKLOG = 250  # more than two claims' worth


async def leave_unanswered(settings: Settings, messages: list[IncomingMessage]) -> None:
    """What a process killed under a burst leaves: every message stored, none answered."""
    async with open_core(settings) as dead:
        for msg in messages:
            assert await dead.service.inbox.record(msg) is not None


def console_line(text: str, chat: str) -> IncomingMessage:
    msg = to_incoming(text, chat, "you")
    assert not isinstance(msg, str), msg
    return msg


def test_a_console_restart_answers_an_old_message_of_its_chat_behind_a_long_backlog(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    db = tmp_path / "relaybot.db"
    url = f"sqlite+aiosqlite:///{db}"
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key="sk-test-key",
        openai_base_url=endpoint.base_url,
        database_url=url,
    )
    # Other console chats' messages first (older), then one of the chat restarted below.
    backlog = [console_line(f"q{i}", f"other{i % 7}") for i in range(BACKLOG)]
    backlog.append(console_line("older question", "default"))
    asyncio.run(leave_unanswered(settings, backlog))

    result = run_relaybot(
        ["console"],
        tmp_path,
        "newer question\n",
        **endpoint_env(endpoint),
        RELAYBOT_DATABASE_URL=url,
    )
    assert result.returncode == 0, result.stderr
    # The older message first, then the newer one, which the model saw after the older turn.
    assert result.stdout.splitlines() == ["echo: older question", "echo: newer question"]
    last = endpoint.chat_requests()[-1]["messages"]
    assert [m["content"] for m in last if m["role"] == "user"] == [
        "older question",
        "newer question",
    ]
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT chat_key, status, claimed_by FROM inbound_events ORDER BY id"
        ).fetchall()
    # This chat's events are closed; the other chats' wait for their own console, unclaimed.
    assert [status for key, status, _ in rows if key == "console:default"] == ["done", "done"]
    others = [(status, holder) for key, status, holder in rows if key != "console:default"]
    assert others == [("received", None)] * BACKLOG


class SinkRestorer:
    """Resumes every stored test-platform message into one recording sink."""

    def __init__(self) -> None:
        self.sink = RecordingSink()

    def restore(self, msg: IncomingMessage) -> tuple[IncomingMessage, ReplySink] | None:
        return msg, self.sink


def message(text: str, chat: str, n: int) -> IncomingMessage:
    return IncomingMessage(
        chat=ChatRef("test", chat),
        sender=Sender("u1", "Alice"),
        event_key=f"test:{n}",
        text=text,
        is_direct=True,
    )


async def user_turns(core: Core, chat: str) -> list[str]:
    async with core.engine.connect() as conn:
        rows = await conn.execute(
            select(Message.content)
            .where(Message.chat_key == f"test:{chat}", Message.role == "user")
            .order_by(Message.id)
        )
        return [r[0] for r in rows]


async def test_a_restart_takes_every_unanswered_message_in_order(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    # Several messages in each of 60 chats: most chats' later ones come after the first 100.
    backlog = [message(f"q{i}", f"c{i % 60}", i) for i in range(BACKLOG)]
    await leave_unanswered(settings, backlog)
    async with open_core(settings) as core:
        restorer = SinkRestorer()
        alone = core.engine.dialect.name == "sqlite"
        if not alone:
            # Replicas take only what ran out: the dead process's leases have run out.
            async with core.engine.begin() as conn:
                past = utcnow() - timedelta(seconds=1)
                await conn.execute(update(InboundEvent).values(lease_until=past))
        assert await core.service.resume({"test": restorer}, everything=alone) == BACKLOG
        # The person writes again in the last chat.
        await core.service.handle(message("newer", "c59", BACKLOG), RecordingSink())
        await core.service.drain()
        for chat in range(60):
            expected = [f"q{i}" for i in range(chat, BACKLOG, 60)]
            assert await user_turns(core, f"c{chat}") == expected + (["newer"] * (chat == 59))
        async with core.engine.connect() as conn:
            open_events = await conn.execute(
                select(InboundEvent.id).where(InboundEvent.status != "done")
            )
            assert open_events.all() == []
