"""Push messages through `ConversationService.submit` while the endpoint misbehaves."""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from core.app import Core, open_core
from core.config import Settings
from core.db.models import InboundEvent, Message
from core.types import ChatRef, IncomingMessage, Reply, ReplyKind, Sender
from soak.faults import FaultRates, FaultyOpenAI


@dataclass(slots=True)
class Outcome:
    """What the person behind one message was shown (all deliveries of its event)."""

    chat: int
    index: int
    submitted: float = 0.0
    answers: int = 0  # streamed answers that completed
    partials: int = 0  # streamed answers cut short (a notice follows)
    notices: int = 0  # error notices
    told_at: float | None = None
    accepted: int = 0  # times the core took the event on (a redelivery must not count)


class SoakSink:
    """Implements core.ports.ReplySink; records into the message's Outcome."""

    def __init__(self, outcome: Outcome, done: list[tuple[int, int]]) -> None:
        self._outcome = outcome
        self._done = done

    def _told(self) -> None:
        if self._outcome.told_at is None:
            self._outcome.told_at = time.perf_counter()
            self._done.append((self._outcome.chat, self._outcome.index))

    async def send(self, reply: Reply) -> None:
        if reply.kind is ReplyKind.ERROR:
            self._outcome.notices += 1
        else:
            self._outcome.answers += 1
        self._told()

    @asynccontextmanager
    async def stream(self) -> AsyncIterator[_Stream]:
        stream = _Stream()
        try:
            yield stream
        except BaseException:
            if stream.text:
                self._outcome.partials += 1
            raise
        if stream.text:
            self._outcome.answers += 1
            self._told()

    async def typing(self) -> None:
        pass

    async def chat_admin(self, sender_id: str) -> bool | None:
        return None


@dataclass(slots=True)
class _Stream:
    text: str = ""

    async def append(self, delta: str) -> None:
        self.text += delta

    async def retract(self, notice: str) -> None:
        self.text = notice


@dataclass(slots=True)
class Report:
    """The soak's verdict."""

    messages: int
    seconds: float
    lost: int
    duplicated: int
    out_of_order: int
    unfinished_events: int
    answered: int
    cut_short: int
    failed_told: int
    redeliveries: int
    redeliveries_accepted: int
    latencies: list[float] = field(default_factory=list)
    injected: dict[str, int] = field(default_factory=dict)
    database: str = ""

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.out_of_order
            or self.unfinished_events
            or self.redeliveries_accepted
        )

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def render(self) -> str:
        lines = [
            f"soak: {self.messages} messages in {self.seconds:.1f} s "
            f"({self.messages / max(self.seconds, 1e-9):.0f} msg/s) on {self.database}",
            "faults injected: "
            + (", ".join(f"{k} x{v}" for k, v in sorted(self.injected.items())) or "none")
            + f"; redeliveries x{self.redeliveries}",
            f"answered {self.answered}, cut short (marked, told) {self.cut_short}, "
            f"failed (told) {self.failed_told}",
            f"lost {self.lost}   duplicated {self.duplicated}   "
            f"out of order {self.out_of_order}   unfinished events {self.unfinished_events}   "
            f"redeliveries accepted {self.redeliveries_accepted}",
        ]
        if self.latencies:
            lines.append(
                f"latency p50 {self.percentile(0.5) * 1000:.0f} ms   "
                f"p99 {self.percentile(0.99) * 1000:.0f} ms   "
                f"max {max(self.latencies) * 1000:.0f} ms   "
                f"mean {statistics.fmean(self.latencies) * 1000:.0f} ms"
            )
        lines.append("OK" if self.ok else "FAILED: messages lost, doubled or out of order")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class SoakConfig:
    """What to push and how hard."""

    messages: int = 10_000
    chats: int = 500
    concurrency: int = 64
    producers: int = 4
    fault_rate: float = 0.1
    duplicate_rate: float = 0.05
    seed: int = 1
    database_url: str | None = None


async def _check_database(core: Core, run: str) -> tuple[int, dict[str, int]]:
    """Events of this run still open; assistant rows per chat key."""
    async with core.engine.connect() as conn:
        unfinished = await conn.scalar(
            select(func.count())
            .select_from(InboundEvent)
            .where(
                InboundEvent.event_key.startswith(f"soak:{run}:"),
                InboundEvent.status.not_in(["done", "failed"]),
            )
        )
        rows = await conn.execute(
            select(Message.chat_key, func.count())
            .where(Message.chat_key.startswith(f"soak:{run}-"), Message.role == "assistant")
            .group_by(Message.chat_key)
        )
        return int(unfinished or 0), {str(k): int(n) for k, n in rows}


async def soak(config: SoakConfig) -> Report:
    """Run the soak; the report says what went wrong, if anything."""
    rng = random.Random(config.seed)
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="relaybot-soak-") as tmp:
        url = config.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'soak.db'}"
        rates = FaultRates().scaled(config.fault_rate)
        async with FaultyOpenAI(rates, config.seed) as fake:
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                openai_api_key="sk-soak-not-a-real-key",
                openai_base_url=fake.base_url,
                database_url=url,
                moderation="off",
                max_retries=2,
                max_connections=config.concurrency * 2 + 10,
            )
            async with open_core(settings) as core:
                return await _drive(core, fake, config, rng, run, url)


async def _drive(
    core: Core,
    fake: FaultyOpenAI,
    config: SoakConfig,
    rng: random.Random,
    run: str,
    url: str,
) -> Report:
    service = core.service
    outcomes = [
        Outcome(chat=i % config.chats, index=i // config.chats) for i in range(config.messages)
    ]
    done: list[tuple[int, int]] = []
    slots = asyncio.Semaphore(config.concurrency)
    jobs: list[asyncio.Task[None]] = []
    redeliveries: list[asyncio.Task[object]] = []
    counts: Counter[str] = Counter()

    def message(outcome: Outcome) -> IncomingMessage:
        return IncomingMessage(
            chat=ChatRef("soak", f"{run}-{outcome.chat}"),
            sender=Sender(f"u{outcome.chat}", f"user {outcome.chat}"),
            event_key=f"soak:{run}:{outcome.chat}:{outcome.index}",
            text=f"chat {outcome.chat} message {outcome.index}",
        )

    async def redeliver(msg: IncomingMessage, outcome: Outcome, delay: float) -> None:
        await asyncio.sleep(delay)
        counts["redeliveries"] += 1
        job = await service.submit(msg, SoakSink(outcome, done))
        if job is not None:
            outcome.accepted += 1
            counts["redeliveries accepted"] += 1
            await job

    async def produce(chats: range) -> None:
        mine = [o for o in outcomes if o.chat in chats]
        for outcome in mine:
            await slots.acquire()
            msg = message(outcome)
            outcome.submitted = time.perf_counter()
            job = await service.submit(msg, SoakSink(outcome, done))
            if job is None:
                slots.release()
                continue
            outcome.accepted += 1
            job.add_done_callback(lambda _: slots.release())
            jobs.append(job)
            if rng.random() < config.duplicate_rate:
                # The platform delivers it again: at once (racing) or a little later.
                delay = 0.0 if rng.random() < 0.5 else rng.uniform(0.0, 0.5)
                redeliveries.append(asyncio.create_task(redeliver(msg, outcome, delay)))

    started = time.perf_counter()
    share = -(-config.chats // config.producers)
    await asyncio.gather(
        *(
            produce(range(start, min(start + share, config.chats)))
            for start in range(0, config.chats, share)
        )
    )
    await asyncio.gather(*jobs, return_exceptions=True)
    await asyncio.gather(*redeliveries, return_exceptions=True)
    await service.drain()
    seconds = time.perf_counter() - started

    unfinished, assistant_rows = await _check_database(core, run)
    last_seen: dict[int, int] = {}
    out_of_order = 0
    for chat, index in done:
        if index < last_seen.get(chat, -1):
            out_of_order += 1
        last_seen[chat] = max(index, last_seen.get(chat, -1))
    stored_answers = sum(assistant_rows.values())
    shown_answers = sum(o.answers + o.partials for o in outcomes)
    duplicated = sum(
        1 for o in outcomes if o.accepted > 1 or o.answers > 1 or o.notices > 1
    ) + abs(stored_answers - shown_answers)
    return Report(
        messages=config.messages,
        seconds=seconds,
        lost=sum(1 for o in outcomes if o.told_at is None),
        duplicated=duplicated,
        out_of_order=out_of_order,
        unfinished_events=unfinished,
        answered=sum(1 for o in outcomes if o.answers and not o.notices),
        cut_short=sum(1 for o in outcomes if o.partials),
        failed_told=sum(1 for o in outcomes if o.notices and not o.partials),
        redeliveries=counts["redeliveries"],
        redeliveries_accepted=counts["redeliveries accepted"],
        latencies=[o.told_at - o.submitted for o in outcomes if o.told_at is not None],
        injected=dict(fake.injected),
        database=url.split("://", 1)[0] if config.database_url else "SQLite (temporary file)",
    )
