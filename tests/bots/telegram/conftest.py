"""Fixtures: a fake Telegram Bot API, and the real adapter wired to a real core."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from bots.http_server import HttpServer
from bots.telegram import Pacing, TelegramAdapter, delivery
from bots.telegram.limits import FloodLimits
from core.app import Core
from core.config import Settings
from core.db.models import Message
from core.testing.fake_openai import FakeOpenAI
from core.testing.fake_telegram import FakeTelegram
from tests.conftest import FIXTURES

WEBHOOK_SECRET = "webhook-secret-for-tests_0123"
PUBLIC_WEBHOOK_URL = "https://relaybot.example/telegram/webhook"
PRIVATE_CHAT = 1001
GROUP = -1002003004005
ADA = 1001  # the person the fake's updates come from unless told otherwise


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "telegram_settings(**fields): extra Settings fields for the Telegram tests"
    )
    config.addinivalue_line("markers", "bot_user(**fields): what the fake's getMe says")
    config.addinivalue_line(
        "markers", "adapter(**options): extra TelegramAdapter arguments (e.g. send_timeout)"
    )


@pytest.fixture
def transport() -> str:
    """How updates reach the bot; tests parametrize it with "polling" and "webhook"."""
    return "polling"


@pytest.fixture
async def telegram(request: pytest.FixtureRequest) -> AsyncIterator[FakeTelegram]:
    """A fake Bot API server on 127.0.0.1 (the `bot_user` marker changes what getMe says)."""
    async with FakeTelegram() as server:
        marker = request.node.get_closest_marker("bot_user")
        if marker is not None:
            server.bot_user.update(marker.kwargs)
        yield server


@pytest.fixture
def settings(
    settings: Settings, telegram: FakeTelegram, transport: str, request: pytest.FixtureRequest
) -> Settings:
    """The core's test settings plus Telegram pointed at the fake."""
    update: dict[str, Any] = {
        "telegram_bot_token": SecretStr(telegram.token),
        "telegram_api_base_url": telegram.api_base_url,
        "telegram_file_base_url": telegram.file_base_url,
    }
    if transport == "webhook":
        update["telegram_webhook_url"] = PUBLIC_WEBHOOK_URL
        update["telegram_webhook_secret"] = SecretStr(WEBHOOK_SECRET)
    marker = request.node.get_closest_marker("telegram_settings")
    if marker is not None:
        update.update(marker.kwargs)
    return settings.model_copy(update=update)


@dataclass
class Bot:
    """The running adapter and what a test needs to talk to it."""

    adapter: TelegramAdapter
    server: HttpServer
    telegram: FakeTelegram
    openai: FakeOpenAI
    core: Core
    transport: str

    async def deliver(self, update: dict[str, Any]) -> int:
        """Send an update the way Telegram would, and wait until the bot has handled it."""
        update_id = await self.telegram.push_update(update)
        if self.transport == "polling":
            await self.telegram.wait_delivered(update_id)
        await self.adapter.idle()
        return update_id

    @property
    def webhook_url(self) -> str:
        """Where the app's HTTP server listens for Telegram."""
        return f"http://127.0.0.1:{self.server.port}/telegram/webhook"

    async def stored(self, chat_key: str) -> list[Any]:
        """Stored history of a chat, newest first."""
        return [row async for row in self.core.store.newest_messages(chat_key)]


@pytest.fixture
async def bot(
    core: Core,
    telegram: FakeTelegram,
    fake_openai: FakeOpenAI,
    transport: str,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Bot]:
    """The real Telegram adapter, started (polling or webhook) against the fake."""
    server = HttpServer("127.0.0.1", 0)
    marker = request.node.get_closest_marker("adapter")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    adapter = TelegramAdapter(
        core,
        server,
        # Telegram's flood limits are the fake's business here; 429s are injected explicitly.
        rate_limiter=FloodLimits(overall=(0, 1.0), group=(0, 60.0)),
        pacing=options.pop(
            "pacing", Pacing(draft_interval=0.02, edit_interval=0.05, typing_refresh=0.5)
        ),
        poll_timeout=1,
        **options,
    )
    await adapter.setup()
    await server.start()
    telegram.webhook_delivery_url = f"http://127.0.0.1:{server.port}/telegram/webhook"
    await adapter.start()
    try:
        yield Bot(adapter, server, telegram, fake_openai, core, transport)
    finally:
        await adapter.stop()
        await server.stop()


@pytest.fixture
def voice_note() -> bytes:
    """A real OGG/Opus voice note."""
    return (FIXTURES / "voice-note.ogg").read_bytes()


@pytest.fixture
def photo() -> bytes:
    """A real JPEG photo."""
    return (FIXTURES / "photo.jpg").read_bytes()


async def stored_turns(bot: Bot, chat_id: int = PRIVATE_CHAT) -> list[tuple[str, str, str]]:
    """Every stored turn of a chat, withheld ones too: (role, content, status), oldest first."""
    async with bot.core.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(Message.role, Message.content, Message.status)
                .where(Message.chat_key == f"telegram:{chat_id}")
                .order_by(Message.id)
            )
        ).all()
    return [(r.role, r.content, r.status) for r in rows]


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Telegram's 5xx are retried with a back-off (0.5 s, doubling): kept short."""
    monkeypatch.setattr(delivery, "SERVER_ERROR_BACKOFF", 0.01)
