"""Recovery that must not stall: after a crash, a lost database reply, a failed release or an
event this release cannot read, every message is still answered and no chat waits for ever;
a replica that stops never gives away a claim another replica holds."""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update

from bots.console import run_console
from core.app import Core, open_core
from core.config import Settings
from core.db.models import InboundEvent, utcnow
from core.inbox import _RECORD_AND_TAKE
from core.ports import ReplySink
from core.service import GIVE_UP_AFTER
from core.testing.fake_openai import FakeOpenAI
from core.testing.sink import RecordingSink
from core.types import Attachment, AttachmentKind, ChatRef, IncomingMessage, Sender

_ids = itertools.count(1)


def message(
    text: str, chat: str = "c1", platform: str = "test", attachments: tuple[Attachment, ...] = ()
) -> IncomingMessage:
    return IncomingMessage(
        chat=ChatRef(platform, chat),
        sender=Sender("u1", "Alice"),
        event_key=f"{platform}:recovery:{next(_ids)}",
        text=text,
        attachments=attachments,
    )


class SinkRestorer:
    """Resumes every stored test-platform message into one recording sink."""

    def __init__(self) -> None:
        self.sink = RecordingSink()

    def restore(self, msg: IncomingMessage) -> tuple[IncomingMessage, ReplySink] | None:
        return msg, self.sink


@pytest.fixture
def shared(settings: Settings) -> Settings:
    """Replicas on PostgreSQL with a one-second lease (recovery within seconds)."""
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("several replicas share a PostgreSQL database")
    return settings.model_copy(update={"lease_seconds": 1.0})


async def sweeping(cores: Iterable[Core], restorers: Iterable[SinkRestorer]) -> None:
    """Each replica's periodic sweep, as `bots.runner.sweep` runs it (every lease / 2)."""
    pairs = list(zip(cores, restorers, strict=True))
    while True:
        await asyncio.sleep(0.5)
        for core, restorer in pairs:
            await core.service.resume({"test": restorer})


async def within(seconds: float, sweep: Awaitable[None], *jobs: asyncio.Task[None]) -> bool:
    """Whether every job ends within `seconds` while the replicas sweep."""
    sweeper = asyncio.ensure_future(sweep)
    try:
        _, pending = await asyncio.wait(set(jobs), timeout=seconds)
    finally:
        sweeper.cancel()
    return not pending


async def events(core: Core) -> list[tuple[str, str]]:
    async with core.engine.connect() as conn:
        rows = await conn.execute(
            select(InboundEvent.event_key, InboundEvent.status).order_by(InboundEvent.id)
        )
        return [(r[0], r[1]) for r in rows]


async def test_messages_waiting_for_a_crashed_replicas_older_ones_leave_it_room_to_answer_them(
    shared: Settings, fake_openai: FakeOpenAI
) -> None:
    """After a kill, people write again in chats whose last message was left unanswered.
    Each new message waits for the older one; those must not take every working slot, or
    the older ones, resumed by the same replica, wait for a slot for ever (and with them
    every chat: the heartbeat keeps the leases alive, so no other replica steps in)."""
    # Two slots stand for the default 256: two chats with a message left over.
    settings = shared.model_copy(update={"max_in_flight": 2})
    async with open_core(settings) as dead:
        for chat in ("c1", "c2"):
            assert await dead.service.inbox.record(message(f"old {chat}", chat)) is not None
    async with open_core(settings) as a:
        # The dead process's claims hold a moment more, so the restart's own sweep is early.
        async with a.engine.begin() as conn:
            await conn.execute(
                update(InboundEvent).values(
                    claimed_by="dead", lease_until=utcnow() + timedelta(seconds=1.5)
                )
            )
        restorer = SinkRestorer()
        assert await a.service.resume({"test": restorer}) == 0
        sinks = {chat: RecordingSink() for chat in ("c1", "c2", "c3")}
        jobs = []
        for chat, sink in sinks.items():
            job = await a.service.submit(message(f"new {chat}", chat), sink)
            assert job is not None
            jobs.append(job)
        assert await within(10, sweeping([a], [restorer]), *jobs)
        assert sorted(restorer.sink.texts) == ["echo: old c1", "echo: old c2"]
        assert {chat: sink.texts for chat, sink in sinks.items()} == {
            chat: [f"echo: new {chat}"] for chat in sinks
        }


async def test_a_message_whose_stored_reply_was_lost_is_answered_and_its_chat_goes_on(
    shared: Settings, fake_openai: FakeOpenAI
) -> None:
    """The database stored the event, then the connection dropped before its reply came
    back: the platform is not acknowledged and delivers it again, a duplicate by then. Its
    claim (and its chat's turn) belong to no work of this replica: they run out, and the
    sweep answers it; the chat's next message follows it."""
    async with open_core(shared) as a, open_core(shared) as b:
        db = a.service.inbox.db
        real_fetch = db.fetch
        lost: list[str] = []

        async def reply_lost(statement: Any, params: dict[str, Any], **kw: Any) -> Any:
            rows = await real_fetch(statement, params, **kw)
            if statement is _RECORD_AND_TAKE and not lost:
                lost.append(params["event_key"])
                raise ConnectionResetError("connection lost after the commit")
            return rows

        db.fetch = reply_lost  # type: ignore[method-assign]
        first = message("first")
        with pytest.raises(ConnectionResetError):
            await a.service.submit(first, RecordingSink())
        assert await b.service.submit(first, RecordingSink()) is None
        second_sink = RecordingSink()
        second = await a.service.submit(message("second"), second_sink)
        assert second is not None
        restorers = [SinkRestorer(), SinkRestorer()]
        assert await within(10, sweeping([a, b], restorers), second)
        assert restorers[0].sink.texts + restorers[1].sink.texts == ["echo: first"]
        assert second_sink.texts == ["echo: second"]
        prompts = [body["messages"][-1]["content"] for body in fake_openai.chat_requests()]
        assert prompts == ["first", "second"]


async def test_a_chat_whose_release_failed_is_not_held_by_its_busy_replica(
    shared: Settings, fake_openai: FakeOpenAI
) -> None:
    """Giving a chat back failed once (a database hiccup): the replica, busy with another
    chat's long answer, must not keep that chat's turn alive; its next message, on another
    replica, is answered within about a lease."""
    async with open_core(shared) as a, open_core(shared) as b:
        inbox = a.service.inbox
        real_release = inbox.release_chat
        failed: list[str] = []

        async def release_fails_once(chat_key: str) -> None:
            if not failed:
                failed.append(chat_key)
                raise ConnectionResetError("connection lost")
            await real_release(chat_key)

        inbox.release_chat = release_fails_once  # type: ignore[method-assign]
        fake_openai.chunk_delay = 0.3
        fake_openai.queue_reply(" ".join(["word"] * 30))  # ~9 s
        busy = await a.service.submit(message("a long one", "other"), RecordingSink())
        assert busy is not None
        help_sink = RecordingSink()
        await a.service.handle(message("/help", "x"), help_sink)
        assert failed == ["test:x"]
        sink = RecordingSink()
        job = await b.service.submit(message("hello", "x"), sink)
        assert job is not None
        assert await within(4, asyncio.sleep(3600), job)
        assert sink.texts == ["echo: hello"]
        assert not busy.done()
        await busy


async def make_unreadable(core: Core, event_id: int) -> None:
    """What a newer release may leave: an attachment kind this one does not know."""
    async with core.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE inbound_events SET payload = replace(payload, "
                '\'"kind": "file"\', \'"kind": "hologram"\') WHERE id = :id'
            ),
            {"id": event_id},
        )


async def _nothing() -> bytes:
    return b""


NOTE = Attachment(AttachmentKind.FILE, "text/plain", 3, "a.txt", _nothing, ref="x")


async def test_an_event_this_release_cannot_read_does_not_stop_the_recovery_of_others(
    settings: Settings, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings.model_copy(update={"lease_seconds": 0.3})
    async with open_core(settings) as core:
        alone = not core.service.inbox.shared
        bad = await core.service.inbox.record(message("read this", "c-bad", attachments=(NOTE,)))
        assert bad is not None
        assert await core.service.inbox.record(message("hello", "c-good")) is not None
        # Both abandoned by a dead process; the first one unreadable here.
        async with core.engine.begin() as conn:
            await conn.execute(update(InboundEvent).values(claimed_by="dead", lease_until=None))
        await make_unreadable(core, bad)
        restorer = SinkRestorer()
        for i in range(3):  # the start's sweep, then periodic ones (bots.runner.sweep)
            await asyncio.sleep(0.4)
            await core.service.resume({"test": restorer}, everything=alone and i == 0)
            await core.service.drain()
        assert restorer.sink.texts == ["echo: hello"]
        assert [status for _, status in await events(core)] == ["failed", "done"]
        alerts = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert any("could not be read" in line for line in alerts), alerts


async def test_the_console_starts_beside_an_event_it_cannot_read(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("the console's own database")
    async with open_core(settings) as dead:
        bad = await dead.service.inbox.record(
            message("read this", "default", "console", attachments=(NOTE,))
        )
        assert bad is not None
        await make_unreadable(dead, bad)
    out = io.StringIO()
    async with open_core(settings) as core:
        await run_console(core, stdin=io.StringIO("hello\n"), stdout=out)
    assert "echo: hello" in out.getvalue().splitlines()


async def test_a_stopping_replica_does_not_give_away_a_message_another_replica_took_over(
    shared: Settings, fake_openai: FakeOpenAI
) -> None:
    """A stalled past its lease and B took its message over; A is stopped before its
    heartbeat noticed: A's shutdown must not release B's live claim (C would answer the
    message again at once)."""
    settings = shared.model_copy(update={"shutdown_grace": 0})
    async with open_core(settings) as a, open_core(settings) as b, open_core(settings) as c:
        fake_openai.chunk_delay = 0.1
        for _ in range(2):
            fake_openai.queue_reply(" ".join(["word"] * 60))
        job = await a.service.submit(message("question"), RecordingSink())
        assert job is not None
        await fake_openai.wait_for("/chat/completions")
        # A stalls: its heartbeat stops, its lease runs out, B's sweep takes the message.
        heartbeat = a.service._heartbeat
        assert heartbeat is not None
        heartbeat.cancel()
        stall: Callable[[], None] = lambda: None  # noqa: E731
        a.service._ensure_heartbeat = stall  # type: ignore[method-assign]
        await asyncio.sleep(1.3)
        assert await b.service.resume({"test": SinkRestorer()}) == 1
        await a.service.shutdown(grace=0)
        assert await c.service.resume({"test": SinkRestorer()}) == 0
        async with b.engine.connect() as conn:
            holder = await conn.scalar(select(InboundEvent.claimed_by))
        assert holder == b.service.inbox.worker_id
        await b.service.shutdown(grace=0)


class NotNow:
    """An adapter that cannot take a message on (stopping, say): restore gives None."""

    def restore(self, msg: IncomingMessage) -> tuple[IncomingMessage, ReplySink] | None:
        return None


async def test_a_message_no_adapter_takes_on_is_given_up_after_its_attempts(
    settings: Settings, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """Released at every sweep, it would be claimed for ever (and on PostgreSQL hold its chat
    each time): after GIVE_UP_AFTER attempts it is closed, and the operator told."""
    settings = settings.model_copy(update={"lease_seconds": 0.2})
    async with open_core(settings) as core:
        assert await core.service.inbox.record(message("hello")) is not None
        async with core.engine.begin() as conn:
            await conn.execute(update(InboundEvent).values(claimed_by="dead", lease_until=None))
        for _ in range(GIVE_UP_AFTER + 1):
            await core.service.resume({"test": NotNow()})
        assert [status for _, status in await events(core)] == ["failed"]
        alerts = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert any("given up after" in line for line in alerts), alerts
