"""Database tables: chats, the inbound event inbox, history messages and usage."""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a bigint identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Timezone-aware now, the one clock all rows use."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base with stable constraint names for migrations."""

    metadata = MetaData(naming_convention=NAMING)


class Chat(Base):
    """Per-conversation settings a person changed with commands."""

    __tablename__ = "chats"

    # On PostgreSQL this and the other chat-key columns (chat_leases, inbound_events,
    # messages, usage) are collated "C", in byte order as on SQLite (migration 0015): /forget
    # finds a chat's threads as a range of keys. Not declared here: `String(collation="C")`
    # would also render in core.db.store's CASTs to the column types, where it is no syntax.
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    system_prompt: Mapped[str | None] = mapped_column(Text, default=None)
    # A model's name is whatever the endpoint serves it as: vLLM's is the path it was started
    # with (a Hugging Face snapshot's runs past 128 characters), so no length is imposed.
    model: Mapped[str | None] = mapped_column(Text, default=None)
    # "answer" or "transcript": what a voice note in a group gets (None = the bot's default).
    voice_mode: Mapped[str | None] = mapped_column(String(16), default=None)
    # Changes whenever the chat's stored history does (see core.db.store.bump_revision).
    history_rev: Mapped[int | None] = mapped_column(BigInteger, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


# The statuses of an event not yet finished, and the same as SQL (for a partial index and
# the queries that must match it). "deferred": kept for a later attempt by the sweep (a
# voice note nobody addressed whose transcription failed for now), without holding its chat.
IN_HAND = ("received", "answered")  # waiting their turn, or being answered
NOT_ANSWERED = ("received", "deferred")  # waiting their turn, or kept for a later attempt
OPEN_STATUSES = (*IN_HAND, "deferred")
OPEN_EVENTS = f"status IN ({', '.join(repr(status) for status in OPEN_STATUSES)})"


class InboundEvent(Base):
    """Every platform event, recorded before any work; the unique key drops redeliveries."""

    __tablename__ = "inbound_events"
    __table_args__ = (
        # The events still waiting for their turn, by chat: "does an older event of this
        # chat wait?" is asked for every message. Partial, so it holds only the waiting few
        # and the planner cannot prefer the status index, which under a burst reads every
        # waiting event of every chat (thousands per message in a 5,000-chat burst on
        # PostgreSQL).
        Index(
            "ix_inbound_events_waiting",
            "chat_key",
            "id",
            postgresql_where=text("status = 'received'"),
            sqlite_where=text("status = 'received'"),
        ),
        # The open events by the process working on them, for its heartbeat (which renews
        # their leases every few seconds): planned while the table was small, it read the
        # whole table (every event ever received, until retention) on each beat. Its query
        # names the same statuses, literally, so the planner can match the index.
        # Retention deletes the oldest finished events.
        Index("ix_inbound_events_received_at", "received_at"),
        Index(
            "ix_inbound_events_open_claims",
            "claimed_by",
            postgresql_where=text(OPEN_EVENTS),
            sqlite_where=text(OPEN_EVENTS),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_key: Mapped[str] = mapped_column(String(255), unique=True)
    chat_key: Mapped[str] = mapped_column(String(255), index=True)
    sender_id: Mapped[str] = mapped_column(String(128))
    # received -> answered (reply stored) -> done | failed; received -> deferred (kept for
    # the next sweep, which takes it as received again)
    status: Mapped[str] = mapped_column(String(16), default="received", index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # The neutral message as JSON, so unfinished work can resume after a crash.
    payload: Mapped[str | None] = mapped_column(Text, default=None)
    # Which process works on it, and until when that claim holds.
    claimed_by: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The platform messages already showing (part of) the answer, in order, separated by
    # spaces: a resumed answer continues in them instead of posting it again.
    reply_ref: Mapped[str | None] = mapped_column(Text, default=None)


class ChatLease(Base):
    """Which replica currently answers a chat: one at a time, across processes."""

    __tablename__ = "chat_leases"

    chat_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    lease_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Message(Base):
    """One history turn; its token count is computed once, at insert."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_chat_key_id", "chat_key", "id"),
        # Retention deletes the oldest turns (see `core.privacy.purge_expired`).
        Index("ix_messages_created_at", "created_at"),
        # A resumed event asks whether its user turn was stored (user turns only: others
        # have no event key).
        Index(
            "ix_messages_event_key",
            "event_key",
            postgresql_where=text("event_key IS NOT NULL"),
            sqlite_where=text("event_key IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    chat_key: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(String(64), default=None)
    token_count: Mapped[int] = mapped_column(Integer)
    encoding: Mapped[str] = mapped_column(String(32))
    # "ok", "partial" (stream cut), "withheld" (flagged output, never sent back to the model),
    # "heard" (a voice note's transcript posted in a group: context, nobody asked the bot)
    status: Mapped[str] = mapped_column(String(16), default="ok")
    event_key: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UsageRecord(Base):
    """What one model call consumed, for accounting."""

    __tablename__ = "usage"
    # /usage sums one person's spend since the start of the day or month.
    __table_args__ = (Index("ix_usage_user", "platform", "user_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
    platform: Mapped[str] = mapped_column(String(32))
    chat_key: Mapped[str | None] = mapped_column(String(255), index=True)
    user_id: Mapped[str | None] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(Text)  # any length, as Chat.model
    kind: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    audio_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    images: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)


class SpendTotal(Base):
    """What one person, one chat or the whole bot spent on one day (UTC).

    Kept up to date in the transaction that records each usage row, so a budget reads at
    most a month of these rows instead of summing every usage row of the period (which
    grows with the bot's traffic: a global budget would read every request of the month).
    """

    __tablename__ = "spend_totals"

    # scope: "user" (subject "platform:user_id"), "chat" (a chat key) or "global" (subject "")
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)


class BudgetOverride(Base):
    """A budget an admin set with /budget, replacing the configured one for its subject."""

    __tablename__ = "budget_overrides"

    # scope: "user" (subject "platform:user_id"), "chat" (a chat key) or "global" (subject "")
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    # period: "day" or "month"
    period: Mapped[str] = mapped_column(String(8), primary_key=True)
    # None: no limit at all; 0: no access.
    amount_usd: Mapped[float | None] = mapped_column(Float, default=None)
    set_by: Mapped[str] = mapped_column(String(160))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class RateLimitWindow(Base):
    """Requests one subject made that were let through, shared by every replica (see
    core/ratelimit.py: a true sliding one-minute window)."""

    __tablename__ = "rate_limit_windows"

    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    # The epoch millisecond the request came at (`hits`: those of that millisecond), or -1
    # for the subject's lock row, which orders its requests across replicas.
    window: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hits: Mapped[int] = mapped_column(Integer, default=0)
