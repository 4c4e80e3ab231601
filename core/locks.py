"""Per-chat ordering: a chat's messages run one at a time, in the order they arrived."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType


class Ticket:
    """A place in one chat's queue, taken without awaiting so arrival order is kept."""

    def __init__(self, locks: ChatLocks, key: str, turn: asyncio.Future[None]) -> None:
        self._locks = locks
        self._key = key
        self._turn = turn
        self._released = False

    @property
    def ready(self) -> bool:
        """The chat's turn is this ticket's now (nothing of the chat queued before it)."""
        return self._turn.done() and not self._released

    async def __aenter__(self) -> None:
        try:
            await self._turn
        except BaseException:
            self.release()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        """Give up this place (idempotent); the next message of the chat may run."""
        if not self._released:
            self._released = True
            self._locks._release(self._key, self._turn)


class ChatLocks:
    """FIFO queues per chat key; a key is forgotten as soon as its queue is empty.

    `reserve` is synchronous, so the order in which an adapter hands messages to the
    core is the order they are answered, even when recording them awaits the database.
    """

    def __init__(self) -> None:
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        return len(self._queues)

    def reserve(self, key: str) -> Ticket:
        """Take the next place in chat `key`'s queue; enter the ticket to wait for the turn."""
        queue = self._queues.setdefault(key, deque())
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not queue:
            turn.set_result(None)
        queue.append(turn)
        return Ticket(self, key, turn)

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold chat `key` for the duration of the block."""
        async with self.reserve(key):
            yield

    def _release(self, key: str, turn: asyncio.Future[None]) -> None:
        queue = self._queues[key]
        was_head = queue[0] is turn
        queue.remove(turn)
        if not queue:
            del self._queues[key]
        elif was_head and not queue[0].done():
            queue[0].set_result(None)
