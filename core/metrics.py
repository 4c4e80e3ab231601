"""Prometheus metrics, in a registry each core owns (so two cores, or two tests, never mix)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy import func, select

from core.db.database import answered_within
from core.db.models import NOT_ANSWERED, InboundEvent
from core.ports import ReplySink, ReplyStream
from core.types import Reply, ReplyKind

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from core.openai_client import Usage

log = logging.getLogger("relaybot.metrics")

# Model requests range from a moderation call (~100 ms) to a long streamed answer (minutes).
MODEL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
HANDLE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# How long a scrape waits for the database's figures (an unreachable database may take a
# minute to fail): past it the scrape answers with the last values.
REFRESH_TIMEOUT = 2.0


class Metrics:
    """Counters the service moves and the HTTP server exposes at `/metrics`."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_in = Counter(
            "relaybot_messages_in",
            "Incoming messages accepted for handling (redeliveries excluded)",
            ["platform"],
            registry=r,
        )
        self.duplicates = Counter(
            "relaybot_duplicate_events",
            "Redelivered platform events recognised and dropped",
            ["platform"],
            registry=r,
        )
        self.messages_out = Counter(
            "relaybot_messages_out",
            "Replies delivered: streamed answers, notices, errors, transcripts, images",
            ["platform", "kind"],
            registry=r,
        )
        self.handled = Counter(
            "relaybot_messages_handled",
            "Incoming messages finished, by outcome (done or failed)",
            ["platform", "outcome"],
            registry=r,
        )
        self.handle_seconds = Histogram(
            "relaybot_handle_seconds",
            "Time from receiving a message to its last reply, queueing included",
            ["platform"],
            buckets=HANDLE_BUCKETS,
            registry=r,
        )
        self.model_seconds = Histogram(
            "relaybot_model_request_seconds",
            "Duration of model requests (a streamed chat answer until its last chunk)",
            ["kind", "model"],
            buckets=MODEL_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "relaybot_tokens",
            "Model tokens used, as the endpoint reported them (else counted locally)",
            ["platform", "model", "type"],
            registry=r,
        )
        self.cost = Counter(
            "relaybot_cost_usd",
            "Estimated model cost in US dollars",
            ["platform", "model"],
            registry=r,
        )
        self.errors = Counter(
            "relaybot_errors",
            "Messages that failed, by error kind",
            ["platform", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "relaybot_in_flight",
            "Messages accepted and not yet finished (waiting for their chat's turn included)",
            ["platform"],
            registry=r,
        )
        self.inbox_depth = Gauge(
            "relaybot_inbox_depth",
            "Inbound events recorded but not yet answered (waiting their turn, or a voice note "
            "kept for a later attempt), read at scrape time",
            registry=r,
        )
        self._engine: AsyncEngine | None = None
        # Reads given up on (a database that does not answer), still being cancelled.
        self._abandoned: set[asyncio.Task[Any]] = set()
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}

    def child(self, metric: Counter | Gauge | Histogram, *values: str) -> Any:
        """`metric.labels(*values)`, looked up once per label values: prometheus_client
        checks the values and takes a lock on every `labels()` call, and a message makes
        about ten of them."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    # -- hooks the service calls ---------------------------------------------------------
    def watch_inbox(self, engine: AsyncEngine) -> None:
        """Read the inbox depth from this database at every scrape."""
        self._engine = engine

    def duplicate(self, platform: str) -> None:
        """A redelivered event was dropped."""
        self.child(self.duplicates, platform).inc()

    def received(self, platform: str) -> None:
        """A message was accepted; it is in flight until `finished`."""
        self.child(self.messages_in, platform).inc()
        self.child(self.in_flight, platform).inc()

    def failed(self, platform: str, kind: str) -> None:
        """A message failed with an error of `kind` (the error class name, or 'unexpected')."""
        self.child(self.errors, platform, kind).inc()

    def finished(self, platform: str, outcome: str, seconds: float) -> None:
        """A message accepted by `received` is done."""
        self.child(self.in_flight, platform).dec()
        self.child(self.handled, platform, outcome).inc()
        self.child(self.handle_seconds, platform).observe(seconds)

    @contextmanager
    def model_call(self, kind: str, model: str) -> Iterator[None]:
        """Time one model request (failed ones too)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.child(self.model_seconds, kind, model).observe(time.perf_counter() - started)

    def usage(self, platform: str, model: str, usage: Usage | None, cost_usd: float) -> None:
        """Tokens and cost of one model call."""
        if usage is not None:
            self.child(self.tokens, platform, model, "prompt").inc(usage.prompt_tokens)
            self.child(self.tokens, platform, model, "completion").inc(usage.completion_tokens)
        if cost_usd:
            self.child(self.cost, platform, model).inc(cost_usd)

    def counting(self, sink: ReplySink, platform: str) -> ReplySink:
        """`sink`, counting every reply delivered through it."""
        return _CountingSink(sink, self, platform)

    # -- exposition ----------------------------------------------------------------------
    async def refresh(self) -> None:
        """Update the gauges read from the database; a database that fails, or does not
        answer within REFRESH_TIMEOUT, keeps the last values."""
        if self._engine is None:
            return
        done, _ = await answered_within(
            self._read_inbox_depth(self._engine), REFRESH_TIMEOUT, self._abandoned
        )
        if not done:
            log.warning(
                "inbox depth unavailable: the database did not answer within %g s",
                REFRESH_TIMEOUT,
            )

    async def _read_inbox_depth(self, engine: AsyncEngine) -> None:
        query = select(func.count()).select_from(InboundEvent)
        try:
            async with engine.connect() as conn:
                depth = await conn.execute(query.where(InboundEvent.status.in_(NOT_ANSWERED)))
                self.inbox_depth.set(depth.scalar_one())
        except Exception as exc:  # the scrape must still answer; /readyz reports the database
            log.warning("inbox depth unavailable: %s", type(exc).__name__)

    async def render(self) -> bytes:
        """The Prometheus text exposition of this registry, gauges refreshed."""
        await self.refresh()
        return generate_latest(self.registry)


class _CountingSink:
    """Delegates to the adapter's sink; counts what reaches the person."""

    def __init__(self, inner: ReplySink, metrics: Metrics, platform: str) -> None:
        self._inner = inner
        self._metrics = metrics
        self._platform = platform

    async def send(self, reply: Reply) -> None:
        await self._inner.send(reply)
        self._metrics.child(self._metrics.messages_out, self._platform, reply.kind.value).inc()

    def stream(self) -> AbstractAsyncContextManager[ReplyStream]:
        return _CountedStream(self._inner.stream(), self._metrics, self._platform)

    async def typing(self) -> None:
        await self._inner.typing()

    async def chat_admin(self, sender_id: str) -> bool | None:
        return await self._inner.chat_admin(sender_id)


class _CountedStream:
    def __init__(
        self, inner: AbstractAsyncContextManager[ReplyStream], metrics: Metrics, platform: str
    ) -> None:
        self._inner = inner
        self._metrics = metrics
        self._platform = platform

    async def __aenter__(self) -> ReplyStream:
        return await self._inner.__aenter__()

    async def __aexit__(self, *exc: object) -> bool | None:
        result = await self._inner.__aexit__(*exc)  # type: ignore[arg-type]
        if exc[0] is None:  # a stream that failed is followed by an error notice, counted there
            self._metrics.child(
                self._metrics.messages_out, self._platform, ReplyKind.ANSWER.value
            ).inc()
        return result
