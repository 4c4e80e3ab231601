"""The compose health check asks relaybot on the port it listens on: RELAYBOT_HTTP_PORT from
.env (env_file) moves the server, and the check must follow it, or a healthy bot is marked
`unhealthy` (and anything waiting on `service_healthy` never starts)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import FakeSlack
from tests.conftest import REPO
from tests.processes import RELAYBOT, clean_env, endpoint_env, free_port, wait_ready


def compose_health_check() -> list[str]:
    """The bot's health check as the container runs it (`CMD`: argv, `python` on PATH)."""
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    test = compose["services"]["relaybot"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python", test
    assert "$" not in " ".join(test)  # (compose would interpolate it from the host's .env)
    return [sys.executable, *test[2:]]


def test_the_compose_health_check_follows_relaybot_http_port(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    port = free_port()
    assert port != 8080
    log = tmp_path / "relaybot.log"
    with FakeSlack() as slack:
        # The container's environment: the image's defaults, then .env (env_file).
        env = clean_env(
            **endpoint_env(endpoint),
            SLACK_BOT_TOKEN=slack.bot_token,
            SLACK_SIGNING_SECRET="a-signing-secret",
            SLACK_API_URL=slack.api_url,
            RELAYBOT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'relaybot.db'}",
            RELAYBOT_HTTP_HOST="0.0.0.0",
            RELAYBOT_HTTP_PORT=str(port),
            RELAYBOT_MODERATION="off",
        )
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [RELAYBOT, "run"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_ready(proc, f"http://127.0.0.1:{port}", time.monotonic() + 60, log=log.read_text)
            check = subprocess.run(
                compose_health_check(), env=env, capture_output=True, text=True, timeout=30
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()[-3000:]
    assert check.returncode == 0, check.stderr[-2000:]
