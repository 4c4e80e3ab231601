"""An egress proxy for tests: a forward HTTP proxy on 127.0.0.1 that lets through only the
hosts it allows and answers 403 to the rest, as one that lets out only the model provider."""

from __future__ import annotations

import asyncio
import threading
from typing import Self
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

# Hop-by-hop headers and the ones the proxy's own client sets again.
_NOT_FORWARDED = frozenset(
    {"host", "proxy-connection", "proxy-authorization", "connection", "keep-alive"}
    | {"content-length", "transfer-encoding"}
)


class EgressProxy:
    """Forwards plain-HTTP requests (absolute-form, as clients send them to a proxy) to the
    `allowed` host:port pairs; `seen` lists every request asked of it, allowed or not."""

    def __init__(self, allowed: set[str]) -> None:
        self.allowed = allowed
        self.seen: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.ServerRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The proxy's URL, as RELAYBOT_HTTP_PROXY or HTTPS_PROXY takes it."""
        return f"http://127.0.0.1:{self.port}"

    def asked_for(self, host: str) -> list[str]:
        """The requests asked of the proxy for `host` (host:port)."""
        return [line for line in self.seen if urlsplit(line.split(" ", 1)[1]).netloc == host]

    async def _forward(self, request: web.BaseRequest) -> web.StreamResponse:
        target = request.raw_path
        self.seen.append(f"{request.method} {target}")
        if urlsplit(target).netloc not in self.allowed:
            return web.Response(status=403, text="blocked by the proxy's policy")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method, target, headers=headers, data=await request.read()
            ) as upstream,
        ):
            kept = {k: v for k, v in upstream.headers.items() if k.lower() not in _NOT_FORWARDED}
            return web.Response(status=upstream.status, headers=kept, body=await upstream.read())

    async def _start(self) -> None:
        self._runner = web.ServerRunner(web.Server(self._forward))
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
