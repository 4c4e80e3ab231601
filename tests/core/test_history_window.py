"""The in-memory history window: long chats are not re-read, and a window is never stale."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import insert

from core.app import Core, open_core
from core.config import Settings
from core.db.models import Message, utcnow
from core.db.store import HistoryPages
from core.errors import ContextTooLong
from core.history import ChatWindow, HistoryCache, Turn
from core.openai_client import EncodedMessage
from core.privacy import forget_chat, purge_expired
from core.testing.fake_openai import FakeOpenAI, make_png
from core.testing.sink import RecordingSink
from core.trimming import fit_newest
from core.types import Attachment, AttachmentKind, ChatRef, IncomingMessage, Sender

_ids = itertools.count(1)


def message(text: str, chat: str = "w1") -> IncomingMessage:
    return IncomingMessage(
        chat=ChatRef("test", chat),
        sender=Sender("u1", "Alice"),
        event_key=f"window:{next(_ids)}",
        text=text,
    )


def sent_history(fake: FakeOpenAI) -> list[str]:
    """The history contents (system prompt left out) of the newest chat request."""
    return [m["content"] for m in fake.chat_requests()[-1]["messages"][1:]]


async def say(core: Core, text: str, chat: str = "w1") -> list[str]:
    sink = RecordingSink()
    await core.service.handle(message(text, chat), sink)
    return sink.texts


async def stored_history(core: Core, chat: str = "w1") -> list[str]:
    """What the store holds, but the newest answer (which the newest request led to)."""
    rows = [r async for r in core.store.newest_messages(f"test:{chat}")]
    return [r.content for r in reversed(rows)][:-1]


def count_history_reads(core: Core) -> list[str]:
    """From now on, the chats whose history the store is asked to read (a growing list)."""
    reads: list[str] = []
    original = core.store.read_history

    async def counting(chat_key: str, **kw: Any) -> HistoryPages:
        reads.append(chat_key)
        return await original(chat_key, **kw)

    core.store.read_history = counting  # type: ignore[method-assign]
    return reads


async def store_as_a_script_would(core: Core, chat_key: str, content: str) -> None:
    """A user turn written straight into `messages` (no chat row, no new revision), as a
    writer that knows nothing of revisions (an older relaybot, a script) would."""
    async with core.engine.begin() as conn:
        await conn.execute(
            insert(Message).values(
                chat_key=chat_key,
                role="user",
                content=content,
                token_count=4,
                encoding="o200k_base",
            )
        )


def small_window(settings: Settings, tokens: int = 400) -> Settings:
    return settings.model_copy(update={"context_tokens": tokens, "reply_tokens": 50})


async def test_a_long_chat_is_answered_from_memory_without_rereading_its_history(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(small_window(settings)) as core:
        for i in range(30):
            await say(core, f"turn {i} " + "word " * 10)
        reads = count_history_reads(core)
        for i in range(30, 40):
            await say(core, f"turn {i} " + "word " * 10)
        assert reads == []
        # What was sent is exactly the newest stored turns that fit, oldest first.
        sent = sent_history(fake_openai)
        stored = await stored_history(core)
        assert sent == stored[-len(sent) :]
        assert sent[-1].startswith("turn 39")
        assert 2 < len(sent) < len(stored)


async def test_history_changed_by_another_process_is_read_again(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(settings) as one, open_core(settings, migrate_db=False) as two:
        await say(one, "first")
        await say(one, "second")
        # Another replica answers this chat once (e.g. after taking over a lease).
        await say(two, "from the other replica")
        await say(one, "third")
        assert sent_history(fake_openai) == [
            "first",
            "echo: first",
            "second",
            "echo: second",
            "from the other replica",
            "echo: from the other replica",
            "third",
        ]
        # And the other replica, whose own window is now stale, sees the third turn too.
        await say(two, "fourth")
        assert sent_history(fake_openai)[-3:] == ["third", "echo: third", "fourth"]


async def test_a_turn_stored_behind_the_service_s_back_is_sent_too(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    """A writer that knows nothing of revisions (an older relaybot, a script) is noticed."""
    await say(core, "first")
    await store_as_a_script_would(core, "test:w1", "imported by a script")
    await say(core, "second")
    assert sent_history(fake_openai) == ["first", "echo: first", "imported by a script", "second"]


async def test_a_new_chat_is_answered_without_reading_any_history(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    reads = count_history_reads(core)
    for chat in ("n1", "n2", "n3"):
        assert await say(core, f"hello from {chat}", chat=chat) == [f"echo: hello from {chat}"]
        await say(core, "again", chat=chat)
    assert reads == []
    assert sent_history(fake_openai) == ["hello from n3", "echo: hello from n3", "again"]


async def test_forgetting_a_chat_elsewhere_empties_what_is_sent(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    await say(core, "my secret plan")
    await say(core, "more about it")
    # `relaybot` tools or an admin erase the chat through the database, not the service.
    await forget_chat(core.engine, "test:w1")
    await say(core, "fresh start")
    assert sent_history(fake_openai) == ["fresh start"]


async def test_retention_purge_reaches_a_window_held_in_memory(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    await say(core, "old news")
    await purge_expired(core.engine, 0, now=utcnow() + timedelta(seconds=1))
    await say(core, "today")
    assert sent_history(fake_openai) == ["today"]


async def test_reset_and_retry_keep_what_is_sent_in_step_with_the_store(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    await say(core, "one")
    await say(core, "two")
    await say(core, "/retry")
    assert sent_history(fake_openai) == ["one", "echo: one", "two"]
    await say(core, "three")
    assert sent_history(fake_openai) == await stored_history(core)
    await say(core, "/reset")
    await say(core, "after reset")
    assert sent_history(fake_openai) == ["after reset"]


async def test_a_longer_budget_brings_older_turns_back(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(small_window(settings, 300)) as core:
        for i in range(12):
            await say(core, f"turn {i} " + "word " * 8)
        short = len(sent_history(fake_openai))
        # A shorter system prompt leaves more room: older turns fit again.
        await say(core, "/system be brief")
        await say(core, "next")
        assert len(sent_history(fake_openai)) > short
        stored = await stored_history(core)
        assert sent_history(fake_openai) == stored[-len(sent_history(fake_openai)) :]


async def ask(core: Core, fake: FakeOpenAI, text: str, *pictures: Attachment) -> list[str]:
    """Send one message; what it showed. The model must have been asked for it once: a
    second request is a second wait (a reasoning model thinks twice), billed unrecorded."""
    before = len(fake.chat_requests())
    sink = RecordingSink()
    await core.service.handle(dataclasses.replace(message(text), attachments=pictures), sink)
    assert len(fake.chat_requests()) - before == 1, "the model was asked more than once"
    return sink.texts


@pytest.mark.parametrize("change", ["/system be brief", "/model gpt-4-turbo"])
async def test_more_room_for_history_brings_older_turns_back_in_one_request(
    settings: Settings, fake_openai: FakeOpenAI, change: str
) -> None:
    """A shorter system prompt, or a model with a bigger window and the same tokenizer (the
    held window fits it, but older turns would too): read again before the model is asked."""
    fake_openai.models = [*fake_openai.models, "gpt-4", "gpt-4-turbo"]  # 8,192 and 128k
    async with open_core(settings.model_copy(update={"chat_model": "gpt-4"})) as core:
        await say(core, "/system " + "be brief " * 400)
        for i in range(16):
            await say(core, f"turn {i} " + "word " * 300)
        short = len(sent_history(fake_openai))
        await say(core, change)
        assert await ask(core, fake_openai, "next") == ["echo: next"]
        sent = sent_history(fake_openai)
        assert len(sent) > short
        assert sent == (await stored_history(core))[-len(sent) :]


async def test_the_first_text_after_a_picture_is_asked_once(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """A picture's room in a request is taken from the history's: the next message, without
    one, has room for older turns again."""
    png = make_png(1024, 1024)

    async def fetch() -> bytes:
        return png

    picture = Attachment(AttachmentKind.IMAGE, "image/png", len(png), "p.png", fetch)
    async with open_core(small_window(settings, 4000)) as core:
        for i in range(60):
            await say(core, f"turn {i} " + "word " * 30)
        await ask(core, fake_openai, "what is this?", picture)
        with_picture = len(sent_history(fake_openai))
        assert await ask(core, fake_openai, "and now just text") == ["echo: and now just text"]
        sent = sent_history(fake_openai)
        assert len(sent) > with_picture
        assert sent == (await stored_history(core))[-len(sent) :]


async def test_no_window_is_kept_when_the_cache_is_off(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(settings.model_copy(update={"history_cache_mb": 0})) as core:
        await say(core, "a")
        await say(core, "b")
        assert len(core.service.windows) == 0
        assert sent_history(fake_openai) == ["a", "echo: a", "b"]


# -- the window itself ---------------------------------------------------------------------
def turn(i: int, cost: int) -> Turn:
    return Turn(i, cost, EncodedMessage({"role": "user", "content": f"m{i}"}))


@given(
    st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=60),
    st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=8),
)
def test_a_window_keeps_what_fit_newest_keeps(costs: list[int], budgets: list[int]) -> None:
    """Appending turns and fitting budgets gives the same turns as trimming from scratch."""
    window = ChatWindow(1, "o200k_base", [], None, None)
    for i, cost in enumerate(costs):
        window.append(turn(i, cost))
        budget = budgets[i % len(budgets)]
        newest_first = costs[: i + 1][::-1]
        try:
            expected = fit_newest(newest_first, budget)
        except ContextTooLong:
            with pytest.raises(ContextTooLong):
                window.fit(budget)
            return
        if window.fit(budget):
            assert [t.id for t in window.turns] == list(range(i + 1 - expected, i + 1))
        else:
            # Older turns would fit again: the caller must read them from the store.
            assert expected > len(window.turns)
            return


def test_the_cache_drops_the_least_recently_used_windows_past_its_memory() -> None:
    def small() -> ChatWindow:
        return ChatWindow(1, "enc", [turn(i, 5) for i in range(2)], None, None)

    cache = HistoryCache(max_bytes=3 * small().size)  # room for three small windows
    for key in ("a", "b", "c"):
        cache.put(key, small())
    assert len(cache) == 3
    cache.get("a")  # used: stays
    big = ChatWindow(1, "enc", [turn(i, 5) for i in range(4)], None, None)
    cache.put("d", big)
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("d") is not None
    assert cache.size <= cache.max_bytes


# -- the request sent while the person's turn is being stored -------------------------------
class _ChatRowLock:
    """Another PostgreSQL session holding the chat's row (as a writer of the chat's history
    does, e.g. /forget on another replica): storing a turn of that chat waits for it."""

    def __init__(self, core: Core, chat_key: str) -> None:
        from sqlalchemy.ext.asyncio import AsyncConnection

        self.core = core
        self.chat_key = chat_key
        self.conn: AsyncConnection | None = None

    async def __aenter__(self) -> _ChatRowLock:
        from sqlalchemy import text

        self.conn = await self.core.engine.connect()
        await self.conn.begin()
        await self.conn.execute(
            text("SELECT 1 FROM chats WHERE key = :k FOR UPDATE"), {"k": self.chat_key}
        )
        return self

    async def write_a_turn(self, content: str) -> None:
        """Store a turn of the chat and give its history a new revision, as Store does."""
        from sqlalchemy import text

        assert self.conn is not None
        await self.conn.execute(
            insert(Message).values(
                chat_key=self.chat_key,
                role="user",
                content=content,
                token_count=5,
                encoding="o200k_base",
                status="ok",
                created_at=utcnow(),
            )
        )
        await self.conn.execute(
            text("UPDATE chats SET history_rev = history_rev + 1 WHERE key = :k"),
            {"k": self.chat_key},
        )

    async def __aexit__(self, *exc: object) -> None:
        assert self.conn is not None
        await self.conn.commit()
        await self.conn.close()


async def test_the_model_is_asked_while_the_turn_is_stored_and_nothing_shows_before(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    import asyncio

    if not core.store.db.shared:
        pytest.skip("needs a second session holding the chat's row (PostgreSQL)")
    assert await say(core, "first") == ["echo: first"]
    fake_openai.queue_reply("the second answer")
    sink = RecordingSink()
    async with _ChatRowLock(core, "test:w1"):
        task = asyncio.create_task(core.service.handle(message("second"), sink))
        # The request goes out although the turn cannot be stored yet...
        await fake_openai.wait_for("/chat/completions", count=2)
        assert sent_history(fake_openai) == ["first", "echo: first", "second"]
        await asyncio.sleep(0.2)
        # ...but nothing of the answer is shown before it is.
        assert sink.texts == [] and not task.done()
    await task
    assert sink.texts == ["the second answer"]
    assert len(fake_openai.chat_requests()) == 2
    assert await stored_history(core) == ["first", "echo: first", "second"]


async def test_a_turn_stored_meanwhile_by_someone_else_is_asked_again_before_showing(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    import asyncio

    if not core.store.db.shared:
        pytest.skip("needs a second session holding the chat's row (PostgreSQL)")
    assert await say(core, "first") == ["echo: first"]
    fake_openai.queue_reply("an answer from a stale history")
    sink = RecordingSink()
    async with _ChatRowLock(core, "test:w1") as other:
        task = asyncio.create_task(core.service.handle(message("second"), sink))
        await fake_openai.wait_for("/chat/completions", count=2)
        await other.write_a_turn("written elsewhere")
    await task
    # The first request lacked the other writer's turn: it was asked again with the history
    # as stored (in the order the turns got their ids), and only that answer was shown.
    stored = await stored_history(core)
    assert sorted(stored) == sorted(["first", "echo: first", "written elsewhere", "second"])
    assert len(fake_openai.chat_requests()) == 3
    assert sent_history(fake_openai) == stored
    last_user_turn = [t for t in stored if not t.startswith("echo")][-1]
    assert sink.texts == [f"echo: {last_user_turn}"]


async def test_a_new_chats_first_question_is_asked_while_its_turn_is_stored(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    """A chat without a row has nothing to read: the model is asked at once, and nothing is
    shown before the turn is stored."""
    import asyncio

    from sqlalchemy import text

    if not core.store.db.shared:
        pytest.skip("needs a second session holding a lock (PostgreSQL)")
    sink = RecordingSink()
    async with core.engine.connect() as other:
        await other.begin()
        # Reads go on; nothing can be stored in any chat's history until this ends.
        await other.execute(text("LOCK TABLE messages IN EXCLUSIVE MODE"))
        task = asyncio.create_task(core.service.handle(message("hello", chat="brand-new"), sink))
        await fake_openai.wait_for("/chat/completions", count=1)
        assert sent_history(fake_openai) == ["hello"]
        await asyncio.sleep(0.2)
        assert sink.texts == [] and not task.done()
        await other.rollback()
    await task
    assert sink.texts == ["echo: hello"]
    assert await stored_history(core, "brand-new") == ["hello"]


async def test_turns_a_script_stored_for_a_chat_without_a_row_are_sent_with_its_first(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    """The first question of a chat without a row is asked without reading history; when the
    store finds older turns after all, it is asked again with them, and only that answer
    is shown."""
    fake_openai.queue_reply("an answer without the imported turns")
    await store_as_a_script_would(core, "test:imported", "imported by a script")
    assert await say(core, "hello", chat="imported") == ["echo: hello"]
    assert len(fake_openai.chat_requests()) == 2
    assert sent_history(fake_openai) == ["imported by a script", "hello"]
