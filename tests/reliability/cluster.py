"""Real `relaybot run` replicas behind a pretend load balancer, as Telegram and Slack see them.

The fakes (Bot API, Slack Web API, OpenAI) run in threads of the test process; each replica
is its own process with its own HTTP port on 127.0.0.1, all sharing one PostgreSQL
database, and runs both platforms (Telegram by webhook, Slack in HTTP mode).
`Telegram.deliver` POSTs an update to a replica's webhook the way Telegram does and, when
no 200 comes back (a killed or stopping process), delivers it again to another replica;
`Slack.deliver` does the same with signed Events API requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bots.slack.adapter import EVENTS_PATH
from bots.telegram.adapter import SECRET_HEADER, WEBHOOK_PATH
from core.db import migrate
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import FakeSlack, event_callback, message_event, signed_request
from core.testing.fake_telegram import FakeTelegram
from tests.conftest import reset_postgres
from tests.processes import RELAYBOT, wait_ready

WEBHOOK_SECRET = "replica-webhook-secret_0123456789"
SLACK_SIGNING_SECRET = "replica-slack-signing-secret"
PUBLIC_WEBHOOK_URL = "https://example.invalid/telegram/webhook"
API_KEY = "sk-test-replicas-0123456789abcdef"


def run_sql(url: str, statement: str, **params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on `url` from synchronous test code; the rows it returned."""

    async def go() -> list[tuple[Any, ...]]:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                result = await conn.execute(text(statement), params)
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(go())


def fresh_database(url: str) -> None:
    """Empty the test database and migrate it once, as a deploy's migration job would."""

    async def go() -> None:
        await reset_postgres(url)
        engine = create_async_engine(url)
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(go())


@dataclass
class Replica:
    """One `relaybot run` process."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    alive: bool = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9: no clean-up, no goodbye."""
        self.alive = False
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait: the graceful way out."""
        self.alive = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise
        return int(self.proc.returncode)


@dataclass
class Cluster:
    """Fakes in threads plus replicas started with `start`."""

    tmp: Path
    database_url: str
    telegram: FakeTelegram
    openai: FakeOpenAI
    slack: FakeSlack
    env: dict[str, str] = field(default_factory=dict)
    replicas: list[Replica] = field(default_factory=list)
    _count: int = 0

    def base_env(self) -> dict[str, str]:
        keep = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RELAYBOT_", "OPENAI_", "TELEGRAM_", "SLACK_"))
        }
        keep.update(
            {
                "OPENAI_API_KEY": API_KEY,
                "OPENAI_BASE_URL": self.openai.base_url,
                "TELEGRAM_BOT_TOKEN": self.telegram.token,
                "TELEGRAM_API_BASE_URL": self.telegram.api_base_url,
                "TELEGRAM_FILE_BASE_URL": self.telegram.file_base_url,
                "TELEGRAM_WEBHOOK_URL": PUBLIC_WEBHOOK_URL,
                "TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "SLACK_BOT_TOKEN": self.slack.bot_token,
                "SLACK_SIGNING_SECRET": SLACK_SIGNING_SECRET,
                "SLACK_API_URL": self.slack.api_url,
                "RELAYBOT_HTTP_HOST": "127.0.0.1",
                "RELAYBOT_DATABASE_URL": self.database_url,
                "RELAYBOT_AUTO_MIGRATE": "false",
                "RELAYBOT_MODERATION": "off",
                "RELAYBOT_LEASE_SECONDS": "3",
                "RELAYBOT_SHUTDOWN_GRACE": "5",
                "RELAYBOT_LOG_FORMAT": "json",
                "RELAYBOT_LOG_LEVEL": "INFO",
                "RELAYBOT_MAX_RETRIES": "1",
            }
        )
        keep.update(self.env)
        return keep

    def start(self, count: int, within: float = 60) -> list[Replica]:
        """Start `count` replicas and wait until each is ready and takes webhooks."""
        started = []
        registered = len(self.telegram.calls("/setWebhook"))
        for _ in range(count):
            self._count += 1
            name = f"r{self._count}"
            env = self.base_env() | {"RELAYBOT_HTTP_PORT": "0"}  # the port it binds: in its log
            log_path = self.tmp / f"{name}.log"
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    [RELAYBOT, "run"],
                    cwd=self.tmp,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            started.append(Replica(name, 0, proc, log_path))
        self.replicas.extend(started)
        deadline = time.monotonic() + within
        for replica in started:
            self._wait_ready(replica, deadline)
        # Each replica registers the webhook once it accepts deliveries.
        self.telegram.wait_sync(
            "/setWebhook", registered + count, within=max(1.0, deadline - time.monotonic())
        )
        return started

    @staticmethod
    def _wait_ready(replica: Replica, deadline: float) -> None:
        served = wait_ready(replica.proc, replica.url, deadline, replica.log, replica.name)
        replica.port = int(served.rsplit(":", 1)[1])

    def until_acknowledged(
        self, first: Replica, post: Callable[[Replica, int], int | str], what: str
    ) -> Replica:
        """`post(replica, attempt)` to `first`, then to the others, until one answers 200,
        as a platform delivering through the load balancer does; returns that replica."""
        candidates = [first] + [r for r in self.replicas if r is not first]
        for attempt in range(50):
            for replica in candidates:
                if not replica.alive and replica is not first:
                    continue
                if post(replica, attempt) == 200:
                    return replica
            candidates = self.live()
            time.sleep(0.1)  # every replica refused: the platform backs off, then tries again
        raise AssertionError(f"{what} was never acknowledged")

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    def stop_all(self, timeout: float = 30) -> dict[str, int]:
        """SIGTERM every live replica at once; their exit codes."""
        live = self.live()
        for replica in live:
            replica.alive = False
            replica.proc.send_signal(signal.SIGTERM)
        return {r.name: r.proc.wait(timeout) for r in live}

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(f"--- {r.name}\n{r.log()[-tail:]}" for r in self.replicas)

    def close(self) -> None:
        for replica in self.replicas:
            if replica.proc.poll() is None:
                replica.proc.kill()
                replica.proc.wait(10)

    def events(self, chats: Iterable[int | str]) -> list[tuple[str, str]]:
        """(event_key, status) of the stored inbound events of these chats (Telegram chat
        ids, or chat keys)."""
        rows = run_sql(
            self.database_url,
            "SELECT event_key, status FROM inbound_events WHERE chat_key = ANY(:keys)",
            keys=[chat if isinstance(chat, str) else f"telegram:{chat}" for chat in chats],
        )
        return [(str(k), str(s)) for k, s in rows]

    def wait_all_done(self, chats: Iterable[int | str], expected: int, within: float = 60) -> None:
        """Wait until `expected` events of `chats` are stored and none is unfinished."""
        chats = list(chats)
        deadline = time.monotonic() + within
        while True:
            statuses = [s for _, s in self.events(chats)]
            if len(statuses) >= expected and all(s in ("done", "failed") for s in statuses):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"unfinished events: {sorted(statuses)}\n{self.logs()}")
            time.sleep(0.2)  # the database has no change feed to wait on

    def history(self, chat_key: str) -> list[tuple[str, str, str]]:
        """(role, content, status) of a chat's stored messages, in order."""
        rows = run_sql(
            self.database_url,
            "SELECT role, content, status FROM messages WHERE chat_key = :k ORDER BY id",
            k=chat_key,
        )
        return [(str(r), str(c), str(s)) for r, c, s in rows]


class Telegram:
    """Delivers updates to replicas as Telegram's webhook does: again elsewhere until a 200."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.lock = threading.Lock()
        self.deliveries: list[tuple[int, str, int | str]] = []  # (update_id, replica, outcome)
        self.latencies: list[float] = []  # seconds per POST
        # One connection pool for every delivery thread (httpx clients are thread-safe).
        self.client = httpx.Client(timeout=15)

    def post(self, replica: Replica, update: dict[str, Any]) -> int | str:
        """One POST; the HTTP status, or the name of the transport error."""
        started = time.monotonic()
        try:
            response = self.client.post(
                replica.url + WEBHOOK_PATH,
                content=json.dumps(update),
                headers={"Content-Type": "application/json", SECRET_HEADER: WEBHOOK_SECRET},
            )
            outcome: int | str = response.status_code
        except httpx.TransportError as exc:
            outcome = type(exc).__name__
        with self.lock:
            self.deliveries.append((int(update["update_id"]), replica.name, outcome))
            self.latencies.append(time.monotonic() - started)
        return outcome

    def deliver(self, update: dict[str, Any], first: Replica) -> Replica:
        """POST until some replica answers 200; returns that replica."""
        return self.cluster.until_acknowledged(
            first,
            lambda replica, attempt: self.post(replica, update),
            f"update {update['update_id']}",
        )


def updates_for(
    telegram: FakeTelegram, chats: Sequence[int], per_chat: int
) -> dict[int, list[dict[str, Any]]]:
    """Text updates from private chats, built before any replica runs (the fake is not
    thread-safe for building while it serves)."""
    return {
        chat: [telegram.text_update(chat, f"chat {chat} says {i}") for i in range(per_chat)]
        for chat in chats
    }


def answers(telegram: FakeTelegram, chat: int) -> list[tuple[int | None, str]]:
    """(replied-to message id, text) of every message the bot sent to a chat, in order."""
    return [(m.reply_to, m.text) for m in telegram.log.get(chat, [])]


def expected_answers(updates: Iterable[dict[str, Any]]) -> list[tuple[int | None, str]]:
    return [(u["message"]["message_id"], "echo: " + u["message"]["text"]) for u in updates]


def check_prompts_in_order(
    openai: FakeOpenAI, plan: dict[int, list[dict[str, Any]]]
) -> dict[str, int]:
    """Every chat request carries exactly its chat's earlier turns, in order.

    Returns how many requests each message text caused.
    """
    return check_texts_asked_in_order(
        openai, {chat: [u["message"]["text"] for u in ups] for chat, ups in plan.items()}
    )


def check_texts_asked_in_order(openai: FakeOpenAI, said: dict[Any, list[str]]) -> dict[str, int]:
    """Every chat request carries exactly its chat's earlier turns (`said` in each chat,
    each answered "echo: ..."), in order. Returns how many requests each text caused."""
    position = {text: (chat, i) for chat, texts in said.items() for i, text in enumerate(texts)}
    seen: dict[str, int] = {}
    for body in openai.chat_requests():
        contents = [m["content"] for m in body["messages"][1:]]
        if contents[-1] not in position:
            continue  # another test's chat
        chat, i = position[contents[-1]]
        expected: list[str] = []
        for t in said[chat][: i + 1]:
            expected += [t, "echo: " + t]
        assert contents == expected[:-1], f"chat {chat} message {i} was asked with {contents}"
        seen[contents[-1]] = seen.get(contents[-1], 0) + 1
    return seen


def spread(plan: dict[Any, list[Any]], deliver_chat: Callable[[Any, list[Any]], None]) -> None:
    """Deliver every chat's updates in order, all chats at the same time (one thread each)."""
    errors: list[BaseException] = []

    def run(chat: Any, ups: list[Any]) -> None:
        try:
            deliver_chat(chat, ups)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(chat, ups), name=f"chat-{chat}")
        for chat, ups in plan.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if errors:
        raise errors[0]


def expected_history(updates: Iterable[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(role, content, status) rows a chat's history holds once every update is answered."""
    rows: list[tuple[str, str, str]] = []
    for update in updates:
        text_ = update["message"]["text"]
        rows += [("user", text_, "ok"), ("assistant", "echo: " + text_, "ok")]
    return rows


class Slack:
    """Delivers events to replicas as Slack's Events API does: signed, and retried (same
    event id, X-Slack-Retry-Num) until a 200, which a load balancer may route anywhere."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.lock = threading.Lock()
        self.deliveries: list[tuple[str, str, int | str]] = []  # (event_id, replica, outcome)
        self.client = httpx.Client(timeout=15)

    def post(
        self, replica: Replica, event: dict[str, Any], event_id: str, retry_num: int | None = None
    ) -> int | str:
        """One signed POST of `event`; the HTTP status, or the name of the transport error."""
        payload = event_callback(event, team_id=self.cluster.slack.team_id, event_id=event_id)
        body, headers = signed_request(SLACK_SIGNING_SECRET, payload, retry_num=retry_num)
        try:
            response = self.client.post(replica.url + EVENTS_PATH, content=body, headers=headers)
            outcome: int | str = response.status_code
        except httpx.TransportError as exc:
            outcome = type(exc).__name__
        with self.lock:
            self.deliveries.append((event_id, replica.name, outcome))
        return outcome

    def deliver(self, event: dict[str, Any], event_id: str, first: Replica) -> Replica:
        """POST until some replica answers 200, as Slack's retries do; returns that replica."""
        return self.cluster.until_acknowledged(
            first,
            lambda replica, attempt: self.post(
                replica, event, event_id, retry_num=attempt or None
            ),
            f"event {event_id}",
        )


def slack_events(
    team: str, said: dict[str, list[str]]
) -> dict[str, list[tuple[dict[str, Any], str]]]:
    """Each DM's messages as (Slack message event, event id), in order."""
    return {
        dm: [
            (message_event(channel=dm, text=text, team_id=team), f"Ev{dm}{i}")
            for i, text in enumerate(texts)
        ]
        for dm, texts in said.items()
    }


def check_slack_conversations(cluster: Cluster, said: dict[str, list[str]]) -> dict[str, int]:
    """Each DM shows exactly one answer per message, in order; every event is done and each
    history is stored complete and in order. Returns how many requests each text caused."""
    team = cluster.slack.team_id
    for dm, texts in said.items():
        shown = [m.visible_text for m in cluster.slack.visible(dm)]
        assert shown == [f"echo: {text}" for text in texts], dm
    asked = check_texts_asked_in_order(cluster.openai, said)
    keys = [f"slack:{team}:{dm}" for dm in said]
    total = sum(len(texts) for texts in said.values())
    assert sorted(s for _, s in cluster.events(keys)) == ["done"] * total
    for dm, texts in said.items():
        rows = [r for t in texts for r in (("user", t, "ok"), ("assistant", f"echo: {t}", "ok"))]
        assert cluster.history(f"slack:{team}:{dm}") == rows, dm
    return asked


@dataclass
class Kill:
    """Which replica `deliver_and_kill_one` killed, and when."""

    victim: Replica
    after: int  # acknowledged deliveries before the kill
    delay: float  # seconds after those

    def __str__(self) -> str:
        return f"killed {self.victim.name} after {self.after} acks + {self.delay:.2f} s"


def deliver_and_kill_one(
    cluster: Cluster,
    rng: random.Random,
    plan: dict[Any, list[Any]],
    deliver: Callable[[Any, Replica], None],
) -> Kill:
    """Deliver every chat's items (`deliver(item, replica)` until acknowledged), all chats
    at once and each in order, spread over the live replicas; meanwhile kill -9 one replica
    drawn from `rng`, after a drawn number of acknowledged deliveries and a drawn delay, so
    the kill lands before, during or after a model call."""
    total = sum(len(items) for items in plan.values())
    live = cluster.live()
    kill = Kill(rng.choice(live), rng.randint(total // 5, total // 2), rng.uniform(0.0, 0.4))
    acked = threading.Condition()
    acked_count = 0

    def killer() -> None:
        with acked:
            acked.wait_for(lambda: acked_count >= kill.after, timeout=60)
        threading.Event().wait(kill.delay)
        kill.victim.kill()

    def deliver_chat(chat: Any, items: list[Any]) -> None:
        nonlocal acked_count
        n = list(plan).index(chat)
        for i, item in enumerate(items):
            deliver(item, live[(n + i) % len(live)])
            with acked:
                acked_count += 1
                acked.notify_all()

    kill_thread = threading.Thread(target=killer, name="killer")
    kill_thread.start()
    spread(plan, deliver_chat)
    kill_thread.join(60)
    assert not kill.victim.alive
    return kill
