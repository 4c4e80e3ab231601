"""The scenarios of issue 8. Each `*_worker` runs in a fresh process and returns a dict."""

from __future__ import annotations

import asyncio
import os
import random
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, text

from bench.harness import (
    NullSink,
    bench_settings,
    handle_metered,
    message,
    metered_core,
    peak_rss_mb,
    percentile,
)
from core.app import Core
from core.db.models import Message
from core.tokens import counter_for

WARMUP = 30
# Scenario 4's bound on answers in progress (RELAYBOT_MAX_IN_FLIGHT). At 1 s per answer the
# default, 256, caps the rate at ~256 msg/s, below one process's capacity; an operator
# expecting thousands of chats at once raises it, as they raise RELAYBOT_MAX_CONNECTIONS.
# By Little's law it must cover rate × the time an answer holds its place: the model's 1 s
# plus the wait, when a wave of answers comes back together, for the loop to reach it
# (0.5-1 s here). At 1,000 the run stopped near 1,000 ÷ 1.7 s ≈ 590 msg/s with relaybot idle
# a fifth of the time (0.73-0.91 of ideal); 2,000 gave 0.87-1.02 at 258 MB peak RSS, 5,000
# 1.02 at 355 MB. BENCH_IN_FLIGHT overrides it, for such comparisons.
IN_FLIGHT = int(os.environ.get("BENCH_IN_FLIGHT", "2000"))
_TEXT = (
    "the relay bot answers questions about weather trains recipes code books music and "
    "travel plans while keeping every chat history in a database trimmed to the model "
    "context window with exact token counts so nothing is lost or sent twice"
)
WORDS = tuple(_TEXT.split())
LONG_ANSWER_WORDS = 300  # scenario 1's long answers: ~300 streamed chunks each


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _cpu() -> float:
    return time.process_time()


async def _warm(core: Core, chat: str, count: int = WARMUP) -> None:
    sink = NullSink()
    for i in range(count):
        await core.service.handle(message(chat, i), sink)
    if sink.errors:
        raise RuntimeError(f"warm-up failed: {sink.errors[0]}")


# -- 1. overhead per message ----------------------------------------------------------------
async def _sequential(
    core: Core, prefix: str, count: int, per_chat: int, text: str | None = None
) -> tuple[list[float], list[float], NullSink]:
    """`count` messages one after another, `per_chat` per chat: the walls of handle(), the
    model's times, and the sink that counted the answers."""
    sink = NullSink()
    walls: list[float] = []
    models: list[float] = []
    for i in range(count):
        wall, meter = await handle_metered(
            core, message(f"{prefix}{i // per_chat}", i, text), sink
        )
        walls.append(wall)
        models.append(meter.seconds)
    if sink.errors or sink.answers != count:
        raise RuntimeError(f"overhead run failed: {sink.errors[:1]}")
    return walls, models, sink


def _overheads(walls: list[float], models: list[float]) -> list[float]:
    """relaybot's time per message: the wall of handle() less the model's time."""
    return [w - m for w, m in zip(walls, models, strict=True)]


async def _overhead(base_url: str, db_url: str, count: int, per_chat: int) -> dict[str, Any]:
    async with metered_core(bench_settings(base_url, db_url)) as core:
        await _warm(core, "warm")
        walls, models, sink = await _sequential(core, "o", count, per_chat)
        # Long answers: the fake echoes the question word by word, one streamed chunk each,
        # as a model streams one per token. The difference to the short answers above, per
        # chunk, is what relaybot spends on each streamed piece of an answer.
        question = " ".join(WORDS[i % len(WORDS)] for i in range(LONG_ANSWER_WORDS))
        long_count = max(10, count // 4)
        long_walls, long_models, long_sink = await _sequential(
            core, "long", long_count, per_chat, question
        )
    overheads = _overheads(walls, models)
    long_overheads = _overheads(long_walls, long_models)
    short_p50, long_p50 = percentile(overheads, 50), percentile(long_overheads, 50)
    short_pieces, long_pieces = sink.pieces / count, long_sink.pieces / long_count
    return {
        "messages": count,
        "p50_ms": _ms(short_p50),
        "p99_ms": _ms(percentile(overheads, 99)),
        "wall_p50_ms": _ms(percentile(walls, 50)),
        "model_p50_ms": _ms(percentile(models, 50)),
        "long_messages": long_count,
        "long_chunks": round(long_pieces),
        "long_p50_ms": _ms(long_p50),
        "per_chunk_us": round((long_p50 - short_p50) / (long_pieces - short_pieces) * 1e6, 1),
    }


def overhead_worker(base_url: str, db_url: str, count: int) -> dict[str, Any]:
    """Scenario 1: overhead per message, sequential, 10 messages per chat."""
    return asyncio.run(_overhead(base_url, db_url, count, per_chat=10))


# -- 2. history length ----------------------------------------------------------------------
def _history_rows(
    chat_key: str, size: int, encoding: str, pool: list[tuple[str, int]]
) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    rows = []
    for i in range(size):
        text, tokens = pool[i % len(pool)]
        rows.append(
            {
                "chat_key": chat_key,
                "role": "user" if i % 2 == 0 else "assistant",
                "content": text,
                "name": None,
                "token_count": tokens,
                "encoding": encoding,
                "status": "ok",
                "event_key": None,
                "created_at": now,
            }
        )
    return rows


async def _prefill(core: Core, chat_key: str, size: int) -> None:
    counter = counter_for(core.settings.chat_model)
    rnd = random.Random(size)
    pool = []
    for _ in range(64):
        text = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(10, 40))).capitalize() + "."
        pool.append((text, counter.count(text)))
    rows = _history_rows(chat_key, size, counter.encoding_name, pool)
    async with core.engine.begin() as conn:
        for start in range(0, len(rows), 20_000):
            await conn.execute(insert(Message), rows[start : start + 20_000])


async def _history(base_url: str, db_url: str, sizes: list[int], count: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with metered_core(bench_settings(base_url, db_url)) as core:
        await _warm(core, "warm")
        for size in sizes:
            chats = [f"h{size}-{k}" for k in range(max(1, min(count, 10_000 // size)))]
            filled = time.perf_counter()
            for chat in chats:
                await _prefill(core, f"bench:{chat}", size)
            filled = time.perf_counter() - filled
            sink = NullSink()
            for chat in chats:  # one unmeasured message per chat: its steady state
                await core.service.handle(message(chat, -1), sink)
            overheads: list[float] = []
            for i in range(count):
                wall, meter = await handle_metered(core, message(chats[i % len(chats)], i), sink)
                overheads.append(wall - meter.seconds)
            if sink.errors:
                raise RuntimeError(f"history run failed: {sink.errors[:1]}")
            results[str(size)] = {
                "p50_ms": _ms(percentile(overheads, 50)),
                "p99_ms": _ms(percentile(overheads, 99)),
                "prefill_s": round(filled, 2),
                "chats": len(chats),
            }
    first, last = results[str(sizes[0])]["p50_ms"], results[str(sizes[-1])]["p50_ms"]
    results["ratio"] = round(last / first, 3) if first else float("nan")
    return results


def history_worker(base_url: str, db_url: str, sizes: list[int], count: int) -> dict[str, Any]:
    """Scenario 2: overhead per message against chats of `sizes` stored messages."""
    return asyncio.run(_history(base_url, db_url, sizes, count))


# -- 3. throughput ----------------------------------------------------------------------------
async def _drive(core: Core, prefix: str, total: int, chats: int, inflight: int) -> list[float]:
    """Handle `total` messages over `chats` chats, `inflight` at a time; their latencies."""
    sink = NullSink()
    latencies: list[float] = []
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < total:
            i = next_index
            next_index += 1
            started = time.perf_counter()
            await core.service.handle(message(f"{prefix}{i % chats}", i), sink)
            latencies.append(time.perf_counter() - started)

    async with asyncio.TaskGroup() as group:
        for _ in range(inflight):
            group.create_task(lane())
    if sink.errors:
        raise RuntimeError(f"{len(sink.errors)} messages failed, first: {sink.errors[0]}")
    return latencies


async def _throughput(
    base_url: str, db_url: str, prefix: str, total: int, chats: int, inflight: int, gate: Any
) -> dict[str, Any]:
    async with metered_core(bench_settings(base_url, db_url)) as core:
        await _warm(core, f"{prefix}warm")
        if gate is not None:  # start together with the other worker
            gate.wait()
        cpu = _cpu()
        started = time.monotonic()
        latencies = await _drive(core, prefix, total, chats, inflight)
        ended = time.monotonic()
        cpu = _cpu() - cpu
    return {
        "messages": total,
        "started": started,
        "ended": ended,
        "cpu_s": cpu,
        "rate": total / (ended - started),
        "latency_p50_ms": _ms(percentile(latencies, 50)),
    }


def throughput_worker(
    base_url: str,
    db_url: str,
    prefix: str,
    total: int,
    chats: int,
    inflight: int,
    gate: Any = None,
    out: Any = None,
) -> dict[str, Any]:
    """Scenario 3: messages per second over `chats` chats with a zero-latency model."""
    result = asyncio.run(_throughput(base_url, db_url, prefix, total, chats, inflight, gate))
    if out is not None:
        out.put(result)
    return result


# -- 4. concurrency -----------------------------------------------------------------------------
async def _concurrency(base_url: str, db_url: str, chats: int) -> dict[str, Any]:
    settings = bench_settings(
        base_url, db_url, max_connections=chats + 100, max_in_flight=IN_FLIGHT
    )
    async with metered_core(settings) as core:
        await asyncio.gather(
            *(core.service.handle(message(f"warm{i}", 0), NullSink()) for i in range(20))
        )
        sink = NullSink()
        latencies: list[float] = []

        async def one(i: int) -> None:
            started = time.perf_counter()
            try:
                await core.service.handle(message(f"k{i}", i), sink)
            except Exception as exc:  # e.g. no database connection within the pool timeout
                sink.errors.append(f"handle() raised {type(exc).__name__}: {exc}"[:200])
                return
            latencies.append(time.perf_counter() - started)

        cpu = _cpu()
        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for i in range(chats):
                group.create_task(one(i))
        wall = time.perf_counter() - started
        cpu = _cpu() - cpu
    # Failures are reported, not raised: under this load they are a finding in themselves.
    answered = chats - len(sink.errors)
    return {
        "chats": chats,
        "failed": len(sink.errors),
        "first_failure": sink.errors[0] if sink.errors else None,
        "wall_s": round(wall, 3),
        "rate": answered / wall,
        "cpu_s": cpu,
        "latency_p50_ms": _ms(percentile(latencies, 50)),
        "latency_p99_ms": _ms(percentile(latencies, 99)),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def concurrency_worker(base_url: str, db_url: str, chats: int) -> dict[str, Any]:
    """Scenario 4: `chats` chats in flight at once against a slow model."""
    return asyncio.run(_concurrency(base_url, db_url, chats))


# -- budgets (beside the six) ---------------------------------------------------------
async def _budgets(base_url: str, db_url: str, paid: int, count: int) -> dict[str, Any]:
    """Overhead with a person's, a chat's and the bot's budget set, before and after `paid`
    earlier requests this month (by 500 people in 1,000 chats, recorded as relaybot records
    them): checking a budget must not grow with the bot's traffic."""
    settings = bench_settings(
        base_url,
        db_url,
        budget_user_daily=1e6,
        budget_chat_daily=1e6,
        budget_global_monthly=1e6,
    )
    async with metered_core(settings) as core:
        await _warm(core, "warm")
        walls, models, _ = await _sequential(core, "b", count, 10)
        empty = _overheads(walls, models)
        now = datetime.now(UTC)
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        filled = time.perf_counter()
        for first in range(0, paid, 5000):
            await core.store.add_usage_rows(
                [
                    {
                        "created_at": start + (now - start) * (i / paid),
                        "platform": "bench",
                        "chat_key": f"bench:paid{i % 1000}",
                        "user_id": f"payer{i % 500}",
                        "model": "gpt-4o-mini",
                        "kind": "chat",
                        "prompt_tokens": 100,
                        "completion_tokens": 50,
                        "cost_usd": 0.0001,
                    }
                    for i in range(first, min(paid, first + 5000))
                ]
            )
        if core.engine.dialect.name == "postgresql":
            # Written in batches, each day total took thousands of updates in one
            # transaction, which PostgreSQL cannot prune as it goes; a month of requests
            # one at a time (HOT updates, pruned as they go) and autovacuum leave no such
            # pile of dead row versions. Vacuum, as those weeks would have.
            async with core.engine.connect() as conn:
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await auto.execute(text("VACUUM ANALYZE spend_totals, usage"))
        filled = time.perf_counter() - filled
        walls, models, _ = await _sequential(core, "c", count, 10)
        full = _overheads(walls, models)
    empty_p50, full_p50 = percentile(empty, 50), percentile(full, 50)
    return {
        "paid": paid,
        "messages": count,
        "empty_p50_ms": _ms(empty_p50),
        "full_p50_ms": _ms(full_p50),
        "ratio": round(full_p50 / empty_p50, 3),
        "fill_s": round(filled, 1),
    }


def budgets_worker(base_url: str, db_url: str, paid: int, count: int) -> dict[str, Any]:
    """Overhead per message under budgets, before and after `paid` requests this month."""
    return asyncio.run(_budgets(base_url, db_url, paid, count))


# -- 6. context use -------------------------------------------------------------------------------
def _request_tokens(encoding: Any, messages: list[dict[str, Any]]) -> int:
    """Prompt tokens of a chat request as OpenAI's cookbook counts them (gpt-4o family)."""
    tokens = 3  # the reply is primed with <|start|>assistant<|message|>
    for item in messages:
        tokens += 3
        for key, value in item.items():
            tokens += len(encoding.encode_ordinary(str(value)))
            if key == "name":
                tokens += 1
    return tokens


async def _context(db_url: str, turns: int, window: int, reply: int) -> dict[str, Any]:
    import tiktoken

    from core.testing.fake_openai import FakeOpenAI

    rnd = random.Random(6)
    async with FakeOpenAI() as fake:
        settings = bench_settings(fake.base_url, db_url, context_tokens=window, reply_tokens=reply)
        async with metered_core(settings) as core:
            sink = NullSink()
            for i in range(turns):
                words = rnd.choice((5, 20, 60, 150, 400))
                text = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, words)))
                # A group chat, so history carries speakers' names (they cost tokens too).
                await core.service.handle(message("ctx", i, text, group=True), sink)
            if sink.errors:
                raise RuntimeError(f"context run failed: {sink.errors[:1]}")
        encoding = tiktoken.encoding_for_model(settings.chat_model)
        budget = window - reply
        ratios = []
        trimmed = []
        for i, body in enumerate(fake.chat_requests()):
            ratio = _request_tokens(encoding, body["messages"]) / budget
            ratios.append(ratio)
            # Turn i has 2i + 1 history messages; fewer sent means the window was full.
            if len(body["messages"]) - 1 < 2 * i + 1:
                trimmed.append(ratio)
    return {
        "requests": len(ratios),
        "trimmed_requests": len(trimmed),
        "max": round(max(ratios), 5),
        "over_budget": sum(1 for r in ratios if r > 1.0),
        "min_trimmed": round(min(trimmed), 4) if trimmed else None,
        "mean_trimmed": round(sum(trimmed) / len(trimmed), 4) if trimmed else None,
        "window": window,
        "reply_tokens": reply,
    }


def context_worker(db_url: str, turns: int, window: int, reply: int) -> dict[str, Any]:
    """Scenario 6: tokens sent ÷ budget per request over a long chat."""
    return asyncio.run(_context(db_url, turns, window, reply))
