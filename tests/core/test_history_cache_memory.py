"""RELAYBOT_HISTORY_CACHE_MB bounds the memory the chats' history windows really hold.

The cache once counted a window as the bytes of its JSON alone: each window's own objects
(deques, Turn and EncodedMessage objects, dicts, strings, the bytearray) were left out, so
the default 64 MB held ~2 GB of short chats (~36x). Here the cache is filled through the
service (fake model, SQLite) and tracemalloc measures what dropping its windows frees.
"""

from __future__ import annotations

import gc
import itertools
import random
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert

from core.app import Core, open_core
from core.config import Settings
from core.db.models import Message
from core.history import ChatWindow, Turn
from core.openai_client import EncodedMessage
from core.testing.fake_openai import FakeOpenAI
from core.testing.sink import RecordingSink
from core.tokens import counter_for
from core.types import ChatRef, IncomingMessage, Sender
from tests.conftest import settings_for

_ids = itertools.count(1)
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven")


def cache_settings(fake: FakeOpenAI, tmp_path: Path, cache_bytes: int) -> Settings:
    url = f"sqlite+aiosqlite:///{tmp_path / 'relaybot.db'}"
    return settings_for(url, fake, tmp_path, history_cache_mb=cache_bytes / 2**20)


async def say(core: Core, chat: str, text: str) -> None:
    sink = RecordingSink()
    msg = IncomingMessage(
        chat=ChatRef("test", chat),
        sender=Sender("u1", "Alice"),
        event_key=f"cache-memory:{next(_ids)}",
        text=text,
    )
    await core.service.handle(msg, sink)
    assert sink.texts == [f"echo: {text}"]


def held_by_windows(core: Core) -> int:
    """Bytes freed by dropping every window the cache holds (tracemalloc must be running
    since before they were made)."""
    windows = core.service.windows
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    for key in list(windows._windows):
        windows.drop(key)
    gc.collect()
    return before - tracemalloc.get_traced_memory()[0]


async def prefill(core: Core, chat: str, turns: int) -> None:
    """`turns` stored messages of 3 to 12 words, written in bulk (as the benchmark does)."""
    counter = counter_for(core.settings.chat_model)
    rnd = random.Random(turns)
    now = datetime.now(UTC)
    rows = []
    for i in range(turns):
        text = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(3, 12)))
        rows.append(
            {
                "chat_key": f"test:{chat}",
                "role": "user" if i % 2 == 0 else "assistant",
                "content": text,
                "name": None,
                "token_count": counter.count(text),
                "encoding": counter.encoding_name,
                "status": "ok",
                "event_key": None,
                "created_at": now,
            }
        )
    async with core.engine.begin() as conn:
        await conn.execute(insert(Message), rows)


async def test_many_short_chats_hold_what_the_cache_allows(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    cache_bytes = 64 * 1024
    async with open_core(cache_settings(fake_openai, tmp_path, cache_bytes)) as core:
        await say(core, "warm-up", "hi")  # first-use allocations, outside the measure
        tracemalloc.start()
        try:
            for i in range(120):
                await say(core, f"short{i}", "hi")
            kept = len(core.service.windows)
            held = held_by_windows(core)
        finally:
            tracemalloc.stop()
    assert held <= 2 * cache_bytes, f"{kept} windows held {held} B, the cache is {cache_bytes} B"
    assert 0 < kept < 120  # the cache was full: older chats were dropped


async def test_a_few_long_chats_hold_what_the_cache_allows(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    cache_bytes = 4 * 2**20
    async with open_core(cache_settings(fake_openai, tmp_path, cache_bytes)) as core:
        chats = [f"long{i}" for i in range(8)]
        for chat in chats:
            await prefill(core, chat, 3000)
        await say(core, "warm-up", "hi")
        tracemalloc.start()
        try:
            for chat in chats:  # read each window, then follow it for a message
                await say(core, chat, "one more")
                await say(core, chat, "and another")
            windows = core.service.windows
            kept = len(windows)
            kept_turns = sum(len(w.turns) for w in windows._windows.values())
            held = held_by_windows(core)
        finally:
            tracemalloc.stop()
    assert held <= 2 * cache_bytes, f"{kept} windows held {held} B, the cache is {cache_bytes} B"
    assert 0 < kept < len(chats)  # the cache was full: older chats were dropped
    assert kept_turns >= 3000  # whole chats were held, not a few turns


def test_a_turn_with_wide_characters_counts_them_at_their_width() -> None:
    """CPython stores a string at its widest character's width: one emoji makes an ASCII
    text take 4 bytes a character."""

    def window(text: str) -> ChatWindow:
        turn = Turn(1, 5, EncodedMessage({"role": "user", "content": text}))
        return ChatWindow(1, "o200k_base", [turn], None, 1)

    plain = window("word " * 100)
    wide = window("word " * 100 + "\N{GRINNING FACE}")
    assert wide.size >= plain.size + 3 * 500
