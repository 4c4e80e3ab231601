"""Ports: what the core needs from the outside, as structural protocols."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

from core.types import IncomingMessage, Reply


class ReplyStream(Protocol):
    """An answer being written token by token into one platform message (or several)."""

    async def append(self, delta: str) -> None:
        """Add a piece of text; the sink decides when to flush it to the platform."""

    async def retract(self, notice: str) -> None:
        """Withdraw what was streamed so far and show `notice` instead (e.g. flagged output)."""


class ReplySink(Protocol):
    """Where the answers to one incoming message go; bound by the adapter to chat + thread."""

    async def send(self, reply: Reply) -> None:
        """Deliver a complete reply (text, notice, image)."""

    def stream(self) -> AbstractAsyncContextManager[ReplyStream]:
        """Open a streamed answer; leaving the context finalises it."""

    async def typing(self) -> None:
        """Show that the bot is working (a no-op where the platform has no such signal)."""

    async def chat_admin(self, sender_id: str) -> bool | None:
        """Whether the platform says `sender_id` administers this (group) chat; None where
        the platform cannot tell. Asked only before a group-wide change (/system, /reset)."""


class Restorer(Protocol):
    """An adapter's way to resume a stored message after a restart or on another replica."""

    def restore(self, msg: IncomingMessage) -> tuple[IncomingMessage, ReplySink] | None:
        """The message with working attachment fetches and a sink for its chat, or None."""
