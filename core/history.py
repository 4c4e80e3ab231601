"""Each chat's newest history, kept in memory between messages: exact, or not used at all.

Reading a long chat's window (a 128k-token model holds thousands of turns) and encoding it
again for every message made the cost of a message grow with the length of the chat. A
`ChatWindow` holds the turns the last request sent, their token costs and their JSON
encoding; the next message adds its turns and drops the oldest ones that no longer fit.

It stays exact across processes and tools because every change to a chat's stored history
gives the chat a new revision (`core.db.store.bump_revision`), and the service's own writes
say, in the same transaction, whether the revision they replaced is the one the window was
built from and which turn was the newest. Any other writer (another replica, `/forget`,
the retention job, `/retry`) makes that check fail, and the window is read again from the
database. A chat with no stored turn at all needs no read: its window starts empty.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from core.openai_client import EncodedMessage, EncodedMessages, encode_json
from core.trimming import fit_newest


@dataclass(slots=True)
class Turn:
    """One history message as a request carries it."""

    id: int
    cost: int  # tokens in a request: content, name and framing
    message: EncodedMessage

    @property
    def size(self) -> int:
        return len(self.message.encoded)


class ChatWindow:
    """The newest turns of one chat that fit its history budget, oldest first."""

    __slots__ = (
        "_json",
        "_messages",
        "encoding",
        "last_id",
        "older_cost",
        "revision",
        "total",
        "turns",
    )

    def __init__(
        self,
        revision: int,
        encoding: str,
        turns: Iterable[Turn],
        older_cost: int | None,
        last_id: int | None,
    ) -> None:
        self.revision = revision
        # The id of the chat's newest stored turn, withheld ones included: a turn stored
        # by anyone else (even a writer that does not move the revision) shows up as a
        # newer id at the next append.
        self.last_id = last_id
        self.encoding = encoding
        self.turns: deque[Turn] = deque()
        self._messages: deque[EncodedMessage] = deque()  # the turns' messages, for speed
        self.total = 0
        # The turns' JSON joined by commas, kept up to date as turns come and go, so a
        # request never walks the whole window to encode it (deleting from the front of a
        # bytearray does not copy the rest).
        self._json = bytearray()
        # The cost of the newest stored turn older than `turns` (None: there is none).
        self.older_cost = older_cost
        for turn in turns:
            self.append(turn)

    @property
    def size(self) -> int:
        """Bytes held (the JSON of the turns, which dominates)."""
        return len(self._json)

    def append(self, turn: Turn) -> None:
        """A turn stored after the ones held."""
        if self.turns:
            self._json += b","
        self._json += turn.message.encoded
        self.turns.append(turn)
        self._messages.append(turn.message)
        self.total += turn.cost

    def _drop_oldest(self) -> None:
        dropped = self.turns.popleft()
        self._messages.popleft()
        self.total -= dropped.cost
        del self._json[: dropped.size + (1 if self.turns else 0)]
        self.older_cost = dropped.cost

    def fit(self, budget: int) -> bool:
        """Drop the oldest turns until the rest fit `budget`, as `fit_newest` would.

        False when older stored turns would fit as well (the budget grew): the window must
        then be read again. ContextTooLong when the newest turn alone is over the budget.
        """
        while self.total > budget and len(self.turns) > 1:
            self._drop_oldest()
        if self.total > budget or budget <= 0:
            fit_newest([self.total], budget)  # raises the person-facing error
        return self.older_cost is None or self.total + self.older_cost > budget

    def messages(self, system: dict[str, Any]) -> EncodedMessages:
        """`system` and the held turns as request messages, oldest first, JSON included."""
        messages: list[dict[str, Any]] = [system]
        messages += self._messages
        parts = [encode_json(system)]
        if self.turns:
            parts += (b",", bytes(self._json))
        return EncodedMessages(messages, parts)


class HistoryCache:
    """Windows of recently active chats, least recently used dropped past `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._windows: OrderedDict[str, ChatWindow] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.size = 0

    def __len__(self) -> int:
        return len(self._windows)

    def get(self, chat_key: str) -> ChatWindow | None:
        """The chat's window, if one is held (it may still prove stale: check its revision)."""
        window = self._windows.get(chat_key)
        if window is not None:
            self._windows.move_to_end(chat_key)
        return window

    def put(self, chat_key: str, window: ChatWindow) -> None:
        """Hold (or re-account) the chat's window."""
        self._windows[chat_key] = window
        self._windows.move_to_end(chat_key)
        self.resized(chat_key)

    def resized(self, chat_key: str) -> None:
        """Account for a held window that grew or shrank; evict others past the limit."""
        window = self._windows.get(chat_key)
        if window is None:
            return
        self.size += window.size - self._sizes.get(chat_key, 0)
        self._sizes[chat_key] = window.size
        while self.size > self.max_bytes and self._windows:
            oldest = next(iter(self._windows))
            self.drop(oldest)

    def drop(self, chat_key: str) -> None:
        """Forget the chat's window (its history changed in a way we did not follow)."""
        if self._windows.pop(chat_key, None) is not None:
            self.size -= self._sizes.pop(chat_key, 0)
