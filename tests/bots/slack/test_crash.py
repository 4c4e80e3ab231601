"""A real `relaybot run` killed (SIGKILL) the moment Slack started its answer's stream.

chat.startStream takes no metadata, and the process dies before it hears the stream's ts,
so nothing in the database or in Slack says whose stream it is. The restarted process
must still finish the answer in that message: the thread shows one answer, not a broken
stream and a second answer under it.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx

from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_slack import FakeSlack, app_mention_event, event_callback, new_ts
from core.testing.fake_slack import signed_request as sign
from tests.processes import RELAYBOT, clean_env, endpoint_env, free_port, wait_ready

CHANNEL = "C0GENERAL"
SECRET = "crash-test-signing-secret"


def start(env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [RELAYBOT, "run"], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    wait_ready(proc, env_url(env), time.monotonic() + 60, log=log.read_text)
    return proc


def env_url(env: dict[str, str]) -> str:
    return f"http://127.0.0.1:{env['RELAYBOT_HTTP_PORT']}"


def events(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT status FROM inbound_events ORDER BY id")]


def test_killed_as_slack_starts_the_stream_the_restart_finishes_that_same_message(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    log = tmp_path / "relaybot.log"
    with FakeSlack() as slack:
        env = clean_env(
            **endpoint_env(endpoint),
            SLACK_BOT_TOKEN=slack.bot_token,
            SLACK_SIGNING_SECRET=SECRET,
            SLACK_API_URL=slack.api_url,
            RELAYBOT_HTTP_HOST="127.0.0.1",
            RELAYBOT_HTTP_PORT=str(free_port()),
            RELAYBOT_MODERATION="off",
        )
        first = start(env, tmp_path, log)
        # Slack starts the stream; the process is killed before it hears the stream's ts.
        slack.after_next("chat.startStream", lambda: os.kill(first.pid, signal.SIGKILL))
        thread = new_ts()
        event = app_mention_event(channel=CHANNEL, ts=thread, text="<@U0BOT> tell me a story")
        body, headers = sign(SECRET, event_callback(event, team_id=slack.team_id))
        response = httpx.post(env_url(env) + "/slack/events", content=body, headers=headers)
        assert response.status_code == 200  # stored before it was acknowledged
        assert first.wait(30) == -signal.SIGKILL
        [left] = slack.visible(CHANNEL, thread)
        assert left.streaming and left.metadata is None, "an open, untagged stream is left"
        assert events(tmp_path / "relaybot.db") == ["received"]

        second = start(env, tmp_path, log)
        try:
            deadline = time.monotonic() + 30
            while events(tmp_path / "relaybot.db") != ["done"]:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)  # the store signals nothing: poll it
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, log.read_text()[-3000:]

        # One answer in the thread, in the message the killed process's stream had started.
        [answer] = slack.visible(CHANNEL, thread)
        assert answer.ts == left.ts
        assert answer.visible_text == "echo: tell me a story"
        assert not answer.streaming
        assert answer.metadata == {
            "event_type": "relaybot_answer",
            "event_payload": {"event": f"slack:{CHANNEL}:{thread}"},
        }
        assert len(slack.api_calls("chat.startStream")) == 1
