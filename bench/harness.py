"""What every scenario shares: databases, a core whose model time is metered, sinks, stats."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from core.app import Core, open_core, tune_collector
from core.config import Settings
from core.types import ChatRef, IncomingMessage, Reply, Sender

POSTGRES_ADMIN_URL = os.environ.get(
    "RELAYBOT_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
BENCH_DB_PREFIX = "relaybot_bench"
WORKDIR = Path(tempfile.gettempdir()) / "relaybot-bench"
CREATED: set[tuple[str, str]] = set()  # (backend, name) of databases this process made


# -- model time ----------------------------------------------------------------------------
@dataclass(slots=True)
class Meter:
    """Seconds one message spent waiting on the model's HTTP exchanges."""

    seconds: float = 0.0
    exchanges: int = 0


METER: ContextVar[Meter | None] = ContextVar("bench_meter", default=None)


class _TimedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, meter: Meter) -> None:
        self._inner = inner
        self._meter = meter

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._inner.__aiter__()
        while True:
            started = time.perf_counter()
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                self._meter.seconds += time.perf_counter() - started
                return
            self._meter.seconds += time.perf_counter() - started
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class TimedTransport(httpx.AsyncBaseTransport):
    """Counts, per message, the time spent inside the HTTP exchange with the model.

    That is: sending the request and waiting for the response head, plus every wait for
    the next body bytes. Time between body chunks (relaybot parsing SSE and feeding the
    sink), building the request and JSON encoding stay relaybot's.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        meter = METER.get()
        started = time.perf_counter()
        response = await self._inner.handle_async_request(request)
        if meter is None:
            return response
        meter.seconds += time.perf_counter() - started
        meter.exchanges += 1
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _TimedStream(response.stream, meter)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


# -- sinks ---------------------------------------------------------------------------------
class _NullStream:
    __slots__ = ("chars", "sink")

    def __init__(self, sink: NullSink) -> None:
        self.chars = 0
        self.sink = sink

    async def append(self, delta: str) -> None:
        self.chars += len(delta)
        self.sink.pieces += 1

    async def retract(self, notice: str) -> None:
        self.chars = 0

    async def __aenter__(self) -> _NullStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class NullSink:
    """The smallest ReplySink: counts what it is given, keeps nothing."""

    __slots__ = ("answers", "errors", "pieces")

    def __init__(self) -> None:
        self.answers = 0
        self.pieces = 0  # streamed pieces of text, over all answers
        self.errors: list[str] = []

    async def send(self, reply: Reply) -> None:
        self.errors.append(reply.text)

    def stream(self) -> _NullStream:
        self.answers += 1
        return _NullStream(self)

    async def typing(self) -> None:
        return None

    async def chat_admin(self, sender_id: str) -> bool | None:
        return None


# -- databases -----------------------------------------------------------------------------
def postgres_url(name: str) -> str:
    """URL of the bench database `name` on the admin URL's server."""
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_ADMIN_URL).set(database=f"{BENCH_DB_PREFIX}_{name}")
    return url.render_as_string(hide_password=False)


async def _admin(statements: list[str]) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def postgres_available() -> bool:
    """True when the PostgreSQL server answers."""
    try:
        async with asyncio.timeout(5):
            await _admin(["SELECT 1"])
    except Exception:
        return False
    return True


async def fresh_database(backend: str, name: str) -> str:
    """An empty, migrated database for one scenario; returns its URL."""
    from core.db import migrate
    from core.db.store import create_engine

    if backend == "sqlite":
        WORKDIR.mkdir(parents=True, exist_ok=True)
        path = WORKDIR / f"{name}.db"
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        url = f"sqlite+aiosqlite:///{path}"
    else:
        db = f"{BENCH_DB_PREFIX}_{name}"
        await _admin([f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', f'CREATE DATABASE "{db}"'])
        url = postgres_url(name)
    CREATED.add((backend, name))
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    return url


async def drop_databases() -> None:
    """Remove every database `fresh_database` made."""
    while CREATED:
        await drop_database(*CREATED.pop())


async def drop_database(backend: str, name: str) -> None:
    """Remove a scenario's database."""
    if backend == "sqlite":
        for suffix in ("", "-wal", "-shm", ".lock"):
            (WORKDIR / f"{name}.db{suffix}").unlink(missing_ok=True)
    else:
        await _admin([f'DROP DATABASE IF EXISTS "{BENCH_DB_PREFIX}_{name}" WITH (FORCE)'])


# -- the core ------------------------------------------------------------------------------
def bench_settings(base_url: str, database_url: str, **overrides: Any) -> Settings:
    """Settings for a benchmark: the fake model, moderation off unless asked for."""
    values: dict[str, Any] = {
        "openai_api_key": "sk-bench-not-a-real-key",
        "openai_base_url": base_url,
        "database_url": database_url,
        "moderation": "off",
        "image_dir": str(WORKDIR / "images"),
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@asynccontextmanager
async def metered_core(settings: Settings) -> AsyncIterator[Core]:
    """open_core (without migrating: the parent did that) with the model time metered, in a
    process whose collector is set as `relaybot run` sets it."""
    tune_collector()
    async with open_core(settings, migrate_db=False) as core:
        core.http.transport = TimedTransport(core.http.transport)
        yield core


def message(chat: str, n: int, text: str | None = None, *, group: bool = False) -> IncomingMessage:
    """The n-th message of chat `chat` (unique event key)."""
    return IncomingMessage(
        chat=ChatRef("bench", chat),
        sender=Sender(id=f"u-{chat}", name="Bench User"),
        event_key=f"bench:{chat}:{n}:{time.monotonic_ns()}",
        text=text if text is not None else f"Hello relaybot, this is message {n} of {chat}.",
        is_direct=not group,
    )


async def handle_metered(core: Core, msg: IncomingMessage, sink: Any) -> tuple[float, Meter]:
    """Handle one message; (wall seconds of handle(), the model-time meter)."""
    meter = Meter()
    token = METER.set(meter)
    try:
        started = time.perf_counter()
        await core.service.handle(msg, sink)
        wall = time.perf_counter() - started
    finally:
        METER.reset(token)
    return wall, meter


# -- statistics ----------------------------------------------------------------------------
def percentile(values: list[float], pct: float) -> float:
    """The pct-th percentile (nearest rank) of `values`."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def reference_ms(rounds: int = 5) -> float:
    """The machine's speed right now: milliseconds for a fixed piece of pure Python work
    (JSON in and out, dict and string handling: what a message costs relaybot, minus I/O),
    the median of `rounds`. The same code on the same VM reads up to 2.5× slower from one
    hour to the next; printed beside the results, it says which machine they were taken on.
    """
    turns = [{"role": "user", "content": f"message {i} " * 8, "name": None} for i in range(300)]
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(20):
            body = json.dumps({"model": "gpt-4o-mini", "messages": turns})
            parsed = json.loads(body)["messages"]
            index = {f"{t['role']}:{n}": t["content"].split() for n, t in enumerate(parsed)}
            sum(len(words) for words in index.values())
        times.append(time.perf_counter() - started)
    return round(sorted(times)[len(times) // 2] * 1000, 2)


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def postgres_cpu_seconds() -> float:
    """CPU seconds used so far by all PostgreSQL server processes on this machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm_end = stat.rfind(")")
        comm = stat[stat.find("(") + 1 : comm_end]
        if not comm.startswith("postgres"):
            continue
        fields = stat[comm_end + 2 :].split()
        # utime, stime, and cutime, cstime: a backend that exits is added to the postmaster's.
        total += sum(int(value) for value in fields[11:15])
    return total / ticks


def run_in_process(fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)` in a fresh spawned process and return its result."""
    from bench.fake_proc import CTX

    with CTX.Pool(1) as pool:
        return pool.apply(fn, args)
