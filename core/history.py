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

import sys
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from core.openai_client import EncodedMessage, EncodedMessages, encode_json
from core.trimming import fit_newest

# What a held window costs in memory beyond its texts (RELAYBOT_HISTORY_CACHE_MB bounds it).
# Counting only the JSON left out ~97 % of a short chat's memory: a 64 MB cache held ~2 GB.
# Measured with tracemalloc on CPython 3.11.7 as the bytes freed by dropping windows from a
# HistoryCache (after gc.collect()), less what `held_bytes` and the JSON buffer count:
# - WINDOW_BYTES: 3,000 windows with no turn, under keys like "telegram:-1001234567890":
#   the ChatWindow, its two deques (each with its first 64-slot block), the empty bytearray,
#   its ints, the key and the cache's entries for it. 1,880 B each.
# - TURN_BYTES: 10 windows of 3,000 turns, each with a new role string (as a database row
#   gives), a new content string, an id and a cost above 256: the Turn, its two ints, the
#   EncodedMessage dict and its key table, the role string, the headers of the JSON bytes and
#   of the content string, two deque slots. 466 B each, for texts of 2 and of 150 characters.
# Through the service (role strings shared, small costs) windows hold 0.84-0.94x what they
# count; tests/core/test_history_cache_memory.py measures short and long chats again.
WINDOW_BYTES = 1_900
TURN_BYTES = 470
_STR_HEADER = sys.getsizeof("")  # an ASCII string's header (TURN_BYTES has the content's)


def held_bytes(message: EncodedMessage) -> int:
    """What a turn's texts hold beyond TURN_BYTES: its JSON, its content and its name."""
    encoded = len(message.encoded)
    held = encoded
    name = message.get("name")
    if name:
        held += _STR_HEADER
    wide = False
    for text in (message.get("content"), name):
        if not isinstance(text, str):
            continue
        if text.isascii():  # (a flag: known without reading the text)
            held += len(text)
        else:
            # CPython stores a string at the width of its widest character (1, 2 or 4
            # bytes): the size of a copy tells it (one memcpy; a copy has no cached UTF-8).
            held += sys.getsizeof(text + "\0") - _STR_HEADER
            wide = True
    if wide:
        # The UTF-8 copy a database driver or the tokenizer leaves cached in such a string
        # (the message's together are no longer than its JSON).
        held += encoded
    return held


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
        "_held",
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
        self._held = 0  # TURN_BYTES and `held_bytes` of each turn held
        # The cost of the newest stored turn older than `turns` (None: there is none).
        self.older_cost = older_cost
        for turn in turns:
            self.append(turn)

    @property
    def size(self) -> int:
        """Bytes of memory held, as measured (see WINDOW_BYTES): the window's own objects,
        each turn's objects and texts, and the JSON buffer as allocated."""
        return WINDOW_BYTES + self._held + self._json.__alloc__()

    def append(self, turn: Turn) -> None:
        """A turn stored after the ones held."""
        if self.turns:
            self._json += b","
        self._json += turn.message.encoded
        self.turns.append(turn)
        self._messages.append(turn.message)
        self.total += turn.cost
        self._held += TURN_BYTES + held_bytes(turn.message)

    def _drop_oldest(self) -> None:
        dropped = self.turns.popleft()
        self._messages.popleft()
        self.total -= dropped.cost
        self._held -= TURN_BYTES + held_bytes(dropped.message)
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
