"""A network partition between relaybot and PostgreSQL drops packets instead of refusing
them: a query or a connection attempt then hangs until the driver gives up (asyncpg: a
minute). /readyz must still answer within a probe's timeout, saying why it is not ready,
/metrics must still answer, and a SIGTERM must not wait for the hung probes."""

from __future__ import annotations

import asyncio
import contextlib
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from core.app import open_core
from core.config import Settings
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import FakeSlack
from core.types import ChatRef, IncomingMessage, Sender
from tests.conftest import POSTGRES_URL, reset_postgres
from tests.processes import RELAYBOT, clean_env, endpoint_env, wait_ready

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="RELAYBOT_TEST_POSTGRES_URL unset")

PROBE_TIMEOUT = 3.0  # what deploy/k8s gives the readiness probe


class Partition:
    """A TCP proxy in front of PostgreSQL that can drop everything, both ways, on open
    connections and new ones alike, as a network partition does; and heal."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.cut = threading.Event()
        self.closed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._keep(client)
            if self.cut.is_set():
                continue  # the connection attempt never hears back
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self._keep(upstream)
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self.closed.is_set():
                if self.cut.is_set():
                    time.sleep(0.05)  # nothing passes while the network is cut
                    continue
                ready, _, _ = select.select([a, b], [], [], 0.1)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return  # one end hung up: so does the other
                    (b if sock is a else a).sendall(data)
        except (OSError, ValueError):
            return  # closed under it
        finally:
            a.close()
            b.close()

    def close(self) -> None:
        self.closed.set()
        with self._lock:
            for sock in [self.listener, *self._sockets]:
                with contextlib.suppress(OSError):
                    sock.close()


@pytest.fixture
def partition(postgres_url: str) -> Iterator[Partition]:
    url = make_url(postgres_url)
    made = Partition(url.host or "127.0.0.1", url.port or 5432)
    try:
        yield made
    finally:
        made.close()


async def leave_one_message_unanswered(database_url: str, endpoint: FakeOpenAI) -> None:
    """An empty, migrated database holding one unanswered event (of a platform this
    process does not run, so it stays): the inbox depth is 1."""
    await reset_postgres(database_url)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key="sk-test-key",
        openai_base_url=endpoint.base_url,
        database_url=database_url,
    )
    left = IncomingMessage(
        chat=ChatRef("telegram", "1001"),
        sender=Sender("1001", "ada"),
        event_key="telegram:1001:41",
        text="still waiting",
    )
    async with open_core(settings) as core:
        assert await core.service.inbox.record(left) is not None


def probe(client: httpx.Client, url: str) -> tuple[int, str, float]:
    """GET `url` as a probe does: (status, body, seconds); status 0 when it timed out."""
    started = time.monotonic()
    try:
        response = client.get(url)
    except httpx.TimeoutException:
        return 0, "no answer", time.monotonic() - started
    return response.status_code, response.text, time.monotonic() - started


def inbox_depth(metrics: str) -> float:
    found = re.search(r"^relaybot_inbox_depth (\S+)$", metrics, re.MULTILINE)
    assert found, metrics
    return float(found.group(1))


def test_with_the_database_cut_off_readyz_says_so_in_time_and_sigterm_is_prompt(
    endpoint: FakeOpenAI, postgres_url: str, partition: Partition, tmp_path: Path
) -> None:
    asyncio.run(leave_one_message_unanswered(postgres_url, endpoint))
    through_proxy = make_url(postgres_url).set(host="127.0.0.1", port=partition.port)
    log = tmp_path / "relaybot.log"
    with FakeSlack() as slack:
        env = clean_env(
            **endpoint_env(endpoint),
            SLACK_BOT_TOKEN=slack.bot_token,
            SLACK_SIGNING_SECRET="a-signing-secret",
            SLACK_API_URL=slack.api_url,
            RELAYBOT_DATABASE_URL=through_proxy.render_as_string(hide_password=False),
            RELAYBOT_HTTP_HOST="127.0.0.1",
            RELAYBOT_HTTP_PORT="0",
            RELAYBOT_MODERATION="off",
            RELAYBOT_LOG_FORMAT="json",
        )
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [RELAYBOT, "run"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            url = wait_ready(proc, "http://127.0.0.1:0", time.monotonic() + 60, log=log.read_text)
            with httpx.Client(timeout=PROBE_TIMEOUT) as client:
                before = probe(client, url + "/metrics")
                partition.cut.set()
                during = [probe(client, url + "/readyz") for _ in range(2)]
                scraped = probe(client, url + "/metrics")
                alive = probe(client, url + "/healthz")
                partition.cut.clear()
                deadline = time.monotonic() + 10
                healed = probe(client, url + "/readyz")
                while healed[0] != 200 and time.monotonic() < deadline:
                    healed = probe(client, url + "/readyz")
        finally:
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(60)
            finally:
                if proc.poll() is None:
                    proc.kill()
            stopping = time.monotonic() - started
    output = log.read_text()

    for status, body, seconds in during:
        assert status == 503, (status, body, seconds)
        assert '"reason": "database unreachable: timeout"' in body
        assert seconds < PROBE_TIMEOUT
    # The scrape answers with the last depth read, and the process is alive all along.
    assert scraped[0] == 200 and scraped[2] < PROBE_TIMEOUT, scraped
    assert inbox_depth(scraped[1]) == inbox_depth(before[1]) == 1.0
    assert alive[0] == 200
    assert healed[0] == 200, healed
    assert code == 0, output[-3000:]
    assert stopping < 10, output[-3000:]
