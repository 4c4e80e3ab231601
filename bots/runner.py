"""Runs the configured platform adapters beside the app's HTTP server."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from bots.http_server import HttpServer
from core.app import Core

log = logging.getLogger("relaybot.runner")


class PlatformAdapter(Protocol):
    """What every platform adapter offers the runner."""

    async def setup(self) -> None:
        """Register HTTP routes (before the server starts) and prepare clients."""

    async def start(self) -> None:
        """Begin receiving events (polling, socket mode, or webhooks already routed)."""

    async def stop(self) -> None:
        """Stop receiving and finish in-flight work."""


def configured_adapters(core: Core, server: HttpServer) -> list[PlatformAdapter]:
    """One adapter per platform whose token is set."""
    adapters: list[PlatformAdapter] = []
    if core.settings.telegram_bot_token is not None:
        from bots.telegram import TelegramAdapter

        adapters.append(TelegramAdapter(core, server))
    if core.settings.slack_bot_token is not None:
        from bots.slack import SlackAdapter

        adapters.append(SlackAdapter(core, server))
    return adapters


async def run_platforms(core: Core, stop: asyncio.Event) -> None:
    """Start the HTTP server and every configured adapter; run until `stop` is set."""
    server = HttpServer(
        core.settings.http_host, core.settings.http_port, ready_check=core.readiness_problem
    )
    adapters = configured_adapters(core, server)
    for adapter in adapters:
        await adapter.setup()
    await server.start()
    log.info("HTTP server on %s:%s", server.host, server.port)
    try:
        for adapter in adapters:
            await adapter.start()
        await stop.wait()
    finally:
        for adapter in reversed(adapters):
            try:
                await adapter.stop()
            except Exception:
                log.exception("error stopping %s", type(adapter).__name__)
        await server.stop()
