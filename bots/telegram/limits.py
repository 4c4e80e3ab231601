"""Telegram's flood limits, kept ahead of time so that answers never wait behind previews.

Telegram documents about 30 messages a second over all chats and 20 a minute in one group
(core.telegram.org/bots/faq). Edits share the group limit with sends (Telegram's TDLib
maintainer, tdlib/td issues #2592 and #3034). Chat actions are not messages; should
Telegram ever refuse one, "typing…" is best effort and nothing is lost. PTB's
AIORateLimiter counts every request that names a chat, typing indicators included, and
serves them first come, first served. A group where a few answers stream at once then
spends its 20 requests a minute on "typing" and on previews, and each finished answer
waits its turn behind them, up to minutes with the answer already written.

`FloodLimits` counts what Telegram counts (sends and edits), lets everything else through,
and treats previews (requests made with `rate_limit_args=PREVIEW`) as optional: one goes
only while the budget has room to spare beyond `reserve`, otherwise it is refused at once
with `PreviewDeferred` (a RetryAfter of one message's drain time), and the stream tries a
later preview. Finished messages queue for the budget as they must. A 429 from Telegram
itself still reaches the caller, who waits it out.
"""

from __future__ import annotations

import datetime as dtm
from collections.abc import Callable, Coroutine
from typing import Any

from aiolimiter import AsyncLimiter
from telegram.error import RetryAfter
from telegram.ext import BaseRateLimiter

from bots.budget import preview_wait

# rate_limit_args of a request that only previews text and may be skipped.
PREVIEW = "preview"
# Methods that are not a message sent or edited, though their names say "send"/"edit".
_NOT_COUNTED = frozenset({"sendChatAction"})
_COUNTED_OTHERS = frozenset({"copyMessage", "copyMessages", "forwardMessage", "forwardMessages"})
_MAX_IDLE_GROUPS = 1_000  # idle per-group buckets kept before they are dropped


class PreviewDeferred(RetryAfter):
    """A preview was not sent: the flood budget has no room to spare for it now."""


def counted(endpoint: str) -> bool:
    """Whether Telegram counts a call of `endpoint` against its message limits."""
    if endpoint in _NOT_COUNTED:
        return False
    return endpoint.startswith(("send", "edit")) or endpoint in _COUNTED_OTHERS


def _is_group(chat_id: object) -> bool:
    """Groups and channels have negative ids (or an @username); people positive ones."""
    if isinstance(chat_id, str):
        try:
            chat_id = int(chat_id)
        except ValueError:
            return True  # "@channelname"
    return isinstance(chat_id, int) and chat_id < 0


class FloodLimits(BaseRateLimiter[str]):
    """See the module docstring. `overall` and `group` are (messages, seconds); a limit of
    0 messages turns it off. `reserve` is the share of each budget previews leave alone."""

    def __init__(
        self,
        *,
        overall: tuple[int, float] = (30, 1.0),
        group: tuple[int, float] = (20, 60.0),
        reserve: float = 0.25,
    ) -> None:
        self._overall = AsyncLimiter(*overall) if overall[0] > 0 else None
        self._group_limit = group
        self._groups: dict[object, AsyncLimiter] = {}
        self._reserve = reserve

    async def initialize(self) -> None:
        """Nothing to set up."""

    async def shutdown(self) -> None:
        """Nothing to release."""

    def _limiters(self, chat_id: object) -> list[AsyncLimiter]:
        """The budgets a message to `chat_id` spends: its group's (the longer wait) first."""
        limiters = []
        if self._group_limit[0] > 0 and _is_group(chat_id):
            limiter = self._groups.get(chat_id)
            if limiter is None:
                if len(self._groups) >= _MAX_IDLE_GROUPS:
                    self._forget_idle()
                limiter = self._groups[chat_id] = AsyncLimiter(*self._group_limit)
            limiters.append(limiter)
        if self._overall is not None:
            limiters.append(self._overall)
        return limiters

    def _forget_idle(self) -> None:
        for chat_id, limiter in list(self._groups.items()):
            if limiter.has_capacity(limiter.max_rate):
                del self._groups[chat_id]

    def _room_wait(self, limiters: list[AsyncLimiter]) -> float:
        """0 when a preview fits beside the reserve of every budget, else how long to wait."""
        return max((preview_wait(limiter, self._reserve) for limiter in limiters), default=0.0)

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, bool | dict[str, Any] | list[dict[str, Any]]]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: str | None,
    ) -> bool | dict[str, Any] | list[dict[str, Any]]:
        chat_id = data.get("chat_id")
        if chat_id is None or not counted(endpoint):
            return await callback(*args, **kwargs)
        limiters = self._limiters(chat_id)
        if rate_limit_args == PREVIEW:
            wait = self._room_wait(limiters)
            if wait > 0:
                raise PreviewDeferred(dtm.timedelta(seconds=wait))
        for limiter in limiters:
            await limiter.acquire()
        return await callback(*args, **kwargs)
