"""The history store: short transactions, never held open across a model call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, event, insert, select, update
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

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


def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets readers and the writer overlap; busy_timeout waits instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


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
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


_INSERT_MESSAGE = insert(Message).returning(Message.id)


class Store:
    """All reads and writes of chats, inbound events, history and usage."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    # -- chat settings --------------------------------------------------------------------
    async def chat_settings(self, chat_key: str, parent_key: str | None = None) -> ChatSettings:
        """The chat's settings; a thread inherits what its channel or group set."""
        keys = [chat_key] if parent_key is None else [chat_key, parent_key]
        # A Core select on a bare connection: the ORM identity map costs more than the query.
        query = select(Chat.key, Chat.system_prompt, Chat.model, Chat.voice_mode).where(
            Chat.key.in_(keys)
        )
        async with self.engine.connect() as conn:
            rows = {row[0]: row[1:] for row in await conn.execute(query)}
        if not rows:
            return ChatSettings()
        own = rows.get(chat_key, (None, None, None))
        parent = rows.get(parent_key or "", (None, None, None))
        merged = [
            mine if mine is not None else theirs for mine, theirs in zip(own, parent, strict=True)
        ]
        return ChatSettings(system_prompt=merged[0], model=merged[1], voice_mode=merged[2])

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
    ) -> list[int]:
        """Append history rows in order in one transaction; returns their ids.

        With `answered_event`, that inbound event is marked answered in the same
        transaction, so a crash after this point never sends the answer twice; with
        `close_event` it is closed ("done") outright. `usage` is recorded alongside.
        """
        # Core INSERT ... RETURNING: an ORM flush costs several times the statement itself.
        ids: list[int] = []
        async with self.engine.begin() as conn:
            for row in rows:
                result = await conn.execute(_INSERT_MESSAGE, {"chat_key": chat_key, **row})
                ids.append(int(result.scalar_one()))
            if usage is not None:
                await conn.execute(insert(UsageRecord).values(created_at=utcnow(), **usage))
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
                await conn.execute(
                    update(InboundEvent).where(InboundEvent.id == answered_event).values(**values)
                )
        return ids

    async def newest_messages(
        self, chat_key: str, *, page_size: int = 64, before_id: int | None = None
    ) -> AsyncIterator[StoredMessage]:
        """History rows newest first, fetched a page at a time (stop iterating when full)."""
        cursor = before_id
        while True:
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
            if cursor is not None:
                query = query.where(Message.id < cursor)
            async with self.engine.connect() as conn:
                rows = (await conn.execute(query)).all()
            for row in rows:
                yield StoredMessage(*row)
            if len(rows) < page_size:
                return
            cursor = rows[-1][0]
            page_size = min(page_size * 4, 4096)

    async def clear_history(self, chat_key: str) -> int:
        """Delete the chat's history; returns how many rows went."""
        async with self._session() as session:
            result = await session.execute(delete(Message).where(Message.chat_key == chat_key))
            await session.commit()
            return int(getattr(result, "rowcount", 0) or 0)

    async def pop_last_answer(self, chat_key: str) -> StoredMessage | None:
        """For /retry: delete the newest assistant turns, return the user turn before them."""
        async with self._session() as session:
            rows = (
                await session.execute(
                    select(Message)
                    .where(Message.chat_key == chat_key)
                    .order_by(Message.id.desc())
                    .limit(20)
                )
            ).scalars()
            doomed: list[int] = []
            found: Message | None = None
            for msg in rows:
                if msg.role == "user":
                    found = msg
                    break
                doomed.append(msg.id)
            if found is None:
                return None
            if doomed:
                await session.execute(delete(Message).where(Message.id.in_(doomed)))
            await session.commit()
            return StoredMessage(
                found.id, found.role, found.content, found.name, found.token_count, found.encoding
            )

    async def set_message_status(self, message_id: int, status: str) -> None:
        """Mark a stored turn (e.g. a user turn that was refused: "withheld")."""
        async with self._session() as session:
            await session.execute(
                update(Message).where(Message.id == message_id).values(status=status)
            )
            await session.commit()

    # -- usage ----------------------------------------------------------------------------
    async def add_usage(self, **values: Any) -> None:
        """Record what one model call consumed."""
        async with self._session() as session:
            session.add(UsageRecord(**values))
            await session.commit()

    async def count_messages(self, chat_key: str) -> int:
        """How many history rows a chat holds (for tests and tools)."""
        from sqlalchemy import func

        async with self._session() as session:
            result = await session.execute(
                select(func.count()).select_from(Message).where(Message.chat_key == chat_key)
            )
            return int(result.scalar_one())
