"""The app's own HTTP server: webhooks (Telegram, Slack) and health checks share it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from core.errors import ConfigError

ReadyCheck = Callable[[], Awaitable[str | None]]


class MetricsSource(Protocol):
    """What `/metrics` serves (core.metrics.Metrics)."""

    content_type: str

    async def render(self) -> bytes:
        """The Prometheus text exposition."""


class HttpServer:
    """An aiohttp server adapters add routes to before `start()`."""

    def __init__(
        self,
        host: str,
        port: int,
        ready_check: ReadyCheck | None = None,
        metrics: MetricsSource | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.app = web.Application(client_max_size=32 * 1024 * 1024)
        self._ready_check = ready_check
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self._metrics = metrics
        if metrics is not None:
            self.app.router.add_get("/metrics", self._metrics_page)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        problem = await self._ready_check() if self._ready_check else None
        if problem:
            return web.json_response({"status": "unavailable", "reason": problem}, status=503)
        return web.json_response({"status": "ready"})

    async def _metrics_page(self, request: web.Request) -> web.Response:
        assert self._metrics is not None
        body = await self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": self._metrics.content_type})

    async def start(self) -> None:
        """Listen; port 0 picks a free port (read it from `port`). An address that cannot be
        listened on (a host name that does not resolve, an address not on this machine, a
        port in use) is a ConfigError naming the settings."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            # asyncio says "error while attempting to bind on address (...): <reason>".
            reason = (exc.strerror or str(exc)).rpartition(": ")[2]
            host = f"[{self.host}]" if ":" in self.host else self.host
            raise ConfigError(
                f"cannot listen on {host}:{self._requested_port} ({reason}); check "
                "RELAYBOT_HTTP_HOST and RELAYBOT_HTTP_PORT"
            ) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._requested_port

    async def stop(self) -> None:
        """Stop listening and close connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
