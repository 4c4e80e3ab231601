"""SIGTERM as an operator (or Kubernetes) sends it: every answer in progress gets
RELAYBOT_SHUTDOWN_GRACE to finish, whether this process received it or resumed it; what
cannot finish is released for another replica or the next start; nothing new is taken
meanwhile; and a second signal stops at once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bots.runner import run_platforms
from bots.slack.adapter import EVENTS_PATH
from core.app import open_core
from core.config import Settings
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import FakeSlack, event_callback, message_event, signed_request
from core.testing.fake_telegram import FakeTelegram
from core.types import ChatRef, IncomingMessage, Sender
from tests.processes import RELAYBOT, clean_env, endpoint_env, wait_ready

CHAT = 1001
ANSWER = "one two three four five six seven eight"
SIGNING_SECRET = "a-signing-secret"


async def stored_events(url: str) -> list[tuple[str, str, str | None]]:
    """(event key, status, claimed by) of every stored event, oldest first."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT event_key, status, claimed_by FROM inbound_events ORDER BY id")
            )
            return [(r[0], r[1], r[2]) for r in rows]
    finally:
        await engine.dispose()


def events(url: str) -> list[tuple[str, str, str | None]]:
    """`stored_events`, from a test that is not a coroutine."""
    return asyncio.run(stored_events(url))


# -- answers resumed from a process that died, then SIGTERM (the real runner) --------------


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


def telegram_settings(
    database_url: str, tg: FakeTelegram, oa: FakeOpenAI, grace: float
) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key="sk-test-not-a-real-key",
        openai_base_url=oa.base_url,
        database_url=database_url,
        moderation="off",
        max_retries=0,
        telegram_bot_token=SecretStr(tg.token),
        telegram_api_base_url=tg.api_base_url,
        telegram_file_base_url=tg.file_base_url,
        http_host="127.0.0.1",
        http_port=0,
        shutdown_grace=grace,
    )


async def leave_a_message_behind(settings: Settings) -> None:
    """A process that stored a message and died before answering it (its lease: 1 s)."""
    left = IncomingMessage(
        chat=ChatRef("telegram", str(CHAT)),
        sender=Sender(str(CHAT), "ada"),
        event_key=f"telegram:{CHAT}:41",
        text="the question left over",
        platform_message_id="41",
    )
    async with open_core(settings.model_copy(update={"lease_seconds": 1.0})) as dead:
        assert await dead.service.inbox.record(left) is not None
    await asyncio.sleep(1.2)  # its lease runs out: any replica may take the message over


async def run_until_stopped(settings: Settings, oa: FakeOpenAI, stop_after: float) -> float:
    """Run the platforms; `stop_after` seconds into the answer, stop (what SIGTERM does).
    Returns how long stopping took."""
    stop = asyncio.Event()
    async with open_core(settings) as core:
        running = asyncio.create_task(run_platforms(core, stop))
        await oa.wait_for("/chat/completions", within=20)
        await asyncio.sleep(stop_after)
        stop.set()
        started = time.monotonic()
        await asyncio.wait_for(running, 30)
        return time.monotonic() - started


async def test_an_answer_resumed_from_a_dead_process_is_finished_within_the_grace_after_sigterm(
    database_url: str, telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    settings = telegram_settings(database_url, telegram, fake_openai, grace=15)
    await leave_a_message_behind(settings)
    fake_openai.chunk_delay = 0.3  # about 3 s of answer, most of it after the stop
    fake_openai.queue_reply(ANSWER)

    took = await run_until_stopped(settings, fake_openai, stop_after=0.5)

    # The person got the whole answer, once; the message is done, not left for another.
    assert telegram.texts(CHAT) == [ANSWER]
    assert [status for _, status, _ in await stored_events(database_url)] == ["done"]
    assert took < 10


async def test_a_resumed_answer_the_grace_cannot_cover_is_released_and_the_next_start_gives_it(
    database_url: str, telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    settings = telegram_settings(database_url, telegram, fake_openai, grace=0.5)
    await leave_a_message_behind(settings)
    fake_openai.chunk_delay = 0.5  # about 5 s of answer: longer than the grace
    fake_openai.queue_reply(ANSWER)

    took = await run_until_stopped(settings, fake_openai, stop_after=0.2)

    assert took < 5
    [(_, status, claimed_by)] = await stored_events(database_url)
    assert (status, claimed_by) == ("received", None)  # released: no lease to wait out
    # The next start (whose own leases last a minute) takes it over at once and answers.
    fake_openai.chunk_delay = 0
    fake_openai.queue_reply(ANSWER)
    stop = asyncio.Event()
    async with open_core(settings) as core:
        running = asyncio.create_task(run_platforms(core, stop))
        await telegram.wait_until(lambda: telegram.texts(CHAT) == [ANSWER], within=20)
        stop.set()
        await asyncio.wait_for(running, 30)
    assert [status for _, status, _ in await stored_events(database_url)] == ["done"]


# -- a real `relaybot run` (Slack in HTTP mode) ----------------------------------------------


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        yield server


class Relaybot:
    """One `relaybot run` process serving Slack's Events API."""

    def __init__(
        self, tmp: Path, oa: FakeOpenAI, slack: FakeSlack, database_url: str, grace: float
    ) -> None:
        self.slack = slack
        self.log_path = tmp / "relaybot.log"
        env = clean_env(
            **endpoint_env(oa),
            SLACK_BOT_TOKEN=slack.bot_token,
            SLACK_SIGNING_SECRET=SIGNING_SECRET,
            SLACK_API_URL=slack.api_url,
            RELAYBOT_DATABASE_URL=database_url,
            RELAYBOT_HTTP_HOST="127.0.0.1",
            RELAYBOT_HTTP_PORT="0",
            RELAYBOT_MODERATION="off",
            RELAYBOT_MAX_RETRIES="0",
            RELAYBOT_SHUTDOWN_GRACE=str(grace),
            RELAYBOT_LOG_FORMAT="json",
            RELAYBOT_LOG_LEVEL="INFO",
        )
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [RELAYBOT, "run"], cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.url = wait_ready(self.proc, "http://127.0.0.1:0", time.monotonic() + 60, log=self.log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def post(self, client: httpx.Client, channel: str, words: str, event_id: str) -> int:
        """Deliver a DM as Slack does; the HTTP status relaybot answered."""
        payload = event_callback(
            message_event(channel=channel, text=words, team_id=self.slack.team_id),
            team_id=self.slack.team_id,
            event_id=event_id,
        )
        body, headers = signed_request(SIGNING_SECRET, payload)
        return client.post(self.url + EVENTS_PATH, content=body, headers=headers).status_code

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, within: float) -> int:
        try:
            return self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"no exit within {within} s:\n{self.log()[-3000:]}") from None


def test_after_sigterm_new_slack_events_get_no_acknowledgement_and_the_answer_in_progress_finishes(
    endpoint: FakeOpenAI, slack: FakeSlack, tmp_path: Path
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'relaybot.db'}"
    endpoint.chunk_delay = 0.2  # about 2 s of answer
    endpoint.queue_reply(ANSWER)
    bot = Relaybot(tmp_path, endpoint, slack, database_url, grace=20)
    with httpx.Client(timeout=10) as client:
        assert bot.post(client, "D0AAA", "first question", "Ev1") == 200
        endpoint.wait_sync("/chat/completions", within=20)
        bot.signal(signal.SIGTERM)
        time.sleep(0.3)
        ready = client.get(bot.url + "/readyz")
        # Not acknowledged: Slack delivers it again, to another replica (or the next start).
        refused = bot.post(client, "D0BBB", "second question", "Ev2")
    assert bot.wait(30) == 0, bot.log()[-3000:]
    assert (ready.status_code, ready.json()["reason"]) == (503, "stopping")
    assert refused == 503
    assert slack.visible_texts("D0AAA") == [ANSWER]
    assert slack.visible_texts("D0BBB") == []
    assert [status for _, status, _ in events(database_url)] == ["done"]  # the second: none
    assert "Traceback" not in bot.log() and '"level": "ERROR"' not in bot.log()


def test_a_second_signal_releases_the_answer_in_progress_and_exits_at_once(
    endpoint: FakeOpenAI, slack: FakeSlack, database_url: str, tmp_path: Path
) -> None:
    endpoint.chunk_delay = 0.5  # about 15 s of answer
    long_answer = " ".join(f"w{i}" for i in range(30))
    endpoint.queue_reply(long_answer)
    bot = Relaybot(tmp_path, endpoint, slack, database_url, grace=25)
    with httpx.Client(timeout=10) as client:
        assert bot.post(client, "D0AAA", "a long one", "Ev1") == 200
    endpoint.wait_sync("/chat/completions", within=20)
    bot.signal(signal.SIGINT)
    time.sleep(0.5)
    started = time.monotonic()
    bot.signal(signal.SIGINT)  # the operator presses Ctrl-C again
    assert bot.wait(20) == 0, bot.log()[-3000:]
    assert time.monotonic() - started < 5, bot.log()[-3000:]
    assert "second signal" in bot.log()
    [(_, status, claimed_by)] = events(database_url)
    assert (status, claimed_by) == ("received", None)  # released: no lease to wait out

    # The next start answers it, in the message the person already sees.
    endpoint.chunk_delay = 0
    endpoint.queue_reply(long_answer)
    again = Relaybot(tmp_path, endpoint, slack, database_url, grace=25)
    deadline = time.monotonic() + 20
    while slack.visible_texts("D0AAA") != [long_answer] and time.monotonic() < deadline:
        time.sleep(0.1)  # a process answering in the background: nothing to wait on but time
    again.signal(signal.SIGTERM)
    assert again.wait(30) == 0, again.log()[-3000:]
    assert slack.visible_texts("D0AAA") == [long_answer]
    assert [status for _, status, _ in events(database_url)] == ["done"]
