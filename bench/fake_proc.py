"""The fake model in a process of its own, so its CPU is not counted as relaybot's."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import resource
from contextvars import ContextVar
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from aiohttp import web

from core.testing.fake_openai import FakeOpenAI, Messages, echo_reply
from core.testing.server import RECORDED

CTX = mp.get_context("spawn")
_ARRIVED: ContextVar[float] = ContextVar("bench_fake_arrived", default=0.0)


def cpu_seconds() -> float:
    """User + system CPU seconds this process has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class BenchFake(FakeOpenAI):
    """FakeOpenAI with a listen backlog for thousands of simultaneous connects.

    It keeps no request bodies (a benchmark sends hundreds of MB) and can wait
    `reply_delay` seconds before answering, the model's "thinking" time. With
    `answer_after`, each answer starts that many seconds after its request's head came
    in, however long the body took to read and parse: the model's time is then the same
    for a 1 KB request and a 570 KB one.
    """

    def __init__(
        self, reply_delay: float = 0.0, backlog: int = 4096, answer_after: float = 0.0
    ) -> None:
        super().__init__()
        self.backlog = backlog
        self.reply_delay = reply_delay
        self.answer_after = answer_after
        self.served = 0
        self.reply = self._reply

    async def _reply(self, messages: Messages) -> str:
        self.served += 1
        if self.reply_delay:
            await asyncio.sleep(self.reply_delay)
        if self.answer_after:
            loop = asyncio.get_running_loop()
            left = _ARRIVED.get() + self.answer_after - loop.time()
            if left > 0:
                await asyncio.sleep(left)
        return echo_reply(messages)

    async def start(self) -> None:
        """As FakeServer.start, with a larger backlog."""
        app = web.Application(client_max_size=256 * 1024 * 1024, middlewares=[self._record])
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=self.backlog)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self._port = sockets[0].getsockname()[1]
        self._changed = None  # nobody waits on requests here

    def _answered(self, request: web.Request) -> None:
        # Free the parsed request (a full window is ~3,500 dicts) before the answer ends:
        # its clean-up is the model's time, not CPU taken from relaybot's next steps.
        request.pop(RECORDED, None)
        self.requests.clear()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # Parse and record the request as the real fake does, then forget it: memory must
        # not grow with the length of a run.
        _ARRIVED.set(asyncio.get_running_loop().time())
        response: web.StreamResponse = await super()._record(request, handler)
        self.requests.clear()
        return response


def _fake_main(conn: Connection, reply_delay: float, answer_after: float) -> None:
    async def run() -> None:
        fake = BenchFake(reply_delay, answer_after=answer_after)
        await fake.start()
        conn.send(fake.base_url)
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            conn.send({"cpu": cpu_seconds(), "served": fake.served})
            if command == "stop":
                break
        await fake.stop()

    asyncio.run(run())


class FakeProcess:
    """`with FakeProcess(reply_delay=1.0) as fake:` starts the fake; `fake.base_url`."""

    def __init__(self, reply_delay: float = 0.0, answer_after: float = 0.0) -> None:
        self.reply_delay = reply_delay
        self.answer_after = answer_after
        self.base_url = ""
        self._conn: Connection | None = None
        self._proc: Any = None

    def __enter__(self) -> FakeProcess:
        parent, child = CTX.Pipe()
        self._proc = CTX.Process(
            target=_fake_main, args=(child, self.reply_delay, self.answer_after), daemon=True
        )
        self._proc.start()
        self._conn = parent
        if not parent.poll(30):
            raise RuntimeError("the fake model process did not start")
        self.base_url = parent.recv()
        return self

    def stats(self) -> dict[str, float]:
        """CPU seconds used by the fake process so far, and chat requests served."""
        assert self._conn is not None
        self._conn.send("stats")
        result: dict[str, float] = self._conn.recv()
        return result

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            try:
                self._conn.send("stop")
                self._conn.poll(10)
            except (BrokenPipeError, EOFError, OSError):
                pass
        if self._proc is not None:
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(5)
