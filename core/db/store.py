"""The history store: short transactions, never held open across a model call."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, event, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from core.db.database import Database, sqlite_pragmas
from core.db.models import Chat, InboundEvent, Message, UsageRecord, utcnow


@dataclass(frozen=True, slots=True)
class ChatSettings:
    """What a person configured for one chat (None = the bot's default)."""

    system_prompt: str | None = None
    model: str | None = None
    voice_mode: str | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A history row as the trimming code needs it."""

    id: int
    role: str
    content: str
    name: str | None
    token_count: int
    encoding: str


def create_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> AsyncEngine:
    """An async engine for `url` with the settings relaybot needs on each backend."""
    kwargs: dict[str, Any] = {"pool_size": pool_size, "max_overflow": max_overflow}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
        # SQLite takes one writer at a time: several connections of one process only make
        # them fight over the file lock ("database is locked" under load). One connection
        # queues them in the pool instead, in order; WAL keeps reads cheap.
        kwargs.update(pool_size=1, max_overflow=0, pool_timeout=120)
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    return engine


def new_revision() -> int:
    """A fresh value for `chats.history_rev` (random: a recreated chat never repeats one)."""
    return secrets.randbits(62) or 1


def _upsert_chat(conn: Connection, chat_key: str, values: dict[str, Any]) -> None:
    """Insert the chat's row with `values`, or set them on the existing row."""
    platform = chat_key.split(":", 1)[0]
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    stmt = dialect.insert(Chat).values(key=chat_key, platform=platform, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[Chat.key], set_=values))


def bump_revision(
    conn: Connection, chat_key: str, expected: int | None = None
) -> tuple[int, bool]:
    """Give the chat's history a new revision; True when it was `expected` before.

    Every change to a chat's stored history goes through here, so a process holding a
    copy of that history (`core.history`) knows its copy is still exact when the revision
    it last saw is the one it replaces, in the same transaction as its own change.
    """
    revision = new_revision()
    if expected is not None:
        swapped = conn.execute(
            update(Chat)
            .where(Chat.key == chat_key, Chat.history_rev == expected)
            .values(history_rev=revision)
        )
        if swapped.rowcount == 1:
            return revision, True
    _upsert_chat(conn, chat_key, {"history_rev": revision})
    return revision, False


_INSERT_MESSAGE = insert(Message).returning(Message.id)
_INSERT_USAGE = insert(UsageRecord)


@dataclass(frozen=True, slots=True)
class Appended:
    """What `Store.append_messages` did: the new rows' ids and the history's revision."""

    ids: list[int]
    revision: int
    # True when the history was at the revision the caller expected before this change.
    continued: bool


def _page(
    conn: Connection, chat_key: str, page_size: int, before_id: int | None
) -> list[StoredMessage]:
    query = (
        select(
            Message.id,
            Message.role,
            Message.content,
            Message.name,
            Message.token_count,
            Message.encoding,
        )
        .where(Message.chat_key == chat_key, Message.status != "withheld")
        .order_by(Message.id.desc())
        .limit(page_size)
    )
    if before_id is not None:
        query = query.where(Message.id < before_id)
    return [StoredMessage(*row) for row in conn.execute(query)]


class HistoryPages:
    """History rows newest first; `revision` is the chat's history revision when read."""

    def __init__(
        self,
        db: Database,
        chat_key: str,
        revision: int | None,
        first: list[StoredMessage],
        page_size: int,
    ) -> None:
        self.db = db
        self.chat_key = chat_key
        self.revision = revision
        self._first = first
        self._page_size = page_size

    async def __aiter__(self) -> AsyncIterator[StoredMessage]:
        rows, size = self._first, self._page_size
        while True:
            for row in rows:
                yield row
            if len(rows) < size:
                return
            cursor = rows[-1].id
            size = min(size * 4, 4096)
            rows = await self.db.run(_page, self.chat_key, size, cursor)


def _first_page(
    conn: Connection, chat_key: str, page_size: int
) -> tuple[int | None, list[StoredMessage]]:
    revision = conn.execute(select(Chat.history_rev).where(Chat.key == chat_key)).scalar()
    return revision, _page(conn, chat_key, page_size, None)


class Store:
    """All reads and writes of chats, history and usage."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.db = Database(engine)
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    async def close(self) -> None:
        """Release what the store holds beside the engine (its SQLite thread)."""
        await self.db.dispose()

    # -- chat settings --------------------------------------------------------------------
    async def chat_settings(self, chat_key: str, parent_key: str | None = None) -> ChatSettings:
        """The chat's settings; a thread inherits what its channel or group set."""
        return await self.db.run(_chat_settings, chat_key, parent_key)

    async def update_chat(self, chat_key: str, platform: str, **values: str | None) -> None:
        """Set `system_prompt` and/or `model` for a chat (None resets to the default)."""
        async with self._session() as session:
            chat = await session.get(Chat, chat_key)
            if chat is None:
                chat = Chat(key=chat_key, platform=platform)
                session.add(chat)
            for name, value in values.items():
                setattr(chat, name, value)
            await session.commit()

    # -- history --------------------------------------------------------------------------
    async def append_messages(
        self,
        chat_key: str,
        rows: Sequence[dict[str, Any]],
        *,
        answered_event: int | None = None,
        usage: dict[str, Any] | None = None,
        close_event: bool = False,
        expected_revision: int | None = None,
    ) -> Appended:
        """Append history rows in order in one transaction.

        With `answered_event`, that inbound event is marked answered in the same
        transaction, so a crash after this point never sends the answer twice; with
        `close_event` it is closed ("done") outright. `usage` is recorded alongside.
        `expected_revision`: the history revision the caller's copy reflects (see
        `bump_revision`); the result says whether it still did before these rows.
        """
        return await self.db.run(
            _append, chat_key, rows, answered_event, usage, close_event, expected_revision
        )

    async def newest_messages(
        self, chat_key: str, *, page_size: int = 64
    ) -> AsyncIterator[StoredMessage]:
        """History rows newest first, fetched a page at a time (stop iterating when full)."""
        async for row in await self.read_history(chat_key, page_size=page_size):
            yield row

    async def read_history(self, chat_key: str, *, page_size: int = 64) -> HistoryPages:
        """The chat's history revision and its rows newest first, a page at a time."""
        revision, rows = await self.db.run(_first_page, chat_key, page_size)
        return HistoryPages(self.db, chat_key, revision, rows, page_size)

    async def clear_history(self, chat_key: str) -> int:
        """Delete the chat's history; returns how many rows went."""
        return await self.db.run(_clear_history, chat_key)

    async def pop_last_answer(self, chat_key: str) -> StoredMessage | None:
        """For /retry: delete the newest assistant turns, return the user turn before them."""
        return await self.db.run(_pop_last_answer, chat_key)

    async def set_message_status(self, chat_key: str, message_id: int, status: str) -> None:
        """Mark a stored turn (e.g. a user turn that was refused: "withheld")."""
        await self.db.run(_set_message_status, chat_key, message_id, status)

    # -- usage ----------------------------------------------------------------------------
    async def add_usage(self, **values: Any) -> None:
        """Record what one model call consumed."""
        await self.db.run(_add_usage, values)

    async def count_messages(self, chat_key: str) -> int:
        """How many history rows a chat holds (for tests and tools)."""
        return await self.db.run(_count_messages, chat_key)


# -- units of work (each runs in one transaction, see core.db.database) ---------------------
def _chat_settings(conn: Connection, chat_key: str, parent_key: str | None) -> ChatSettings:
    keys = [chat_key] if parent_key is None else [chat_key, parent_key]
    query = select(Chat.key, Chat.system_prompt, Chat.model, Chat.voice_mode).where(
        Chat.key.in_(keys)
    )
    rows = {row[0]: row[1:] for row in conn.execute(query)}
    if not rows:
        return ChatSettings()
    own = rows.get(chat_key, (None, None, None))
    parent = rows.get(parent_key or "", (None, None, None))
    merged = [
        mine if mine is not None else theirs for mine, theirs in zip(own, parent, strict=True)
    ]
    return ChatSettings(system_prompt=merged[0], model=merged[1], voice_mode=merged[2])


def _append(
    conn: Connection,
    chat_key: str,
    rows: Sequence[dict[str, Any]],
    answered_event: int | None,
    usage: dict[str, Any] | None,
    close_event: bool,
    expected_revision: int | None,
) -> Appended:
    ids = [
        int(conn.execute(_INSERT_MESSAGE, {"chat_key": chat_key, **row}).scalar_one())
        for row in rows
    ]
    if usage is not None:
        conn.execute(_INSERT_USAGE, {"created_at": utcnow(), **usage})
    if answered_event is not None:
        values: dict[str, Any] = {"status": "answered"}
        if close_event:
            values = {
                "status": "done",
                "finished_at": utcnow(),
                "payload": None,
                "claimed_by": None,
                "lease_until": None,
            }
        conn.execute(
            update(InboundEvent).where(InboundEvent.id == answered_event).values(**values)
        )
    revision, continued = bump_revision(conn, chat_key, expected_revision)
    return Appended(ids, revision, continued)


def _clear_history(conn: Connection, chat_key: str) -> int:
    result = conn.execute(delete(Message).where(Message.chat_key == chat_key))
    bump_revision(conn, chat_key)
    return int(result.rowcount or 0)


def _pop_last_answer(conn: Connection, chat_key: str) -> StoredMessage | None:
    rows = conn.execute(
        select(
            Message.id,
            Message.role,
            Message.content,
            Message.name,
            Message.token_count,
            Message.encoding,
        )
        .where(Message.chat_key == chat_key)
        .order_by(Message.id.desc())
        .limit(20)
    ).all()
    doomed: list[int] = []
    for row in rows:
        if row.role == "user":
            if doomed:
                conn.execute(delete(Message).where(Message.id.in_(doomed)))
                bump_revision(conn, chat_key)
            return StoredMessage(*row)
        doomed.append(row.id)
    return None


def _set_message_status(conn: Connection, chat_key: str, message_id: int, status: str) -> None:
    conn.execute(update(Message).where(Message.id == message_id).values(status=status))
    bump_revision(conn, chat_key)


def _add_usage(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(insert(UsageRecord).values(**values))


def _count_messages(conn: Connection, chat_key: str) -> int:
    query = select(func.count()).select_from(Message).where(Message.chat_key == chat_key)
    return int(conn.execute(query).scalar_one())
