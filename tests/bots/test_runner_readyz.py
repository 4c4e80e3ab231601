"""/readyz as a load balancer or Kubernetes probes it: often, and without filling the log."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx

from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import FakeSlack
from tests.processes import RELAYBOT, clean_env, endpoint_env, wait_ready


def test_probing_readyz_adds_no_log_lines(endpoint: FakeOpenAI, tmp_path: Path) -> None:
    log = tmp_path / "relaybot.log"
    with FakeSlack() as slack:
        env = clean_env(
            **endpoint_env(endpoint),
            SLACK_BOT_TOKEN=slack.bot_token,
            SLACK_SIGNING_SECRET="a-signing-secret",
            SLACK_API_URL=slack.api_url,
            RELAYBOT_HTTP_HOST="127.0.0.1",
            RELAYBOT_HTTP_PORT="0",
            RELAYBOT_MODERATION="off",
            RELAYBOT_LOG_LEVEL="INFO",
            RELAYBOT_LOG_FORMAT="text",
        )
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [RELAYBOT, "run"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            url = wait_ready(proc, "http://127.0.0.1:0", time.monotonic() + 60, log=log.read_text)
            time.sleep(0.5)  # whatever start-up still logs
            before = log.read_text()
            with httpx.Client(timeout=5) as client:
                for _ in range(5):
                    response = client.get(url + "/readyz")
                    assert response.status_code == 200
                    assert response.json() == {"status": "ready"}
            time.sleep(0.5)
            after = log.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()[-3000:]
    assert after[len(before) :] == ""
    # Migrating at start still says what it did.
    assert "Running upgrade  -> " in before
