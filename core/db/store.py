"""The history store: short transactions, never held open across a model call."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Date,
    TextClause,
    bindparam,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.sql.schema import ScalarElementColumnDefault, Table

from core.accounting import spend_day, spend_subjects
from core.config import asyncpg_connect_args
from core.db import database
from core.db.database import Database, Statement, sqlite_pragmas
from core.db.models import (
    Base,
    BudgetOverride,
    Chat,
    ChatLease,
    InboundEvent,
    Message,
    UsageRecord,
    utcnow,
)
from core.types import ChatRef


@dataclass(frozen=True, slots=True)
class ChatSettings:
    """What a person configured for one chat (None = the bot's default)."""

    system_prompt: str | None = None
    model: str | None = None
    voice_mode: str | None = None
    # The chat's history revision when these were read (None: the chat has no row yet).
    # Read as a message's turn begins: a held window of this revision is the history.
    history_rev: int | None = None


@dataclass(frozen=True, slots=True)
class PoppedAnswer:
    """What /retry took out of a chat's history: the user turn it answers again, and the
    answer's rows (put back by `Store.restore_answer` should the new answer fail)."""

    user: StoredMessage
    removed: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A history row as the trimming code needs it."""

    id: int
    role: str
    content: str
    name: str | None
    token_count: int
    encoding: str


def create_engine(
    url: str, *, pool_size: int = 10, max_overflow: int = 0, synchronous_commit: bool = True
) -> AsyncEngine:
    """An async engine for `url` with the settings relaybot needs on each backend.

    `synchronous_commit=False` (PostgreSQL): commits return before their WAL reaches the
    disk, for work that a crash of the server may undo safely (see `Database`).
    """
    # hide_parameters: a failed statement's error (logged with its traceback) names the
    # statement, not the values it was given (message text, names).
    kwargs: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": max_overflow,
        "hide_parameters": True,
    }
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": database.SQLITE_BUSY_SECONDS}
        # SQLite takes one writer at a time: several connections of one process only make
        # them fight over the file lock ("database is locked" under load). One connection
        # queues them in the pool instead, in order; WAL keeps reads cheap.
        kwargs.update(pool_size=1, max_overflow=0, pool_timeout=120)
    else:
        # libpq's settings in the URL (connect_timeout, TLS files, ...) as asyncpg takes them.
        url, kwargs["connect_args"] = asyncpg_connect_args(url)
        if not synchronous_commit:
            kwargs["connect_args"]["server_settings"] = {"synchronous_commit": "off"}
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    else:
        # A connection that sat idle may have been closed by the server (restart, idle
        # timeout): it is checked before use. SQLAlchemy's pool_pre_ping would check every
        # checkout, which on asyncpg costs three round trips each time.
        event.listen(engine.sync_engine, "checkin", _idle_since)
        event.listen(engine.sync_engine, "checkout", _ping_if_idle)
    return engine


def _idle_since(_dbapi_conn: DBAPIConnection | None, record: ConnectionPoolEntry) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(
    dbapi_conn: DBAPIConnection, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
) -> None:
    if database.is_closed(dbapi_conn):  # the server's end was already seen
        raise DisconnectionError("connection closed by the server")
    since = record.info.get("idle_since")
    if since is None or time.monotonic() - since < database.IDLE_PING_SECONDS:
        return
    try:
        dbapi_conn.ping()
    except Exception as exc:
        # The pool drops this connection and checks out another (a fresh one if need be).
        raise DisconnectionError("idle connection is gone") from exc


def new_revision() -> int:
    """A fresh value for `chats.history_rev` (random: a recreated chat never repeats one)."""
    return secrets.randbits(62) or 1


def bump_revision(
    conn: Connection, chat_key: str, expected: int | None = None
) -> tuple[int, bool]:
    """Give the chat's history a new revision; True when it was `expected` before.

    Every change to a chat's stored history goes through here, so a process holding a
    copy of that history (`core.history`) knows its copy is still exact when the revision
    it last saw is the one it replaces, in the same transaction as its own change.
    """
    revision = new_revision()
    params = {"chat_key": chat_key, "revision": revision, "now": utcnow()}
    if expected is not None:
        swapped = _SWAP_REVISION.execute(conn, {**params, "expected": expected})
        if swapped.rowcount == 1:
            return revision, True
    # A chat's first turn creates its row (every message of a new chat starts here).
    upsert = _UPSERT_REVISION[conn.dialect.name]
    upsert.execute(conn, {**params, "platform": ChatRef.platform_of(chat_key)})
    return revision, False


def _upsert_revision(dialect: Any) -> Statement:
    """Create the chat's row with a history revision, or set the revision on it: built
    once, every column given (building it per call, with the model's Python-side
    defaults, cost ~0.3 ms of CPU for each new chat)."""
    row: dict[str, Any] = {
        "key": bindparam("chat_key"),
        "platform": bindparam("platform"),
        "system_prompt": None,
        "model": None,
        "voice_mode": None,
        "history_rev": bindparam("revision"),
        "created_at": bindparam("now"),
        "updated_at": bindparam("now"),
    }
    changed = {name: row[name] for name in ("history_rev", "updated_at")}
    stmt = dialect.insert(Chat).values(**row)
    return Statement(stmt.on_conflict_do_update(index_elements=[Chat.key], set_=changed))


# Each dialect has its own ON CONFLICT construct.
_UPSERT_REVISION = {"sqlite": _upsert_revision(sqlite), "postgresql": _upsert_revision(postgresql)}


# Statements run for every message are built once (bound parameters, no per-call building).
_SWAP_REVISION = Statement(
    update(Chat)
    .where(Chat.key == bindparam("chat_key"), Chat.history_rev == bindparam("expected"))
    .values(history_rev=bindparam("revision"), updated_at=bindparam("now"))
)
_INSERT_MESSAGE = Statement(insert(Message).returning(Message.id))
_INSERT_USAGE = Statement(insert(UsageRecord))
_EVENT_ANSWERED = Statement(
    update(InboundEvent).where(InboundEvent.id == bindparam("event_id")).values(status="answered")
)
_EVENT_DONE = Statement(
    update(InboundEvent)
    .where(InboundEvent.id == bindparam("event_id"))
    .values(
        status="done",
        finished_at=bindparam("now"),
        payload=None,
        claimed_by=None,
        lease_until=None,
    )
)
_RELEASE_CHAT = Statement(
    delete(ChatLease).where(
        ChatLease.chat_key == bindparam("chat_key"), ChatLease.holder == bindparam("holder")
    )
)
# The chat's settings (its own row and its parent's), as `merge_chat_settings` reads them:
# a row per chat found, or one row of NULLs. Also part of the PostgreSQL statements that take
# a chat's turn (core.inbox). Two lookups by key, not `key IN (chat, parent)`: PostgreSQL plans
# a prepared statement once, and while `chats` is small (a new deployment, or thousands of new
# chats faster than autovacuum analyzes) it planned the IN as a sequential scan and kept that
# plan as the table grew: every message then read every chat. An equality on the key uses
# its index.
CHAT_SETTINGS_SQL = """
    wanted.key, wanted.system_prompt, wanted.model, wanted.voice_mode, wanted.history_rev
    FROM (SELECT 1) AS one
    LEFT JOIN (
        SELECT key, system_prompt, model, voice_mode, history_rev FROM chats
        WHERE key = CAST(:chat_key AS VARCHAR)
        UNION ALL
        SELECT key, system_prompt, model, voice_mode, history_rev FROM chats
        WHERE key = CAST(:parent_key AS VARCHAR)
    ) AS wanted ON true
"""
_CHAT_SETTINGS = Statement(text(f"SELECT {CHAT_SETTINGS_SQL}"))
_HISTORY_COLUMNS = (
    Message.id,
    Message.role,
    Message.content,
    Message.name,
    Message.token_count,
    Message.encoding,
)
_NEWEST = (
    select(*_HISTORY_COLUMNS)
    .where(Message.chat_key == bindparam("chat_key"), Message.status != "withheld")
    .order_by(Message.id.desc())
    .limit(bindparam("size"))
)
_OLDER = _NEWEST.where(Message.id < bindparam("before_id"))
_REVISION = select(Chat.history_rev).where(Chat.key == bindparam("chat_key"))
_STILL_OURS = Statement(
    select(InboundEvent.id).where(
        InboundEvent.id == bindparam("event_id"), InboundEvent.claimed_by == bindparam("worker")
    )
)
_LAST_ID = Statement(select(func.max(Message.id)).where(Message.chat_key == bindparam("chat_key")))


@dataclass(frozen=True, slots=True)
class Appended:
    """What `Store.append_messages` did: the new rows' ids and the history's revision."""

    ids: list[int]
    revision: int
    # True when the history was at the revision the caller expected before this change.
    continued: bool
    # The id of the chat's newest stored turn before this change (None: it had none).
    last_before: int | None
    # Nothing stored: the chat was forgotten while its answer was made (`_answers_a_turn`).
    forgotten: bool = False


def _page(
    conn: Connection, chat_key: str, page_size: int, before_id: int | None
) -> list[StoredMessage]:
    params: dict[str, Any] = {"chat_key": chat_key, "size": page_size}
    if before_id is None:
        return [StoredMessage(*row) for row in conn.execute(_NEWEST, params)]
    params["before_id"] = before_id
    return [StoredMessage(*row) for row in conn.execute(_OLDER, params)]


class HistoryPages:
    """History rows newest first; `revision` is the chat's history revision when read."""

    def __init__(
        self,
        db: Database,
        chat_key: str,
        revision: int | None,
        last_id: int | None,
        first: list[StoredMessage],
        page_size: int,
    ) -> None:
        self.db = db
        self.chat_key = chat_key
        self.revision = revision
        # The newest stored turn's id, withheld ones included.
        self.last_id = last_id
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
            rows = await self.db.run(
                _page, self.chat_key, size, cursor, autocommit=True, durable=False
            )


def _first_page(
    conn: Connection, chat_key: str, page_size: int
) -> tuple[int | None, int | None, list[StoredMessage]]:
    revision = conn.execute(_REVISION, {"chat_key": chat_key}).scalar()
    last_id = _LAST_ID.execute(conn, {"chat_key": chat_key}).fetchone()[0]
    return revision, last_id, _page(conn, chat_key, page_size, None)


class Store:
    """All reads and writes of chats, history and usage."""

    def __init__(self, engine: AsyncEngine, turns_engine: AsyncEngine | None = None) -> None:
        self.engine = engine
        self.db = Database(engine, turns_engine)
        self._session = async_sessionmaker(engine, expire_on_commit=False)

    async def close(self) -> None:
        """Release what the store holds beside the engine (its SQLite thread)."""
        await self.db.dispose()

    # -- chat settings --------------------------------------------------------------------
    async def chat_settings(self, chat_key: str, parent_key: str | None = None) -> ChatSettings:
        """The chat's settings; a thread inherits what its channel or group set."""
        return await self.db.run(
            read_chat_settings, chat_key, parent_key, autocommit=True, durable=False
        )

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
        release_chat: str | None = None,
        claim: tuple[int, str] | None = None,
    ) -> Appended:
        """Append history rows in order in one transaction.

        With `answered_event`, that inbound event is marked answered in the same
        transaction, so a crash after this point never sends the answer twice; with
        `close_event` it is closed ("done") outright. `usage` is recorded alongside.
        `expected_revision`: the history revision the caller's copy reflects (see
        `bump_revision`); the result says whether it still did before these rows.
        `release_chat`: the worker whose chat lease ends with this (PostgreSQL replicas).
        `claim`: (event id, worker): store the rows only while that worker holds the
        event's claim; otherwise nothing but the usage is stored and `ids` is empty.
        """
        change = _Change(
            chat_key,
            tuple(rows),
            answered_event,
            usage,
            close_event,
            expected_revision,
            release_chat,
            claim,
        )
        if self.db.shared and len(rows) == 1:
            # PostgreSQL: the whole change is one statement, so one round trip.
            statement, params = _pg_append(change)
            rows = await self.db.fetch(statement, params, durable=False)
            return _pg_appended(change, params["revision"], rows[0])
        return await self.db.run(_append, change, durable=False)

    async def newest_messages(
        self, chat_key: str, *, page_size: int = 64
    ) -> AsyncIterator[StoredMessage]:
        """History rows newest first, fetched a page at a time (stop iterating when full)."""
        async for row in await self.read_history(chat_key, page_size=page_size):
            yield row

    async def read_history(self, chat_key: str, *, page_size: int = 64) -> HistoryPages:
        """The chat's history revision and its rows newest first, a page at a time."""
        revision, last_id, rows = await self.db.run(
            _first_page, chat_key, page_size, autocommit=True, durable=False
        )
        return HistoryPages(self.db, chat_key, revision, last_id, rows, page_size)

    async def clear_history(self, chat_key: str) -> int:
        """Delete the chat's history; returns how many rows went."""
        return await self.db.run(_clear_history, chat_key)

    async def pop_last_answer(self, chat_key: str) -> PoppedAnswer | None:
        """For /retry: delete the newest assistant turns and return them with the user turn
        they answered (turns refused by moderation are skipped: they were never answered)."""
        return await self.db.run(_pop_last_answer, chat_key)

    async def restore_answer(self, chat_key: str, popped: PoppedAnswer) -> bool:
        """Put back an answer /retry took out, unless another was stored since (True if so)."""
        return await self.db.run(_restore_answer, chat_key, popped)

    async def set_message_status(self, chat_key: str, message_id: int, status: str) -> None:
        """Mark a stored turn (e.g. a user turn that was refused: "withheld")."""
        await self.db.run(_set_message_status, chat_key, message_id, status)

    # -- usage ----------------------------------------------------------------------------
    async def add_usage(self, **values: Any) -> None:
        """Record what one model call consumed."""
        await self.db.run(_add_usage, [values])

    async def add_usage_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """Record what many model calls consumed, in one transaction (tools, imports)."""
        await self.db.run(_add_usage, list(rows))

    async def spent(
        self, subjects: Mapping[str, str], today: date, month: date
    ) -> dict[str, tuple[float, float]]:
        """What each scope's subject ({"user": "telegram:1", ...}) spent today and since
        `month`, from the day totals: at most a month of rows each, in one statement."""
        scopes = tuple(sorted(subjects))
        statement = _spent_statement(scopes)
        params: dict[str, Any] = {f"subject_{scope}": subjects[scope] for scope in scopes}
        params.update(today=today, month=month)
        if self.db.shared:  # PostgreSQL: straight to asyncpg, as the per-message steps go
            assert isinstance(statement.statement, TextClause)
            rows = await self.db.fetch(statement.statement, params, durable=False)
        else:
            rows = await self.db.run(_read, statement, params, autocommit=True, durable=False)
        return {scope: (float(day), float(total)) for scope, day, total in rows}

    async def count_messages(self, chat_key: str) -> int:
        """How many history rows a chat holds (for tests and tools)."""
        return await self.db.run(_count_messages, chat_key)

    async def move_chat(self, old_key: str, new_key: str) -> int:
        """Everything stored under chat `old_key` now belongs to `new_key` (a Telegram group
        upgraded to a supergroup gets a new id): history, settings, events, usage, the
        chat's spend and budgets. What the new chat already set wins. Returns the history
        rows moved."""
        return await self.db.run(_move_chat, old_key, new_key)

    async def has_history(self, chat_key: str) -> bool:
        """Whether the chat holds a history turn other than transcripts posted unasked
        (one indexed look-up)."""
        return await self.db.run(_has_history, chat_key, autocommit=True, durable=False)


# -- units of work (each runs in one transaction, see core.db.database) ---------------------
def read_chat_settings(conn: Connection, chat_key: str, parent_key: str | None) -> ChatSettings:
    """The chat's settings merged with its parent's (a unit of work, or part of one)."""
    params = {"chat_key": chat_key, "parent_key": parent_key}
    rows = _CHAT_SETTINGS.execute(conn, params).fetchall()
    return merge_chat_settings(rows, chat_key, parent_key)


def merge_chat_settings(
    rows: Iterable[Sequence[Any]], chat_key: str, parent_key: str | None
) -> ChatSettings:
    """Settings from (key, system_prompt, model, voice_mode, history_rev) rows: the chat's
    own first."""
    found = {row[0]: tuple(row[1:5]) for row in rows if row[0] is not None}
    if not found:
        return ChatSettings()
    own = found.get(chat_key, (None, None, None, None))
    parent = found.get(parent_key or "", (None, None, None, None))
    merged = [
        mine if mine is not None else theirs
        for mine, theirs in zip(own[:3], parent[:3], strict=True)
    ]
    revision = own[3]
    return ChatSettings(
        system_prompt=merged[0],
        model=merged[1],
        voice_mode=merged[2],
        history_rev=None if revision is None else int(revision),
    )


@dataclass(frozen=True, slots=True)
class _Change:
    """What `Store.append_messages` is asked to store, in one transaction."""

    chat_key: str
    rows: tuple[dict[str, Any], ...]
    answered_event: int | None
    usage: dict[str, Any] | None
    close_event: bool
    expected_revision: int | None
    release_chat: str | None
    claim: tuple[int, str] | None


def _append(conn: Connection, change: _Change) -> Appended:
    chat_key, usage, claim = change.chat_key, change.usage, change.claim
    now = utcnow()
    last_before = _LAST_ID.execute(conn, {"chat_key": chat_key}).fetchone()[0]
    if (
        claim is not None
        and not _STILL_OURS.execute(conn, {"event_id": claim[0], "worker": claim[1]}).fetchone()
    ):
        # Another process took the event over: it stores its own answer. What this one
        # spent is still recorded.
        if usage is not None:
            _record_usage(conn, _usage_values(usage, now))
        return Appended([], 0, False, last_before)
    bumped: tuple[int, bool] | None = None
    if _answers_a_turn(change):
        assert change.expected_revision is not None
        # The revision first (the same statements, in another order): it tells a chat
        # forgotten while the answer was made from one that goes on.
        bumped = _bump_unless_forgotten(conn, chat_key, change.expected_revision)
        if bumped is None:
            _drop_answer(conn, change, now)
            return Appended([], 0, False, last_before, forgotten=True)
    ids = [
        int(_INSERT_MESSAGE.execute(conn, _message_values(chat_key, row, now)).fetchone()[0])
        for row in change.rows
    ]
    if usage is not None:
        _record_usage(conn, _usage_values(usage, now))
    if change.answered_event is not None:
        if change.close_event:
            _EVENT_DONE.execute(conn, {"event_id": change.answered_event, "now": now})
        else:
            _EVENT_ANSWERED.execute(conn, {"event_id": change.answered_event})
    revision, continued = bumped or bump_revision(conn, chat_key, change.expected_revision)
    if change.release_chat is not None:
        _RELEASE_CHAT.execute(conn, {"chat_key": chat_key, "holder": change.release_chat})
    return Appended(ids, revision, continued, last_before)


def _answers_a_turn(change: _Change) -> bool:
    """Whether `change` is the answer to a turn stored at the revision it expects (the
    running event's last turn): one whose chat's row must still be there.

    The chat's row goes only with the chat (/forget). A person's new turn may expect a
    revision of a chat forgotten since (the window kept in memory): it starts the chat
    again. An answer expects the revision its own turn was stored at: gone, its turn was
    forgotten while it was made.
    """
    return (
        change.answered_event is not None
        and change.expected_revision is not None
        and all(row.get("role") != "user" for row in change.rows)
    )


def _bump_unless_forgotten(
    conn: Connection, chat_key: str, expected: int
) -> tuple[int, bool] | None:
    """`bump_revision`, or None (nothing changed) when the chat's row is gone."""
    revision = new_revision()
    params = {"chat_key": chat_key, "revision": revision, "now": utcnow(), "expected": expected}
    if _SWAP_REVISION.execute(conn, params).rowcount == 1:
        return revision, True
    if conn.execute(_REVISION, {"chat_key": chat_key}).first() is None:
        return None
    return bump_revision(conn, chat_key)


def _drop_answer(conn: Connection, change: _Change, now: datetime) -> None:
    """The chat was forgotten while its answer was made: nothing of it is stored (the
    event goes too, as /forget takes a chat's finished events). What the answer cost is
    kept as /forget keeps usage: naming no chat or person, but counted toward their
    budgets (as /forget keeps their day totals)."""
    if change.usage is not None:
        anonymous = {**change.usage, "chat_key": None, "user_id": None}
        counted = _usage_values(change.usage, now)
        _record_usage(conn, _usage_values(anonymous, now), counted)
    conn.execute(delete(InboundEvent).where(InboundEvent.id == change.answered_event))
    if change.release_chat is not None:
        _RELEASE_CHAT.execute(conn, {"chat_key": change.chat_key, "holder": change.release_chat})


def _message_values(chat_key: str, row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Every column of a new `messages` row (defaults filled in, as an insert would)."""
    message = {**_MESSAGE_DEFAULTS, "created_at": now, "chat_key": chat_key, **row}
    return {c: message[c] for c in _MESSAGE_COLUMNS}


def _usage_values(usage: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Every column of a new `usage` row (defaults filled in, as an insert would)."""
    spent = {**_USAGE_DEFAULTS, "created_at": now, **usage}
    return {c: spent[c] for c in _USAGE_COLUMNS}


def _spend_sql(scopes: tuple[str, ...]) -> str:
    """Add a usage row's cost (`:u_cost_usd`) to the day's total (`:s_day`) of each scope's
    subject (`:s_user`, ...), creating it at the day's first: one statement, as written for
    SQLite and PostgreSQL alike (and part of the PostgreSQL append)."""
    values = ", ".join(f"('{scope}', :s_{scope}, :s_day, :u_cost_usd)" for scope in scopes)
    return (
        f"INSERT INTO spend_totals (scope, subject, day, cost_usd) VALUES {values} "
        "ON CONFLICT (scope, subject, day) "
        "DO UPDATE SET cost_usd = spend_totals.cost_usd + excluded.cost_usd"
    )


_ADD_SPEND: dict[tuple[str, ...], Statement] = {}


def _spend_params(spent: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The scopes whose day totals a usage row adds to (user, chat, global: always in this
    order, so concurrent writers lock them in one order; none when it cost nothing) and the
    parameters of `_spend_sql`."""
    if not spent["cost_usd"]:
        return (), {}
    subjects = spend_subjects(spent["platform"], spent["user_id"], spent["chat_key"])
    params: dict[str, Any] = {f"s_{scope}": subject for scope, subject in subjects}
    params.update(s_day=spend_day(spent["created_at"]), u_cost_usd=spent["cost_usd"])
    return tuple(scope for scope, _ in subjects), params


_SPENT: dict[tuple[str, ...], Statement] = {}


def _spent_statement(scopes: tuple[str, ...]) -> Statement:
    """Today's and this month's spend of each scope's subject (`:subject_user`, ...), a row
    per scope: built once per set of scopes (building it per message cost more than
    running it). Plain SQL, for SQLite's thread and asyncpg alike."""
    if scopes not in _SPENT:
        sql = "\nUNION ALL\n".join(
            f"SELECT '{scope}', "
            "coalesce(sum(CASE WHEN day >= :today THEN cost_usd ELSE 0 END), 0), "
            "coalesce(sum(cost_usd), 0) FROM spend_totals "
            f"WHERE scope = '{scope}' AND subject = :subject_{scope} AND day >= :month"
            for scope in scopes
        )
        dates = (bindparam("today", type_=Date()), bindparam("month", type_=Date()))
        _SPENT[scopes] = Statement(text(sql).bindparams(*dates))
    return _SPENT[scopes]


def _read(conn: Connection, statement: Statement, params: dict[str, Any]) -> list[Any]:
    return list(statement.execute(conn, params).fetchall())


def _record_usage(
    conn: Connection, spent: dict[str, Any], counted: dict[str, Any] | None = None
) -> None:
    """Insert a usage row (every column given) and add its cost to the day totals (of the
    chat and person `counted` names, when the row itself names none)."""
    _INSERT_USAGE.execute(conn, spent)
    scopes, params = _spend_params(counted or spent)
    if scopes:
        if scopes not in _ADD_SPEND:
            sql = text(_spend_sql(scopes)).bindparams(bindparam("s_day", type_=Date()))
            _ADD_SPEND[scopes] = Statement(sql)
        _ADD_SPEND[scopes].execute(conn, params)


def _columns(table: Table) -> tuple[str, ...]:
    """The columns an insert fills (all but the generated id)."""
    return tuple(c.name for c in table.columns if not c.primary_key)


def _defaults(table: Table) -> dict[str, Any]:
    """Each column's value when an insert leaves it out: its scalar default, else NULL."""
    values: dict[str, Any] = {}
    for column in table.columns:
        default = column.default
        values[column.name] = (
            default.arg if isinstance(default, ScalarElementColumnDefault) else None
        )
    return values


# The PostgreSQL statement is text, so it takes the tables' columns, types and defaults
# from the models rather than a second copy of them.
_MESSAGES_TABLE = Base.metadata.tables["messages"]
_USAGE_TABLE = Base.metadata.tables["usage"]
_MESSAGE_COLUMNS = _columns(_MESSAGES_TABLE)
_USAGE_COLUMNS = _columns(_USAGE_TABLE)
_MESSAGE_DEFAULTS = _defaults(_MESSAGES_TABLE)
_USAGE_DEFAULTS = _defaults(_USAGE_TABLE)
_PG_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]
_MESSAGE_TYPES = {c.name: c.type.compile(dialect=_PG_DIALECT) for c in _MESSAGES_TABLE.columns}
_PG_APPEND: dict[tuple[bool, tuple[str, ...], str, bool, bool, bool], TextClause] = {}


def _pg_append_statement(
    usage: bool,
    spend: tuple[str, ...],
    event: str,
    release: bool,
    fenced: bool,
    answer: bool = False,
) -> TextClause:
    """`_append` as one PostgreSQL statement (data-modifying WITH queries, all or nothing).

    `prev` locks the chat's row and reads the revision being replaced; the other parts
    insert the turn, give the history a new revision and, as asked, record usage, move
    the inbound event on and end the chat's lease. `spend`: the scopes whose day totals the
    usage adds to. `fenced`: the turn is stored (and the event moved on) only while this
    worker still holds the event's claim. `answer`: an answer to a turn stored at the
    revision it expects (`_answers_a_turn`): should the chat's row be gone (forgotten
    meanwhile), nothing of it is stored, the event is deleted and the usage names no one.
    """
    key = (usage, spend, event, release, fenced, answer)
    if key not in _PG_APPEND:
        held = ["EXISTS (SELECT 1 FROM claim)"] if fenced else []
        if answer:
            held.append("EXISTS (SELECT 1 FROM prev)")
        ours = f" WHERE {' AND '.join(held)}" if held else ""
        values = ", ".join(f"CAST(:m_{c} AS {_MESSAGE_TYPES[c]})" for c in _MESSAGE_COLUMNS)
        parts = [
            "prev AS (SELECT history_rev FROM chats WHERE key = :chat_key FOR UPDATE)",
            f"turn AS (INSERT INTO messages ({', '.join(_MESSAGE_COLUMNS)}) "
            f"SELECT {values}{ours} RETURNING id)",
            "rev AS (INSERT INTO chats (key, platform, history_rev, created_at, updated_at) "
            "SELECT CAST(:chat_key AS VARCHAR), CAST(:platform AS VARCHAR), "
            "CAST(:revision AS BIGINT), CAST(:now AS TIMESTAMPTZ), CAST(:now AS TIMESTAMPTZ)"
            f"{ours} ON CONFLICT (key) DO UPDATE "
            "SET history_rev = EXCLUDED.history_rev, updated_at = EXCLUDED.updated_at)",
        ]
        if fenced:
            parts.insert(
                0,
                "claim AS (SELECT 1 FROM inbound_events WHERE id = :claim_event "
                "AND claimed_by = :claim_worker FOR UPDATE)",
            )
        kept = "EXISTS (SELECT 1 FROM prev)"
        if usage:
            spent = [f":u_{c}" for c in _USAGE_COLUMNS]
            if answer:  # a forgotten chat's usage names no chat or person
                spent = [
                    f"CASE WHEN {kept} THEN CAST(:u_{c} AS VARCHAR) END"
                    if c in ("chat_key", "user_id")
                    else value
                    for c, value in zip(_USAGE_COLUMNS, spent, strict=True)
                ]
            parts.append(
                f"spent AS (INSERT INTO usage ({', '.join(_USAGE_COLUMNS)}) VALUES "
                f"({', '.join(spent)}))"
            )
        if spend:
            # Counted toward the chat's and the person's budgets even should the chat be
            # gone (/forget keeps their day totals: it gives no fresh budget).
            parts.append(f"spend AS ({_spend_sql(spend)})")
        also = " AND EXISTS (SELECT 1 FROM claim)" if fenced else ""
        moved = f"{also} AND {kept}" if answer else also
        if event == "answered":
            parts.append(
                "event AS (UPDATE inbound_events SET status = 'answered' "
                f"WHERE id = :event_id{moved})"
            )
        elif event == "done":
            parts.append(
                "event AS (UPDATE inbound_events SET status = 'done', finished_at = :now, "
                "payload = NULL, claimed_by = NULL, lease_until = NULL "
                f"WHERE id = :event_id{moved})"
            )
        if event and answer:
            parts.append(
                f"forgotten AS (DELETE FROM inbound_events WHERE id = :event_id{also} "
                f"AND NOT {kept})"
            )
        if release:
            parts.append(
                "lease AS (DELETE FROM chat_leases WHERE chat_key = :chat_key "
                "AND holder = :holder)"
            )
        sql = "WITH " + ",\n".join(parts) + "\nSELECT (SELECT id FROM turn), "
        sql += "(SELECT history_rev FROM prev), "
        sql += "(SELECT max(id) FROM messages WHERE chat_key = :chat_key)"
        _PG_APPEND[key] = text(sql)
    return _PG_APPEND[key]


def _pg_append(change: _Change) -> tuple[TextClause, dict[str, Any]]:
    """`_append` as one PostgreSQL statement and its parameters."""
    chat_key, usage, claim = change.chat_key, change.usage, change.claim
    now = utcnow()
    message = _message_values(chat_key, change.rows[0], now)
    params: dict[str, Any] = {f"m_{c}": message[c] for c in _MESSAGE_COLUMNS}
    params.update(
        chat_key=chat_key,
        platform=ChatRef.platform_of(chat_key),
        revision=new_revision(),
        now=now,
        event_id=change.answered_event,
        holder=change.release_chat,
    )
    if claim is not None:
        params.update(claim_event=claim[0], claim_worker=claim[1])
    spend: tuple[str, ...] = ()
    if usage is not None:
        spent = _usage_values(usage, now)
        params.update({f"u_{c}": spent[c] for c in _USAGE_COLUMNS})
        spend, spend_params = _spend_params(spent)
        params.update(spend_params)
    event = ""
    if change.answered_event is not None:
        event = "done" if change.close_event else "answered"
    statement = _pg_append_statement(
        usage is not None,
        spend,
        event,
        change.release_chat is not None,
        claim is not None,
        _answers_a_turn(change),
    )
    return statement, params


def _pg_appended(change: _Change, revision: int, row: Sequence[Any]) -> Appended:
    """What `_pg_append`'s statement returned. (Its WITH parts' changes are not visible to
    the outer SELECT: it reads the chat as it was before the statement.)"""
    turn_id, previous, last_before = row
    if turn_id is None:
        # (Not stored: the claim was lost, or, for an answer, the chat's row is gone.)
        forgotten = previous is None and _answers_a_turn(change)
        return Appended([], revision, False, last_before, forgotten=forgotten)
    expected = change.expected_revision
    continued = expected is not None and previous == expected
    return Appended([int(turn_id)], revision, continued, last_before)


def _clear_history(conn: Connection, chat_key: str) -> int:
    result = conn.execute(delete(Message).where(Message.chat_key == chat_key))
    bump_revision(conn, chat_key)
    return int(result.rowcount or 0)


_ANSWER_COLUMNS = ("role", "content", "name", "token_count", "encoding", "status", "event_key")


def _pop_last_answer(conn: Connection, chat_key: str) -> PoppedAnswer | None:
    # The newest turn someone asked: refused turns and transcripts nobody asked about were
    # never answered, and any number of them may have come since (a group that gets
    # transcripts). Both look-ups use the chat's (chat_key, id) index: back from its newest
    # turn to the one asked, then the answer's rows after it.
    user = conn.execute(
        select(*_HISTORY_COLUMNS)
        .where(
            Message.chat_key == chat_key,
            Message.role == "user",
            Message.status.not_in(("withheld", "heard")),
        )
        .order_by(Message.id.desc())
        .limit(1)
    ).first()
    if user is None:
        return None
    doomed = conn.execute(
        select(Message.id, *(getattr(Message, column) for column in _ANSWER_COLUMNS))
        .where(Message.chat_key == chat_key, Message.id > user.id, Message.role != "user")
        .order_by(Message.id)
    ).all()
    if doomed:
        conn.execute(delete(Message).where(Message.id.in_([r.id for r in doomed])))
        bump_revision(conn, chat_key)
    removed = tuple({column: getattr(r, column) for column in _ANSWER_COLUMNS} for r in doomed)
    return PoppedAnswer(StoredMessage(*user), removed)


def _restore_answer(conn: Connection, chat_key: str, popped: PoppedAnswer) -> bool:
    answered_since = conn.execute(
        select(Message.id)
        .where(Message.chat_key == chat_key, Message.id > popped.user.id, Message.role != "user")
        .limit(1)
    ).first()
    if answered_since is not None or not popped.removed:
        return False
    now = utcnow()
    conn.execute(insert(Message), [_message_values(chat_key, r, now) for r in popped.removed])
    bump_revision(conn, chat_key)
    return True


def _set_message_status(conn: Connection, chat_key: str, message_id: int, status: str) -> None:
    conn.execute(update(Message).where(Message.id == message_id).values(status=status))
    bump_revision(conn, chat_key)


def _add_usage(conn: Connection, rows: list[dict[str, Any]]) -> None:
    now = utcnow()
    for values in rows:
        _record_usage(conn, _usage_values(values, now))


_ADD_CHAT_SPEND = text(
    "INSERT INTO spend_totals (scope, subject, day, cost_usd) "
    "SELECT scope, :new, day, cost_usd FROM spend_totals WHERE scope = 'chat' AND subject = :old "
    "ON CONFLICT (scope, subject, day) "
    "DO UPDATE SET cost_usd = spend_totals.cost_usd + excluded.cost_usd"
)


def _move_chat(conn: Connection, old: str, new: str) -> int:
    moved = conn.execute(update(Message).where(Message.chat_key == old).values(chat_key=new))
    conn.execute(update(InboundEvent).where(InboundEvent.chat_key == old).values(chat_key=new))
    conn.execute(update(UsageRecord).where(UsageRecord.chat_key == old).values(chat_key=new))
    conn.execute(_ADD_CHAT_SPEND, {"old": old, "new": new})
    conn.execute(
        text("DELETE FROM spend_totals WHERE scope = 'chat' AND subject = :old"), {"old": old}
    )
    taken = select(BudgetOverride.period).where(
        BudgetOverride.scope == "chat", BudgetOverride.subject == new
    )
    conn.execute(
        update(BudgetOverride)
        .where(
            BudgetOverride.scope == "chat",
            BudgetOverride.subject == old,
            BudgetOverride.period.not_in(taken.scalar_subquery()),
        )
        .values(subject=new)
    )
    conn.execute(
        delete(BudgetOverride).where(BudgetOverride.scope == "chat", BudgetOverride.subject == old)
    )
    settings = ("system_prompt", "model", "voice_mode")
    rows = {
        row.key: row
        for row in conn.execute(
            select(Chat.key, *(getattr(Chat, c) for c in settings)).where(Chat.key.in_((old, new)))
        )
    }
    if old in rows:
        if new in rows:
            kept = {c: getattr(rows[new], c) or getattr(rows[old], c) for c in settings}
            conn.execute(update(Chat).where(Chat.key == new).values(**kept))
            conn.execute(delete(Chat).where(Chat.key == old))
        else:
            conn.execute(update(Chat).where(Chat.key == old).values(key=new))
    bump_revision(conn, new)
    return int(moved.rowcount or 0)


def _has_history(conn: Connection, chat_key: str) -> bool:
    # A transcript the bot posted unasked ("heard") is not the bot taking part.
    query = (
        select(Message.id).where(Message.chat_key == chat_key, Message.status != "heard").limit(1)
    )
    return conn.execute(query).first() is not None


def _count_messages(conn: Connection, chat_key: str) -> int:
    query = select(func.count()).select_from(Message).where(Message.chat_key == chat_key)
    return int(conn.execute(query).scalar_one())
