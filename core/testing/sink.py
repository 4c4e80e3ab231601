"""A reply sink that records what a person would see: the test backend for your own bots."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from core.types import Reply, ReplyKind


@dataclass(slots=True)
class RecordedStream:
    """One streamed answer: the deltas in order, and the notice if it was retracted."""

    deltas: list[str] = field(default_factory=list)
    retracted_with: str | None = None
    closed: bool = False

    @property
    def text(self) -> str:
        """The answer as finally shown."""
        return self.retracted_with or "".join(self.deltas)

    async def append(self, delta: str) -> None:
        """Record a delta."""
        self.deltas.append(delta)

    async def retract(self, notice: str) -> None:
        """Record the retraction."""
        self.retracted_with = notice


@dataclass(slots=True)
class RecordingSink:
    """Implements core.ports.ReplySink and keeps everything sent, in order."""

    replies: list[Reply] = field(default_factory=list)
    streams: list[RecordedStream] = field(default_factory=list)
    typing_count: int = 0
    # The group's admins, as the platform would name them (None: the platform cannot tell).
    chat_admins: set[str] | None = None
    # Everything shown, replies and streams alike, as (kind, text) in order.
    shown: list[tuple[str, str]] = field(default_factory=list)

    async def send(self, reply: Reply) -> None:
        """Record a complete reply."""
        self.replies.append(reply)
        self.shown.append((reply.kind.value, reply.text))

    @asynccontextmanager
    async def stream(self) -> AsyncIterator[RecordedStream]:
        """Record a streamed answer."""
        stream = RecordedStream()
        self.streams.append(stream)
        try:
            yield stream
        finally:
            stream.closed = True
            self.shown.append((ReplyKind.ANSWER.value, stream.text))

    async def typing(self) -> None:
        """Count typing signals."""
        self.typing_count += 1

    async def chat_admin(self, sender_id: str) -> bool | None:
        """Whether `sender_id` is among `chat_admins` (None when that is None)."""
        return None if self.chat_admins is None else sender_id in self.chat_admins

    @property
    def texts(self) -> list[str]:
        """The texts shown, in order."""
        return [text for _, text in self.shown]
