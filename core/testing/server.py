"""Base for the test kit's fake servers: real HTTP on 127.0.0.1, port 0, requests recorded."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Self
from urllib.parse import parse_qsl

from aiohttp import web


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = None
    form: dict[str, Any] = field(default_factory=dict)
    # The client's (host, port): equal for requests that reused one connection.
    peer: tuple[str, int] | None = None


RECORDED = web.RequestKey("recorded", RecordedRequest)


class SlidingWindow:
    """A platform's rate limit as its servers keep it: at most `calls` in any `seconds`."""

    def __init__(self, calls: int, seconds: float) -> None:
        self.calls = calls
        self.seconds = seconds
        self._recent: deque[float] = deque()

    def admit(self) -> int | None:
        """Count a call and return None, or refuse it: the whole seconds to wait (≥ 1),
        as a Retry-After or `retry_after` says."""
        now = time.monotonic()
        while self._recent and self._recent[0] <= now - self.seconds:
            self._recent.popleft()
        if len(self._recent) >= self.calls:
            return max(1, math.ceil(self._recent[0] + self.seconds - now))
        self._recent.append(now)
        return None


def parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    """Fields of a multipart body; files as {"filename", "content_type", "data"}."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        data = part.get_payload(decode=True)
        payload = data if isinstance(data, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            fields[name] = {
                "filename": filename,
                "content_type": part.get_content_type(),
                "data": payload,
            }
        else:
            fields[name] = payload.decode(part.get_content_charset() or "utf-8", "replace")
    return fields


class FakeServer:
    """An aiohttp server on 127.0.0.1:0 that records every request.

    Use it inside a running loop (`async with server:`) or in its own thread
    (`with server.in_thread():`) when the code under test is another process.
    Subclasses add routes in `routes()`.
    """

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        # Set whenever a request is recorded, so tests wait on events instead of sleeping.
        self._changed: asyncio.Condition | None = None
        self._changed_sync = threading.Condition()
        # Set when the server stops: a request held open (a long poll) returns at once, so
        # stopping does not wait for it (aiohttp's cleanup waits for running handlers).
        self.closing = False

    # -- to override -------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        """Add this fake's routes to `app`."""
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start listening on a free port of 127.0.0.1."""
        self.closing = False
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._record])
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self._port = sockets[0].getsockname()[1]
        self._changed = asyncio.Condition()

    async def stop(self) -> None:
        """Stop the server."""
        if self._runner is not None:
            self.closing = True
            if self._changed is not None:
                async with self._changed:
                    self._changed.notify_all()
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> None:
        """Run the server in a daemon thread with its own event loop."""
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._thread_loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake server did not start")

    def stop_thread(self) -> None:
        """Stop a server started with `start_in_thread`."""
        if self._thread_loop is not None and self._thread is not None:
            self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
            self._thread.join(10)
            self._thread = None
            self._thread_loop = None

    def __enter__(self) -> Self:
        self.start_in_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()

    # -- recording ---------------------------------------------------------------------
    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            body=body,
            peer=request.transport.get_extra_info("peername") if request.transport else None,
        )
        ctype = request.content_type
        if ctype == "application/json" and body:
            try:
                rec.json = await request.json()
            except ValueError:
                rec.json = None
        elif ctype == "multipart/form-data":
            rec.form = parse_multipart(request.headers.get("Content-Type", ""), body)
        elif ctype == "application/x-www-form-urlencoded":
            rec.form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        request[RECORDED] = rec
        with self._changed_sync:
            self.requests.append(rec)
            self._changed_sync.notify_all()
        # Waiters hear of the request as it arrives (a streamed answer may take long), and
        # again once it was answered.
        await self._notify()
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            await self._notify()

    async def _notify(self) -> None:
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    async def wait_for(
        self, path_suffix: str, count: int = 1, within: float = 10
    ) -> list[RecordedRequest]:
        """Wait (in the server's loop) until `count` requests whose path ends so were seen."""
        assert self._changed is not None

        def matching() -> list[RecordedRequest]:
            return [r for r in self.requests if r.path.endswith(path_suffix)]

        async with asyncio.timeout(within):
            async with self._changed:
                await self._changed.wait_for(lambda: len(matching()) >= count)
        return matching()

    def wait_sync(
        self, path_suffix: str, count: int = 1, within: float = 10
    ) -> list[RecordedRequest]:
        """From another thread (server in `start_in_thread`): wait for `count` requests."""
        with self._changed_sync:
            if not self._changed_sync.wait_for(
                lambda: len(self.calls(path_suffix)) >= count, timeout=within
            ):
                raise TimeoutError(f"fewer than {count} requests to {path_suffix}")
        return self.calls(path_suffix)

    @staticmethod
    def recorded(request: web.Request) -> RecordedRequest:
        """The record the middleware made of `request`."""
        return request[RECORDED]

    def calls(self, path_suffix: str) -> list[RecordedRequest]:
        """Requests recorded so far whose path ends with `path_suffix`."""
        return [r for r in self.requests if r.path.endswith(path_suffix)]
