"""Webhook mode without TELEGRAM_WEBHOOK_SECRET on two replicas: each replica registered a
random secret of its own, the last setWebhook won, and the other replica answered 403 to
every update Telegram sent it through the load balancer. The default secret is now derived
from the bot token: the same on every replica, and still one strangers cannot guess."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bots.telegram.adapter import SECRET_HEADER, WEBHOOK_PATH
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_telegram import FakeTelegram
from tests.processes import RELAYBOT, clean_env, endpoint_env, run_relaybot, wait_ready

CHATS = (7001, 7002)


@pytest.fixture
def bot_api() -> Iterator[FakeTelegram]:
    with FakeTelegram() as server:
        yield server


def start_replica(workdir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """A `relaybot run` process (its own SQLite file: the secret is all this is about)."""
    workdir.mkdir()
    log_path = workdir / "relaybot.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [RELAYBOT, "run"],
            cwd=workdir,
            env=clean_env(**env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = wait_ready(proc, "http://127.0.0.1:0", time.monotonic() + 60, log_path.read_text)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc, url


def test_both_replicas_take_the_updates_telegram_sends_with_the_registered_secret(
    bot_api: FakeTelegram, endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    env = {
        **endpoint_env(endpoint),
        "TELEGRAM_BOT_TOKEN": bot_api.token,
        "TELEGRAM_API_BASE_URL": bot_api.api_base_url,
        "TELEGRAM_FILE_BASE_URL": bot_api.file_base_url,
        "TELEGRAM_WEBHOOK_URL": "https://bot.example.com/telegram/webhook",
        "RELAYBOT_HTTP_HOST": "127.0.0.1",
        "RELAYBOT_HTTP_PORT": "0",
        "RELAYBOT_MODERATION": "off",
        "RELAYBOT_LOG_FORMAT": "json",
    }
    replicas: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        for name in ("r1", "r2"):
            replicas.append(start_replica(tmp_path / name, env))
        # Each registered the webhook as it started; the later registration is what counts.
        registered = bot_api.wait_sync("/setWebhook", 2, within=30)
        assert bot_api.webhook is not None
        secret = bot_api.webhook["secret_token"]
        assert secret and bot_api.token.split(":", 1)[1] not in secret

        with httpx.Client(timeout=15) as client:
            # Telegram posts through the load balancer: once to each replica here.
            statuses = []
            for (_, url), chat in zip(replicas, CHATS, strict=True):
                update = bot_api.text_update(chat, "hello there")
                response = client.post(
                    url + WEBHOOK_PATH,
                    content=json.dumps(update),
                    headers={"Content-Type": "application/json", SECRET_HEADER: secret},
                )
                statuses.append(response.status_code)
            assert statuses == [200, 200]
            secrets = {(r.json or r.form or {}).get("secret_token") for r in registered}
            assert secrets == {secret}, "the replicas registered different secrets"
            # A post without the secret, or with another one, is still refused by both.
            for _, url in replicas:
                forged = bot_api.text_update(CHATS[0], "forged")
                for headers in ({}, {SECRET_HEADER: "guessed-secret"}):
                    response = client.post(url + WEBHOOK_PATH, json=forged, headers=headers)
                    assert response.status_code == 403
        deadline = time.monotonic() + 30
        while any(bot_api.texts(chat) != ["echo: hello there"] for chat in CHATS):
            assert time.monotonic() < deadline, [bot_api.texts(chat) for chat in CHATS]
            time.sleep(0.1)  # answered in the replicas' own time
    finally:
        for proc, _ in replicas:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(30) for proc, _ in replicas]
    assert codes == [0, 0]


def test_doctor_says_what_the_webhook_secret_is_when_none_is_set(tmp_path: Path) -> None:
    result = run_relaybot(
        ["doctor"],
        tmp_path,
        TELEGRAM_BOT_TOKEN="123456:not-checked-here",
        TELEGRAM_API_BASE_URL="http://127.0.0.1:9/bot",  # nothing there: telegram FAILs
        TELEGRAM_WEBHOOK_URL="https://bot.example.com/telegram/webhook",
        OPENAI_BASE_URL="http://127.0.0.1:9/v1",
    )
    lines = result.stdout.splitlines()
    assert (
        "OK    webhook secret: TELEGRAM_WEBHOOK_SECRET is not set: the webhook's secret is "
        "derived from TELEGRAM_BOT_TOKEN, the same on every replica with this token (set "
        "TELEGRAM_WEBHOOK_SECRET to choose one of your own)"
    ) in lines, result.stdout
    assert not any("forged" in line for line in lines)
    assert lines[0].startswith("OK    config:"), result.stdout
