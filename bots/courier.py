"""The background task that carries a streamed reply to its platform.

A sink's `append` only buffers text and makes sure the courier runs; the courier sends what
is buffered, one platform call at a time, on the pacing the platform allows. So the model's
stream is never held up by a slow platform API, a rate limiter or a `retry_after`, and a
slow platform gets fewer, bigger updates instead of a queue of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class Courier:
    """Runs `work` in the background; remembers its failure for the sink's next call."""

    def __init__(self, work: Callable[[], Awaitable[None]], name: str) -> None:
        self._work = work
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.error: Exception | None = None

    def start(self) -> bool:
        """Run `work` unless it is running; False when it already was."""
        if self._task is not None and not self._task.done():
            return False
        self._task = asyncio.create_task(self._run(), name=self._name)
        return True

    async def _run(self) -> None:
        try:
            await self._work()
        except Exception as err:
            self.error = err

    def wake(self) -> None:
        """Cut a `pause` short (urgent text, or the reply is closing)."""
        self._wake.set()

    async def pause(self, seconds: float) -> None:
        """Sleep up to `seconds`; `wake` or `settle` cuts it short."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def settle(self) -> None:
        """Wait for the work to end: a call in flight completes (its message id is known)."""
        task = self._task
        if task is None:
            return
        self._wake.set()
        await asyncio.gather(task, return_exceptions=True)
        self._task = None

    def cancel(self) -> None:
        """Stop at once (the reply is left to another process)."""
        if self._task is not None:
            self._task.cancel()

    def take_error(self) -> Exception | None:
        """The work's failure, once."""
        error, self.error = self.error, None
        return error
