"""Requests not signed with SLACK_SIGNING_SECRET: refused (401), and said so, by name.

With a wrong signing secret every event Slack sends is refused, and nothing named the
setting: the bot just went quiet. One WARNING (at most once a minute) now names it, and
never holds a request's body or a header's value.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import FakeSlack, app_mention_event, event_callback, signed_request
from tests.bots.slack.conftest import SIGNING_SECRET, SlackApp
from tests.processes import RELAYBOT, clean_env, endpoint_env, free_port

WRONG_SECRET = "a-client-secret-pasted-by-mistake"
SAID = "the secret launch plans for friday"


def bad_signature_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "SLACK_SIGNING_SECRET" in r.getMessage()
    ]


async def test_badly_signed_events_are_refused_and_named_once(
    slack_app: SlackApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for n in range(3):
        event = app_mention_event(channel="C0GENERAL", text=f"<@U0BOT> {SAID} {n}")
        response = await slack_app.post_event(event, secret=WRONG_SECRET)
        assert response.status_code == 401

    (line,) = bad_signature_warnings(caplog)
    assert "401" in line and "/slack/events" in line
    assert SAID not in line and WRONG_SECRET not in line and SIGNING_SECRET not in line
    assert "v0=" not in line  # no signature
    relaybot_lines = [r.getMessage() for r in caplog.records if r.name.startswith("relaybot")]
    assert not any(SAID in text for text in relaybot_lines)
    assert slack_app.slack.bot_messages() == []


async def test_the_line_comes_again_after_a_minute_with_how_many_were_refused(
    slack_app: SlackApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(2):
        await slack_app.post_event(app_mention_event(channel="C0GENERAL"), secret=WRONG_SECRET)
    adapter = slack_app.adapter
    assert adapter._signature_logged_at is not None
    adapter._signature_logged_at -= 61  # a minute on
    await slack_app.post_event(app_mention_event(channel="C0GENERAL"), secret=WRONG_SECRET)

    first, second = bad_signature_warnings(caplog)
    assert ": 1 not signed" in first
    assert ": 2 not signed" in second  # the one refused quietly meanwhile, and this one


async def test_a_rightly_signed_event_logs_no_such_line(
    slack_app: SlackApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = await slack_app.post(event_callback(app_mention_event(channel="C0GENERAL")))
    assert response.status_code == 200
    await slack_app.adapter.drain()
    assert bad_signature_warnings(caplog) == []


async def test_a_request_signed_long_ago_points_at_the_clock(
    slack_app: SlackApp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = await slack_app.post_event(
        app_mention_event(channel="C0GENERAL"), timestamp=int(time.time()) - 3600
    )
    assert response.status_code == 401
    (line,) = [
        r.getMessage()
        for r in caplog.records
        if r.name == "relaybot.slack" and r.levelno == logging.WARNING
    ]
    assert "clock" in line and "401" in line


@pytest.fixture
def threaded_slack() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        yield server


def test_relaybot_run_names_the_signing_secret_once_for_badly_signed_events(
    endpoint: FakeOpenAI, threaded_slack: FakeSlack, tmp_path: Path
) -> None:
    port = free_port()
    env = clean_env(
        **endpoint_env(endpoint),
        SLACK_BOT_TOKEN=threaded_slack.bot_token,
        SLACK_SIGNING_SECRET=WRONG_SECRET,
        SLACK_API_URL=threaded_slack.api_url,
        RELAYBOT_HTTP_HOST="127.0.0.1",
        RELAYBOT_HTTP_PORT=str(port),
        RELAYBOT_MODERATION="off",
        RELAYBOT_LOG_FORMAT="text",
    )
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "relaybot.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [RELAYBOT, "run"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        with httpx.Client(timeout=5) as client:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                try:
                    if client.get(url + "/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)  # starting: nothing to wait on but time
            statuses = []
            for n in range(3):
                # Slack's events, signed with the secret Slack holds, not the one configured.
                payload = event_callback(
                    app_mention_event(channel="C0GENERAL", text=f"<@U0BOT> {SAID} {n}"),
                    team_id=threaded_slack.team_id,
                )
                body, headers = signed_request("the-real-signing-secret", payload)
                response = client.post(url + "/slack/events", content=body, headers=headers)
                statuses.append(response.status_code)
        proc.terminate()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert statuses == [401, 401, 401]
    named = [
        line
        for line in output.splitlines()
        if "WARNING" in line and "SLACK_SIGNING_SECRET" in line
    ]
    assert len(named) == 1, output[-3000:]
    assert SAID not in output, output[-3000:]
    assert WRONG_SECRET not in output and "v0=" not in output
    assert threaded_slack.bot_messages() == []
