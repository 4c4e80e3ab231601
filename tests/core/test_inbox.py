"""The durable inbox: resumed work, answers never sent twice, shutdown, several replicas."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, update

from core.app import Core, open_core
from core.config import Settings
from core.db.models import InboundEvent
from core.errors import ShuttingDown
from core.inbox import decode_reply_refs, encode_reply_refs
from core.ports import ReplySink
from core.testing.fake_openai import FakeOpenAI
from core.testing.sink import RecordingSink
from core.types import ChatRef, IncomingMessage, Sender

_ids = itertools.count(1)


def message(text: str, chat: str = "c1") -> IncomingMessage:
    return IncomingMessage(
        chat=ChatRef("test", chat),
        sender=Sender("u1", "Alice"),
        event_key=f"test:{next(_ids)}",
        text=text,
    )


class SinkRestorer:
    """Resumes every stored test-platform message into one recording sink."""

    def __init__(self) -> None:
        self.sink = RecordingSink()
        self.restored: list[IncomingMessage] = []

    def restore(self, msg: IncomingMessage) -> tuple[IncomingMessage, ReplySink] | None:
        self.restored.append(msg)
        return msg, self.sink


async def statuses(core: Core) -> list[str]:
    async with core.engine.connect() as conn:
        rows = await conn.execute(select(InboundEvent.status).order_by(InboundEvent.id))
        return [r[0] for r in rows]


async def test_an_answered_event_is_closed_without_sending_again(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    await core.service.handle(message("hello"), RecordingSink())
    # What a crash right after storing the answer leaves behind: answered, claim run out.
    async with core.engine.begin() as conn:
        await conn.execute(update(InboundEvent).values(status="answered", lease_until=None))
    restorer = SinkRestorer()
    assert await core.service.resume({"test": restorer}) == 0
    await core.service.drain()
    assert restorer.sink.shown == []
    assert len(fake_openai.chat_requests()) == 1
    assert await statuses(core) == ["done"]


async def test_an_abandoned_event_is_answered_by_the_next_process(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.chunk_delay = 0.05
    fake_openai.queue_reply("a slow answer in many small pieces for you")
    async with open_core(settings.model_copy(update={"shutdown_grace": 0})) as first:
        sink = RecordingSink()
        job = await first.service.submit(message("question"), sink)
        assert job is not None
        await fake_openai.wait_for("/chat/completions")
        # Shutdown with no grace: the answer in progress is abandoned, the event released.
        await first.service.shutdown()
        assert job.cancelled()
    async with open_core(settings) as second:
        restorer = SinkRestorer()
        assert await second.service.resume({"test": restorer}) == 1
        await second.service.drain()
        assert restorer.sink.texts == ["echo: question"]
        assert await statuses(second) == ["done"]
        assert await second.store.count_messages("test:c1") == 2


async def cut_off_and_resumed(
    settings: Settings, fake_openai: FakeOpenAI, notes: list[tuple[str, ...]]
) -> SinkRestorer:
    """A first process streams an answer, notes `notes` (in order) as the messages showing
    it, and stops before storing it; a second resumes the message."""
    fake_openai.chunk_delay = 0.05
    fake_openai.queue_reply("a slow answer in many small pieces for you")
    async with open_core(settings.model_copy(update={"shutdown_grace": 0})) as first:
        msg = message("question")
        job = await first.service.submit(msg, RecordingSink())
        assert job is not None
        await fake_openai.wait_for("/chat/completions")
        for refs in notes:
            first.service.remember_reply(msg, refs)
        await first.service.shutdown()
    async with open_core(settings) as second:
        restorer = SinkRestorer()
        assert await second.service.resume({"test": restorer}) == 1
        await second.service.drain()
    return restorer


async def test_a_resumed_answer_knows_the_platform_message_already_showing_it(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """So the adapter continues in that message instead of posting the answer again."""
    restorer = await cut_off_and_resumed(settings, fake_openai, [("4711",)])
    # The adapter's sink had posted the answer's first message (its id on the platform).
    assert [m.reply_refs for m in restorer.restored] == [("4711",)]
    assert restorer.sink.texts == ["echo: question"]


async def test_a_resumed_answer_knows_every_message_of_a_rolled_over_answer_in_order(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """Each note replaces the last, in the order the adapter made them, however the
    background writes interleave."""
    # The answer rolled over twice, then its second message was replaced by a new one.
    notes = [("4711",), ("4711", "4712"), ("4711", "4712", "4713"), ("4711", "4714", "4713")]
    restorer = await cut_off_and_resumed(settings, fake_openai, notes)
    assert [m.reply_refs for m in restorer.restored] == [("4711", "4714", "4713")]


async def test_every_message_of_a_long_answer_is_noted(core: Core) -> None:
    """Forty rolled-over Slack messages (far past the old 255-character column): all kept."""
    refs = tuple(f"17{n:08d}.{n:06d}" for n in range(40))
    msg = message("question")
    assert await core.service.handle(msg, RecordingSink())
    # Noted while the event is open; reopen it the way a crash leaves it.
    async with core.engine.begin() as conn:
        await conn.execute(
            update(InboundEvent)
            .where(InboundEvent.event_key == msg.event_key)
            .values(status="received")
        )
    await core.service.inbox.remember_reply(msg.event_key, refs)
    async with core.engine.connect() as conn:
        stored = (
            await conn.execute(
                select(InboundEvent.reply_ref).where(InboundEvent.event_key == msg.event_key)
            )
        ).scalar_one()
    assert decode_reply_refs(stored) == refs
    assert encode_reply_refs(()) is None
    assert decode_reply_refs(None) == ()
    with pytest.raises(ValueError):
        encode_reply_refs(("a b",))


async def test_shutdown_lets_answers_in_progress_finish(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    fake_openai.chunk_delay = 0.02
    sink = RecordingSink()
    job = await core.service.submit(message("finish me"), sink)
    assert job is not None
    await core.service.shutdown(grace=30)
    assert sink.texts == ["echo: finish me"]
    # After shutdown nothing new is taken: the adapter does not acknowledge, so the
    # platform delivers the event again elsewhere.
    with pytest.raises(ShuttingDown):
        await core.service.submit(message("too late"), RecordingSink())


@pytest.fixture
async def replicas(settings: Settings) -> AsyncIterator[tuple[Core, Core]]:
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("several replicas share a PostgreSQL database")
    async with open_core(settings) as a, open_core(settings) as b:
        yield a, b


async def test_two_replicas_answer_one_chat_in_order_exactly_once(
    replicas: tuple[Core, Core], fake_openai: FakeOpenAI
) -> None:
    a, b = replicas
    fake_openai.chunk_delay = 0.005
    sinks = [RecordingSink() for _ in range(6)]
    msgs = [message(f"m{i}") for i in range(6)]
    jobs = []
    for i, msg in enumerate(msgs):
        # Events alternate between replicas, as a load balancer spreads webhooks.
        replica = a if i % 2 == 0 else b
        job = await replica.service.submit(msg, sinks[i])
        assert job is not None
        jobs.append(job)
        # Duplicate deliveries land on the other replica and are dropped there.
        other = b if replica is a else a
        assert await other.service.submit(msg, RecordingSink()) is None
    await asyncio.gather(*jobs)
    assert [s.texts for s in sinks] == [[f"echo: m{i}"] for i in range(6)]
    bodies = fake_openai.chat_requests()
    assert [len(body["messages"]) for body in bodies] == [2, 4, 6, 8, 10, 12]
    assert [m["content"] for m in bodies[-1]["messages"][1::2]] == [f"m{i}" for i in range(6)]
