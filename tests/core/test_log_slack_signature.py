"""A Slack request not signed with SLACK_SIGNING_SECRET (a wrong secret pasted, or anyone
posting to the events URL) is refused, and its body is not logged. Bolt logged it at INFO
as `Invalid request signature detected (signature: ..., body: {... "text": "..." ...})`:
the words of the message in the log, which the README says never happens at INFO. Bolt's
component loggers are now held at WARNING as `slack_bolt` is."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import httpx
import pytest

from bots.slack.adapter import EVENTS_PATH
from core.logs import configure_logging
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import FakeSlack, event_callback, message_event, signed_request
from tests.processes import RELAYBOT, clean_env, endpoint_env, wait_ready

WORDS = "my-diagnosis-is-QWERTY-confidential"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        yield server


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_request_with_a_bad_signature_is_logged_without_its_body(
    slack: FakeSlack, endpoint: FakeOpenAI, tmp_path: Path, fmt: str
) -> None:
    log_path = tmp_path / "relaybot.log"
    env = clean_env(
        **endpoint_env(endpoint),
        SLACK_BOT_TOKEN=slack.bot_token,
        SLACK_API_URL=slack.api_url,
        SLACK_SIGNING_SECRET="client-secret-pasted-by-mistake",
        RELAYBOT_HTTP_HOST="127.0.0.1",
        RELAYBOT_HTTP_PORT="0",
        RELAYBOT_LOG_LEVEL="INFO",
        RELAYBOT_LOG_FORMAT=fmt,
    )
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [RELAYBOT, "run"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = wait_ready(proc, "http://127.0.0.1:0", time.monotonic() + 60, log_path.read_text)
        event = message_event(channel="D0DM", channel_type="im", text=f"<@U0BOT> {WORDS}")
        body, headers = signed_request("the-real-signing-secret", event_callback(event))
        response = httpx.post(url + EVENTS_PATH, content=body, headers=headers, timeout=15)
        assert response.status_code == 401  # Bolt logs the refusal before it answers
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    output = log_path.read_text()
    assert code == 0, output[-3000:]
    assert "HTTP server on" in output  # INFO lines are written
    assert WORDS not in output
    assert "U0ALICE" not in output
    assert "Invalid request signature" not in output
    if fmt == "json":
        loggers = {json.loads(line)["logger"] for line in output.splitlines() if line[:1] == "{"}
        assert not any(name.startswith("slack_bolt") for name in loggers), loggers


def test_a_held_loggers_child_with_a_level_of_its_own_is_still_held() -> None:
    """Bolt's component loggers copy the level of the logger the app is given (INFO here):
    what they log below WARNING is dropped, whatever their own level says."""
    stream = StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("INFO", fmt="text", stream=stream)
        child = logging.getLogger("slack_bolt.SomeMiddleware")
        child.setLevel(logging.INFO)
        child.info("request body: %s", WORDS)
        child.warning("something to fix")
        logging.getLogger("relaybot.slack.bolt").info("kept at INFO")
    finally:
        root.handlers[:], root.level = saved
        logging.getLogger("slack_bolt.SomeMiddleware").setLevel(logging.NOTSET)
    said = stream.getvalue()
    assert WORDS not in said
    assert "something to fix" in said
    assert "kept at INFO" in said
