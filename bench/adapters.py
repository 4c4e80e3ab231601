"""Scenario 5, the adapter path: Telegram updates through the fake Bot API (long polling) and
Slack events through the real /slack/events endpoint, answered by the real adapters and core.

Three processes take part. The fake model runs in its own (`bench.fake_proc`, started by the
parent). This worker runs relaybot: the core, the app's HTTP server and both adapters, wired
as the adapter tests wire them. The fake platforms (`FakeTelegram`, `FakeSlack`) and the
driver that plays the people run in a third process, so neither their CPU nor their event
loop is relaybot's. The driver stamps each message when it injects it and the fakes stamp
the bot's finished answer when they record it; both use `time.monotonic()`, which on Linux
is one clock for every process.

Per platform:

- *sequential*: `count` messages one at a time (10 per chat, private chats / DMs).
  Overhead = end-to-end latency − the model's time inside it. What is left is relaybot (the
  adapter, the core, the database) plus the round trips to the fake platform, which answers
  at once. The model's time is metered as in scenario 1 (`harness.TimedTransport` on the
  core's HTTP client). `METER` does reach the tasks that answer (asyncio copies the context
  into every task it creates), but those are created by the adapter's poller and HTTP
  server, not per message: so one meter is set before anything starts, shared by every
  task; it remembers when time was added (`_Timeline`), and a message gets the model time
  added between its injection and its answer (`model_exchanges` checks that every
  exchange was seen).
- *concurrent*: `count` messages over `count / 5` chats, 50 chats talking at once, each
  chat sending its next message when it got the answer to the last; messages per second
  and relaybot's cores (CPU seconds ÷ wall seconds of this worker).

Also measured in the same worker, on the same database: the core alone (`handle()` with a
null sink, exactly scenario 1) over the same sequential count, so the adapter's share of
the overhead is the difference.
"""

from __future__ import annotations

import asyncio
import bisect
import importlib.util
import json
import os
import time
import traceback
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
from aiohttp import web

from bench.fake_proc import CTX, cpu_seconds
from bench.harness import (
    METER,
    Meter,
    NullSink,
    bench_settings,
    handle_metered,
    message,
    metered_core,
    percentile,
)
from core.testing.fake_slack import FakeSlack, event_callback, message_event, signed_request
from core.testing.fake_telegram import FakeTelegram

PLATFORMS = ("telegram", "slack")
SIGNING_SECRET = "bench-signing-secret"
SEQUENTIAL_PER_CHAT = 10  # sequential phase: messages per chat
PER_CHAT = 5  # concurrent phase: messages each chat sends, one after the other
IN_FLIGHT = 50  # concurrent phase: chats talking at once
WARMUP = 20  # unmeasured messages per platform first (connections, tokenizer, Bolt's auth.test)
TIMEOUT = 30.0  # seconds an answer may take before the message counts as lost
REPLY_METHODS = {
    # Telegram: the finished answer of a private chat is a sendMessage (drafts are previews;
    # a bot that cannot draft edits a message instead).
    "sendmessage",
    "editmessagetext",
}
SLACK_REPLY_PATHS = ("/api/chat.postMessage", "/api/chat.update", "/api/chat.stopStream")


def unavailable() -> str | None:
    """Why the scenario cannot run here, or None."""
    needed = ("telegram", "slack_bolt", "slack_sdk")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# -- the platform side (its own process) -------------------------------------------------------
class _Replies:
    """The answer each chat waits for, and when the fake recorded it."""

    def __init__(self) -> None:
        self._waiting: dict[int | str, tuple[str, asyncio.Future[float]]] = {}
        self.last_seen: dict[int | str, str] = {}

    def expect(self, chat: int | str, text: str) -> asyncio.Future[float]:
        """A future set to the time the bot's message in `chat` reads `text`."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[chat] = (text, future)
        return future

    def seen(self, chat: int | str, text: str) -> None:
        """The bot's message in `chat` now reads `text`."""
        at = time.monotonic()
        self.last_seen[chat] = text
        waiting = self._waiting.get(chat)
        if waiting is not None and waiting[0] == text and not waiting[1].done():
            del self._waiting[chat]
            waiting[1].set_result(at)


def _json_body(response: web.StreamResponse) -> Any:
    body = response.body if isinstance(response, web.Response) else None
    if response.status != 200 or not isinstance(body, bytes):
        return None
    return json.loads(body)


class BenchTelegram(FakeTelegram):
    """FakeTelegram that reports every message the bot sends or edits, and keeps no bodies."""

    def __init__(self, replies: _Replies) -> None:
        super().__init__()
        self.replies = replies

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await super()._record(request, handler)
        self.requests.clear()
        if request.match_info.get("method", "").lower() in REPLY_METHODS:
            data = _json_body(response)
            if data and data.get("ok") and isinstance(data.get("result"), dict):
                result = data["result"]
                self.replies.seen(int(result["chat"]["id"]), str(result.get("text", "")))
        return response


class BenchSlack(FakeSlack):
    """FakeSlack that reports every message the bot posts, updates or finishes streaming."""

    def __init__(self, replies: _Replies) -> None:
        super().__init__()
        self.replies = replies

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await super()._record(request, handler)
        self.requests.clear()
        if request.path in SLACK_REPLY_PATHS:
            data = _json_body(response)
            if data and data.get("ok"):
                channel, ts = str(data.get("channel", "")), str(data.get("ts", ""))
                for sent in reversed(self.messages):
                    if sent.channel == channel and sent.ts == ts:
                        if not sent.streaming:
                            self.replies.seen(channel, sent.visible_text)
                        break
        return response


Inject = Callable[[int | str, str], Awaitable[None]]


async def _drive(
    inject: Inject, replies: _Replies, chats: list[int | str], per_chat: int, lanes: int, tag: str
) -> dict[str, Any]:
    """`per_chat` messages in each chat, `lanes` chats at once; each chat waits for its answer.

    Chats take turns (round robin), so every lane stays busy until the last round.
    """
    turns: deque[tuple[int | str, int]] = deque((chat, 0) for chat in chats)
    timings: list[tuple[float, float]] = []
    failures: list[str] = []

    async def lane() -> None:
        while turns:
            chat, k = turns.popleft()
            text = f"Hello relaybot, this is message {k} of chat {tag}-{chat}."
            answered = replies.expect(chat, f"echo: {text}")
            started = time.monotonic()
            try:
                await inject(chat, text)
                async with asyncio.timeout(TIMEOUT):
                    ended = await answered
            except Exception as exc:
                seen = replies.last_seen.get(chat, "")
                failures.append(f"{chat}: {type(exc).__name__} {exc} (last seen {seen!r})"[:300])
                continue  # the chat's later messages would queue behind a lost one
            timings.append((started, ended))
            if k + 1 < per_chat:
                turns.append((chat, k + 1))

    lanes = min(lanes, len(chats))
    started = time.monotonic()
    cpu = cpu_seconds()
    async with asyncio.TaskGroup() as group:
        for _ in range(lanes):
            group.create_task(lane())
    return {
        "lanes": lanes,
        "timings": timings,
        "failed": len(failures),
        "first_failure": failures[0] if failures else None,
        "started": started,
        "ended": max((t[1] for t in timings), default=time.monotonic()),
        "cpu_s": cpu_seconds() - cpu,
    }


async def _platform(conn: Connection) -> None:
    replies = _Replies()
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT * 2)
    async with (
        BenchTelegram(replies) as telegram,
        BenchSlack(replies) as slack,
        aiohttp.ClientSession(connector=connector) as http,
    ):
        conn.send(
            {
                "telegram_token": telegram.token,
                "telegram_api_base_url": telegram.api_base_url,
                "telegram_file_base_url": telegram.file_base_url,
                "slack_bot_token": slack.bot_token,
                "slack_api_url": slack.api_url,
            }
        )
        events_url = ""

        async def to_telegram(chat: int | str, text: str) -> None:
            await telegram.push_update(telegram.text_update(int(chat), text))

        async def to_slack(chat: int | str, text: str) -> None:
            channel = str(chat)
            event = message_event(channel=channel, user="U" + channel[1:], text=text)
            payload = event_callback(event, team_id=slack.team_id, bot_user_id=slack.bot_user_id)
            body, headers = signed_request(SIGNING_SECRET, payload)
            async with http.post(events_url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"/slack/events answered {response.status}")

        injectors: dict[str, Inject] = {"telegram": to_telegram, "slack": to_slack}
        # The platform API methods the bot called, in order (to count calls per message).
        api_methods: dict[str, Callable[[], list[str]]] = {
            "telegram": lambda: [call.method for call in telegram.api_calls],
            "slack": lambda: [method for _, method, _ in slack.timeline],
        }
        loop = asyncio.get_running_loop()
        while True:
            command, *args = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                conn.send(("ok", None))
                return
            try:
                if command == "events_url":
                    events_url = args[0]
                    result: Any = None
                elif command == "drive":
                    platform, first, chats, per_chat, lanes, tag = args
                    ids: list[int | str] = (
                        [first + n for n in range(chats)]
                        if platform == "telegram"
                        else [f"D{first + n:08d}" for n in range(chats)]
                    )
                    methods = api_methods[platform]
                    before = len(methods())
                    result = await _drive(injectors[platform], replies, ids, per_chat, lanes, tag)
                    result["api_calls"] = dict(Counter(methods()[before:]))
                else:
                    raise ValueError(f"unknown command {command!r}")
            except Exception:
                conn.send(("error", traceback.format_exc()))
            else:
                conn.send(("ok", result))


def _platform_main(conn: Connection) -> None:
    asyncio.run(_platform(conn))


class _PlatformProcess:
    """The fake platforms and the driver, in a process of their own."""

    def __init__(self) -> None:
        parent, child = CTX.Pipe()
        self._conn = parent
        self._proc = CTX.Process(target=_platform_main, args=(child,), daemon=True)
        self._proc.start()
        if not parent.poll(30):
            raise RuntimeError("the fake platform process did not start")
        self.info: dict[str, str] = parent.recv()
        self._chats = 0

    async def call(self, *command: Any) -> Any:
        """Send a command and wait for its answer without blocking this event loop."""
        self._conn.send(command)
        status, value = await asyncio.get_running_loop().run_in_executor(None, self._conn.recv)
        if status != "ok":
            raise RuntimeError(f"fake platform process: {value}")
        return value

    async def drive(
        self, platform: str, chats: int, per_chat: int, lanes: int, tag: str
    ) -> dict[str, Any]:
        """Run people in `chats` fresh chats; returns timings, failures, the fake's CPU."""
        first = 100_000 + self._chats
        self._chats += chats
        result: dict[str, Any] = await self.call(
            "drive", platform, first, chats, per_chat, lanes, tag
        )
        if result["failed"]:
            raise RuntimeError(
                f"{platform}: {result['failed']} of {chats * per_chat} messages unanswered "
                f"within {TIMEOUT:.0f} s; first: {result['first_failure']}"
            )
        return result

    def close(self) -> None:
        try:
            self._conn.send(("stop",))
            self._conn.poll(10)
        except (BrokenPipeError, EOFError, OSError):
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)


# -- relaybot's side (this worker) ---------------------------------------------------------------
class _Timeline(Meter):
    """The harness's model-time meter, shared by every task, remembering when time was added.

    `TimedTransport` adds to `meter.seconds` when an exchange with the model has its response
    head and after each wait for body bytes; each addition is kept with its time.
    """

    __slots__ = ("_total", "added")

    def __init__(self) -> None:
        self._total = 0.0
        self.added: list[tuple[float, float]] = []
        super().__init__()

    @property
    def seconds(self) -> float:
        return self._total

    @seconds.setter
    def seconds(self, value: float) -> None:
        self.added.append((time.monotonic(), value - self._total))
        self._total = value

    def between(self, started: float, ended: float) -> float:
        """Model seconds added within [started, ended]."""
        times = [at for at, _ in self.added]
        lo, hi = bisect.bisect_left(times, started), bisect.bisect_right(times, ended)
        return sum(delta for _, delta in self.added[lo:hi])


def _summary(
    sequential: dict[str, Any],
    concurrent: dict[str, Any],
    timeline: _Timeline,
    cpu_s: float,
    wall_s: float,
    exchanges: int,
) -> dict[str, Any]:
    walls, models, overheads = [], [], []
    for started, ended in sequential["timings"]:
        model = timeline.between(started, ended)
        walls.append(ended - started)
        models.append(model)
        overheads.append(ended - started - model)
    timings = concurrent["timings"]
    span = concurrent["ended"] - concurrent["started"]
    latencies = [ended - started for started, ended in timings]
    return {
        "messages": len(timings),
        "chats_at_once": concurrent["lanes"],
        "rate": round(len(timings) / span, 1),
        "cores": round(cpu_s / wall_s, 2),
        "platform_cores": round(concurrent["cpu_s"] / span, 2),
        "latency_p50_ms": _ms(percentile(latencies, 50)),
        "latency_p99_ms": _ms(percentile(latencies, 99)),
        "sequential": len(overheads),
        "p50_ms": _ms(percentile(overheads, 50)),
        "p99_ms": _ms(percentile(overheads, 99)),
        "wall_p50_ms": _ms(percentile(walls, 50)),
        "model_p50_ms": _ms(percentile(models, 50)),
        "model_exchanges": exchanges,
        # Platform API calls per message in the concurrent phase (Telegram's getUpdates
        # apart: one long poll serves many messages).
        "api_calls_per_message": {
            method: round(n / len(timings), 2)
            for method, n in sorted(concurrent["api_calls"].items())
            if method != "getupdates"
        },
        "get_updates": concurrent["api_calls"].get("getupdates"),
    }


async def _core_alone(core: Any, count: int) -> dict[str, Any]:
    """Scenario 1 in this worker: handle() with a null sink, no adapter."""
    sink = NullSink()
    overheads = []
    for i in range(count):
        wall, meter = await handle_metered(core, message(f"c{i // SEQUENTIAL_PER_CHAT}", i), sink)
        overheads.append(wall - meter.seconds)
    if sink.errors or sink.answers != count:
        raise RuntimeError(f"core-alone run failed: {sink.errors[:1]}")
    return {"p50_ms": _ms(percentile(overheads, 50)), "p99_ms": _ms(percentile(overheads, 99))}


async def _adapters(base_url: str, db_url: str, count: int) -> dict[str, Any]:
    from pydantic import SecretStr

    from bots.http_server import HttpServer
    from bots.runner import PlatformAdapter
    from bots.slack import SlackAdapter
    from bots.telegram import TelegramAdapter
    from bots.telegram.limits import FloodLimits
    from core.tokens import counter_for

    # Set before anything starts: the poller, the HTTP server's request tasks and the answer
    # tasks the core creates all inherit this context, and so this one meter.
    timeline = _Timeline()
    METER.set(timeline)
    platform = _PlatformProcess()
    try:
        info = platform.info
        settings = bench_settings(
            base_url,
            db_url,
            telegram_bot_token=SecretStr(info["telegram_token"]),
            telegram_api_base_url=info["telegram_api_base_url"],
            telegram_file_base_url=info["telegram_file_base_url"],
            slack_bot_token=SecretStr(info["slack_bot_token"]),
            slack_signing_secret=SecretStr(SIGNING_SECRET),
            slack_api_url=info["slack_api_url"],
        )
        async with metered_core(settings) as core:
            # As the adapter tests wire them. Telegram's flood limits are not the subject here:
            # the default FloodLimits, which bots/runner.py uses, allows 30 messages a second
            # in all, as Telegram does. BENCH_FLOOD_LIMITS=1 runs with them, to see that.
            limits = (
                FloodLimits()
                if os.environ.get("BENCH_FLOOD_LIMITS") == "1"
                else FloodLimits(overall=(0, 1.0), group=(0, 60.0))
            )
            server = HttpServer(
                "127.0.0.1", 0, ready_check=core.readiness_problem, metrics=core.service.metrics
            )
            adapters: dict[str, PlatformAdapter] = {
                "telegram": TelegramAdapter(core, server, rate_limiter=limits),
                "slack": SlackAdapter(core, server),
            }
            for adapter in adapters.values():
                await adapter.setup()
            await asyncio.to_thread(counter_for, core.settings.chat_model)
            await server.start()
            try:
                for adapter in adapters.values():
                    await adapter.start()
                await platform.call("events_url", f"http://127.0.0.1:{server.port}/slack/events")
                results: dict[str, Any] = {}
                for name in PLATFORMS:
                    await platform.drive(name, WARMUP // 5, 5, WARMUP // 5, f"{name}-warm")
                    exchanges = timeline.exchanges
                    sequential = await platform.drive(
                        name, max(1, count // SEQUENTIAL_PER_CHAT), SEQUENTIAL_PER_CHAT, 1, "seq"
                    )
                    exchanges = timeline.exchanges - exchanges
                    cpu, wall = time.process_time(), time.monotonic()
                    concurrent = await platform.drive(
                        name, max(1, count // PER_CHAT), PER_CHAT, IN_FLIGHT, "conc"
                    )
                    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
                    results[name] = _summary(
                        sequential, concurrent, timeline, cpu, wall, exchanges
                    )
                results["core_alone"] = await _core_alone(core, count)
            finally:
                for adapter in reversed(adapters.values()):
                    await adapter.stop()
                await server.stop()
    finally:
        platform.close()
    return results


def adapters_worker(base_url: str, db_url: str, count: int) -> dict[str, Any]:
    """Scenario 5: the adapter path, messages per second and overhead per message."""
    return asyncio.run(_adapters(base_url, db_url, count))
