"""TELEGRAM_WEBHOOK_URL's path is where Telegram posts updates. relaybot served only
/telegram/webhook: with any other path it registered the webhook, said it was ready, and
every update got a 404 that nobody saw. It now serves the URL's own path, and still the
fixed one (for an ingress that rewrites the path on the way in), and says so."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from bots.runner import run_platforms
from core.app import open_core
from core.config import Settings
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_telegram import FakeTelegram
from tests.bots.telegram.conftest import PRIVATE_CHAT, WEBHOOK_SECRET
from tests.processes import endpoint_env, free_port, run_relaybot


async def test_updates_posted_to_the_webhook_urls_own_path_are_answered(
    tmp_path: Path,
    telegram: FakeTelegram,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    local = f"http://127.0.0.1:{port}"
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key="sk-test-not-a-real-key",
        openai_base_url=fake_openai.base_url,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'relaybot.db'}",
        telegram_bot_token=SecretStr(telegram.token),
        telegram_api_base_url=telegram.api_base_url,
        telegram_file_base_url=telegram.file_base_url,
        # The operator's own path, as their reverse proxy forwards it.
        telegram_webhook_url=f"{local}/bots/relay",
        telegram_webhook_secret=SecretStr(WEBHOOK_SECRET),
        http_host="127.0.0.1",
        http_port=port,
    )
    stop = asyncio.Event()
    async with open_core(settings) as core:
        running = asyncio.create_task(run_platforms(core, stop))
        try:
            await telegram.wait_until(lambda: telegram.webhook is not None, within=20)
            # Ready once the adapter's start has returned, a moment after setWebhook.
            assert await became_ready(f"{local}/readyz", within=10)
            await telegram.push_update(telegram.text_update(PRIVATE_CHAT, "hello?"))
            await telegram.wait_until(lambda: len(telegram.texts(PRIVATE_CHAT)) == 1)
            # An ingress that rewrites the path to the documented one reaches it too.
            telegram.webhook_delivery_url = f"{local}/telegram/webhook"
            await telegram.push_update(telegram.text_update(PRIVATE_CHAT, "and here?"))
            await telegram.wait_until(lambda: len(telegram.texts(PRIVATE_CHAT)) == 2)
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)

    assert telegram.webhook is not None
    assert telegram.webhook["url"] == f"{local}/bots/relay"
    assert [status for _, status in telegram.webhook_deliveries] == [200, 200]
    assert telegram.texts(PRIVATE_CHAT) == ["echo: hello?", "echo: and here?"]
    said = [r.getMessage() for r in caplog.records]
    assert "Telegram webhook served on /bots/relay and /telegram/webhook" in said


async def became_ready(url: str, within: float) -> bool:
    """Whether `url` answered 200 within `within` seconds (asked every 50 ms)."""
    async with httpx.AsyncClient() as client:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            if (await client.get(url)).status_code == 200:
                return True
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.05)


def test_a_webhook_url_on_a_path_relaybot_uses_for_something_else_stops_the_start(
    endpoint: FakeOpenAI, tmp_path: Path
) -> None:
    result = run_relaybot(
        ["run"],
        tmp_path,
        **endpoint_env(endpoint),
        TELEGRAM_BOT_TOKEN="123456:not-checked-before-this",
        TELEGRAM_WEBHOOK_URL="https://relaybot.example/healthz",
        TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET,
        RELAYBOT_HTTP_HOST="127.0.0.1",
        RELAYBOT_HTTP_PORT=str(free_port()),
        RELAYBOT_MODERATION="off",
        RELAYBOT_LOG_LEVEL="WARNING",
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "relaybot: invalid configuration: TELEGRAM_WEBHOOK_URL: its path /healthz is one "
        "relaybot serves for something else; end the URL with /telegram/webhook, e.g. "
        "https://bot.example.com/telegram/webhook"
    ]
