"""The durable inbox: every event stored with its payload and a claim, resumable after a crash.

Life of an event: `received` (claimed by the process that stored it, with a lease it keeps
renewing) -> `answered` (the reply is stored, in the same transaction) -> `done` or `failed`.
A process that dies leaves its events `received` or `answered` with a lease that runs out;
whoever sweeps next (a restart, or another replica) claims them: `answered` ones are closed
without sending anything again, `received` ones are processed again.

Across replicas one chat is answered by one process at a time, oldest event first: a process
takes the chat's lease only when no older unfinished event of that chat exists.

Every lease time (claims, chat leases, the sweep's "now") is the database server's clock, not
the process's: a replica whose clock ran ahead of another's by more than a lease would see
that replica's live leases as run out and take over its events and chats (see `Inbox.now`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, case, delete, insert, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from core.db.database import Database, Statement
from core.db.models import OPEN_EVENTS, OPEN_STATUSES, ChatLease, InboundEvent, Message, utcnow
from core.db.store import CHAT_SETTINGS_SQL, ChatSettings, merge_chat_settings, read_chat_settings
from core.errors import UpstreamDown
from core.types import Attachment, AttachmentKind, ChatRef, IncomingMessage, Sender

# A surrogate code point: in a str only as half of a pair the text lost its other half
# (Python's stdin turns bytes that are not UTF-8 into them; JSON may carry "\ud83d" alone).
_SURROGATE = re.compile("[\ud800-\udfff]")
# Claims (and chat leases) renewed per statement: a bound list stays far below the drivers'
# limits on parameters however much work a process holds.
RENEW_BATCH = 1000


def valid_text(text: str) -> str:
    """`text` with each lone surrogate as U+FFFD: storable as UTF-8, which it is not."""
    if not _SURROGATE.search(text):
        return text
    # Pairs split into two code points join again; a lone half becomes U+FFFD.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def storable(msg: IncomingMessage) -> IncomingMessage:
    """`msg` with every text in it valid (see `valid_text`), as it is stored and answered:
    a lone surrogate would fail the event's storing (UTF-8 refuses it), ending the adapter
    (the console) or losing the message (PostgreSQL's driver raises DataError)."""
    parts = [msg.chat.chat_id, msg.chat.thread_id, msg.sender.id, msg.sender.name]
    parts += [msg.event_key, msg.text, msg.platform_message_id, msg.reply_to_text, msg.part_of]
    parts.append(msg.continuation_id)
    for a in msg.attachments:
        parts += [a.mime, a.filename, a.ref]
    if not any(_SURROGATE.search(p) for p in parts if p):
        return msg

    def valid(text: str | None) -> str | None:
        return None if text is None else valid_text(text)

    return replace(
        msg,
        chat=ChatRef(msg.chat.platform, valid_text(msg.chat.chat_id), valid(msg.chat.thread_id)),
        sender=replace(msg.sender, id=valid_text(msg.sender.id), name=valid_text(msg.sender.name)),
        event_key=valid_text(msg.event_key),
        text=valid_text(msg.text),
        platform_message_id=valid(msg.platform_message_id),
        reply_to_text=valid(msg.reply_to_text),
        part_of=valid(msg.part_of),
        continuation_id=valid(msg.continuation_id),
        attachments=tuple(
            replace(a, mime=valid_text(a.mime), filename=valid_text(a.filename), ref=valid(a.ref))
            for a in msg.attachments
        ),
    )


def new_worker_id() -> str:
    """A name for this process's claims."""
    return f"w-{uuid.uuid4().hex[:12]}"


def encode_message(msg: IncomingMessage) -> str:
    """The message as JSON; attachments keep what is needed to fetch them again (`ref`)."""
    return json.dumps(
        {
            "chat": [msg.chat.platform, msg.chat.chat_id, msg.chat.thread_id],
            "sender": [msg.sender.id, msg.sender.name, msg.sender.is_bot],
            "text": msg.text,
            "is_direct": msg.is_direct,
            "addressed_to_bot": msg.addressed_to_bot,
            "platform_message_id": msg.platform_message_id,
            "reply_to_text": msg.reply_to_text,
            "part_of": msg.part_of,
            "continuation_id": msg.continuation_id,
            "sent_at": msg.sent_at,
            "forwarded_from": msg.forwarded_from,
            "attachments": [
                {
                    "kind": a.kind.value,
                    "mime": a.mime,
                    "size": a.size,
                    "filename": a.filename,
                    "duration_seconds": a.duration_seconds,
                    "ref": a.ref,
                }
                for a in msg.attachments
            ],
        },
        ensure_ascii=False,
    )


async def _gone() -> bytes:
    raise UpstreamDown(
        "attachment not restorable",
        user_message="I lost the file you sent while restarting. Please send it again.",
    )


def decode_message(event_key: str, payload: str) -> IncomingMessage:
    """Rebuild a stored message; attachments fetch nothing until the adapter restores them."""
    data: dict[str, Any] = json.loads(payload)
    platform, chat_id, thread_id = data["chat"]
    sender_id, sender_name, sender_is_bot = data["sender"]
    return IncomingMessage(
        chat=ChatRef(platform, chat_id, thread_id),
        sender=Sender(sender_id, sender_name, sender_is_bot),
        event_key=event_key,
        text=data["text"],
        attachments=tuple(
            Attachment(
                kind=AttachmentKind(a["kind"]),
                mime=a["mime"],
                size=a["size"],
                filename=a["filename"],
                fetch=_gone,
                duration_seconds=a["duration_seconds"],
                ref=a["ref"],
            )
            for a in data["attachments"]
        ),
        is_direct=data["is_direct"],
        addressed_to_bot=data["addressed_to_bot"],
        platform_message_id=data["platform_message_id"],
        reply_to_text=data["reply_to_text"],
        part_of=data.get("part_of"),  # (not in events stored before it existed)
        continuation_id=data.get("continuation_id"),  # (nor this)
        sent_at=data.get("sent_at"),  # (nor this)
        forwarded_from=data.get("forwarded_from"),  # (nor this)
    )


@dataclass(frozen=True, slots=True)
class ClaimedEvent:
    """An unfinished event this process now owns."""

    id: int
    event_key: str
    chat_key: str
    status: str
    payload: str | None
    reply_ref: str | None = None
    # How many times a process took the event on before this claim (its first, included).
    attempts: int = 1


class Inbox:
    """Claims, leases and recovery queries on the inbound_events and chat_leases tables.

    `clock`: this host's time (an aware UTC datetime), the database's own on SQLite (one
    process, on this host). On PostgreSQL it plays no part in leases: see `now`.
    """

    def __init__(
        self,
        db: Database,
        worker_id: str,
        lease_seconds: float,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.db = db
        self.worker_id = worker_id
        self.lease = timedelta(seconds=lease_seconds)
        self.clock = clock
        # One process owns a SQLite file: local per-chat queues already order its chats.
        self.shared = db.shared
        # The server's clock as last read (PostgreSQL), and time.monotonic() at that moment.
        self._server_time: tuple[datetime, float] | None = None
        self._reading = asyncio.Lock()

    def _local_now(self) -> datetime:
        return self.clock() if self.clock is not None else utcnow()

    async def now(self) -> datetime:
        """The database's time now, for every lease time written or compared.

        PostgreSQL: the server's clock as last read (`read_server_clock`) plus the time
        elapsed since on this process's monotonic clock, so neither this host's clock being
        off nor its being stepped (NTP) moves a lease. Read again when older than half a
        lease (and at each `renew`). SQLite: this host's clock (one process).
        """
        if not self.shared:
            return self._local_now()
        read = self._server_time
        if read is None or time.monotonic() - read[1] > self.lease.total_seconds() / 2:
            async with self._reading:  # one reading for all who need it at once
                if self._server_time is read:
                    await self.read_server_clock()
        assert self._server_time is not None
        server, at = self._server_time
        return server + timedelta(seconds=time.monotonic() - at)

    async def read_server_clock(self) -> None:
        """Read the database server's clock (PostgreSQL; nothing to read on SQLite)."""
        if self.shared:
            self._server_time = await self.db.run(_server_clock, autocommit=True)

    async def record(self, msg: IncomingMessage) -> int | None:
        """Store the event, claimed by this process; None when its key was seen before."""
        try:
            return await self.db.run(_record, await self._values(msg), autocommit=True)
        except IntegrityError as error:
            await self._seen_or_raise(msg.event_key, error)
            return None

    async def _seen_or_raise(self, event_key: str, error: IntegrityError) -> None:
        """After an integrity error storing an event: return when its key is stored (a
        duplicate), else re-raise. Another constraint (or a trigger's) refusing the row is
        an error to report and not acknowledge, not a redelivery to drop: dropping it lost
        the message without a word."""
        if not await self.db.run(_event_seen, event_key):
            raise error

    async def _values(self, msg: IncomingMessage) -> dict[str, Any]:
        """The event's row, claimed by this process."""
        now = await self.now()
        return {
            "event_key": msg.event_key,
            "chat_key": msg.chat.key,
            "sender_id": msg.sender.id,
            "status": "received",
            "received_at": now,
            "payload": encode_message(msg),
            "claimed_by": self.worker_id,
            "lease_until": now + self.lease,
            "attempts": 1,
        }

    async def record_and_take(
        self, msg: IncomingMessage
    ) -> tuple[int | None, ChatSettings | None]:
        """`record`, and `try_acquire_chat` for the new event in the same step.

        For a message first in its chat's local queue: one round trip and one commit where
        there were two (on PostgreSQL one statement). (None, None) when its key was seen
        before; (id, None) when it was stored but the chat is not free (take it with
        `try_acquire_chat`, as usual).
        """
        if not self.shared:  # one process: the chat's turn is its local queue's; read settings
            try:
                return await self.db.run(
                    _record_and_read, await self._values(msg), msg.chat.parent_key, autocommit=True
                )
            except IntegrityError as error:
                await self._seen_or_raise(msg.event_key, error)
                return None, None
        values = await self._values(msg)
        # The lease's times are the event's claim's (the same lease length).
        params = {
            **values,
            "parent_key": msg.chat.parent_key,
            "holder": self.worker_id,
            "until": values["lease_until"],
            "now": values["received_at"],
        }
        rows = await self.db.fetch(_RECORD_AND_TAKE, params)
        event_id = rows[0][0]
        if event_id is None:
            return None, None
        chat = msg.chat
        return int(event_id), self._taken([row[1:] for row in rows], chat.key, chat.parent_key)

    async def finish(self, event_id: int, status: str) -> None:
        """Close an event ("done" or "failed"), drop its claim and the content it carried.

        Not if another process holds it now (this one stalled and was taken over): closing
        it would leave its new owner unable to store the answer it is giving.
        """
        await self.db.run(_finish, event_id, status, self.worker_id, autocommit=True)

    async def release(self, event_ids: Sequence[int]) -> None:
        """Give unfinished events back (shutdown): the next sweep anywhere takes them. Not
        one another process holds now (this one stalled and was taken over): giving that
        away would have a third take it on again beside its new owner."""
        if event_ids:
            await self.db.run(_release, list(event_ids), self.worker_id)

    async def defer(self, event_id: int) -> None:
        """Give an event back for a later attempt by the sweep, without holding its chat:
        "deferred" is open, but not waiting (the chat's later events go first)."""
        await self.db.run(_defer, event_id, self.worker_id)

    async def renew(self, event_ids: Collection[int], chat_keys: Collection[str]) -> None:
        """Extend the claims of `event_ids` and the leases of the chats `chat_keys`, the
        ones this process works on (call well within the lease).

        Only those: a claim or lease of this process that no work holds any more (the
        event stored but the reply to it lost, a chat whose release failed) must run out,
        so that a sweep answers the event and the chat's next message is not kept waiting.
        """
        # Two statements, each on its own: holding the events' locks while waiting for the
        # leases' (or the other way round) could deadlock with an answer being stored.
        # The server's clock is read again on every heartbeat (its rate and ours may differ).
        await self.read_server_clock()
        until = await self.now() + self.lease
        ids, keys = sorted(event_ids), sorted(chat_keys)
        for start in range(0, len(ids), RENEW_BATCH):
            batch = ids[start : start + RENEW_BATCH]
            await self.db.run(_renew_events, self.worker_id, batch, until, autocommit=True)
        if self.shared:
            for start in range(0, len(keys), RENEW_BATCH):
                batch_keys = keys[start : start + RENEW_BATCH]
                await self.db.run(
                    _renew_leases, self.worker_id, batch_keys, until, autocommit=True
                )

    async def claim_abandoned(
        self,
        platforms: Sequence[str],
        *,
        limit: int = 100,
        everything: bool = False,
        after: int = 0,
    ) -> list[ClaimedEvent]:
        """Claim unfinished events of `platforms` whose claim ran out (or all: `everything`),
        the oldest `limit` with an id above `after`, in id order.

        `everything` is for a process that knows it is alone (SQLite at start-up).
        """
        if not platforms:
            return []
        now = await self.now()
        return await self.db.run(
            _claim_abandoned,
            list(platforms),
            limit,
            everything,
            self.shared,
            self.worker_id,
            now,
            now + self.lease,
            after,
        )

    async def taken_over(self, event_ids: Sequence[int]) -> set[int]:
        """Those of `event_ids` another process claimed (our lease ran out while we stalled)."""
        if not event_ids:
            return set()
        return await self.db.run(_taken_over, list(event_ids), self.worker_id)

    async def remember_reply(self, event_key: str, refs: Sequence[str]) -> None:
        """Note the platform messages showing this event's answer, in order (while it is
        open); they replace what was noted before."""
        stored = encode_reply_refs(refs)
        await self.db.run(_remember_reply, event_key, stored, autocommit=True, durable=False)

    async def user_turn_stored(self, event_key: str) -> bool:
        """Whether this event's user turn already reached the history (a resumed event)."""
        return await self.user_turn_id(event_key) is not None

    async def user_turn_id(self, event_key: str) -> int | None:
        """The id of this event's user turn, if it already reached the history (a resumed
        event), else None."""
        return await self.db.run(_user_turn_id, event_key)

    async def status(self, event_id: int) -> str | None:
        """The event's status ("received", "answered", "done", ...); None when it is gone
        (its chat forgotten)."""
        return await self.db.run(_status, event_id, autocommit=True)

    # -- messages sent in parts (IncomingMessage.part_of, continuation_id) -------------------
    async def waiting(self, event_id: int) -> bool:
        """Whether the event still waits for its answer (not taken in by an earlier part)."""
        return await self.db.run(_waiting, event_id, autocommit=True)

    async def later_parts(
        self, event_id: int, chat_key: str, part_of: str
    ) -> list[tuple[int, IncomingMessage]]:
        """The chat's waiting events after `event_id` that are parts of `part_of`, in order."""
        parts = await self._later(event_id, chat_key, None)
        return [(i, msg) for i, msg in parts if msg.part_of == part_of]

    async def next_waiting(
        self, event_id: int, chat_key: str
    ) -> tuple[int, IncomingMessage] | None:
        """The chat's first waiting event after `event_id`, if any (a continuation?)."""
        later = await self._later(event_id, chat_key, 1)
        return later[0] if later else None

    async def newest_waiting(self, chat_key: str) -> IncomingMessage | None:
        """The chat's latest waiting event, if any (does it await a continuation?)."""
        rows = await self.db.run(_newest_waiting, chat_key, autocommit=True)
        return decode_message(rows[0][0], rows[0][1]) if rows and rows[0][1] else None

    async def _later(
        self, event_id: int, chat_key: str, limit: int | None
    ) -> list[tuple[int, IncomingMessage]]:
        rows = await self.db.run(_later_events, event_id, chat_key, limit, autocommit=True)
        return [(int(i), decode_message(key, payload)) for i, key, payload in rows if payload]

    async def join_parts(
        self, event_id: int, whole: IncomingMessage, parts: Sequence[int]
    ) -> None:
        """One transaction: the event now carries the `whole` message and its other `parts`
        are closed (answered with it). A crash on either side of it loses no part."""
        await self.db.run(_join_parts, event_id, encode_message(whole), list(parts))

    # -- per-chat leases across replicas ------------------------------------------------------
    async def try_acquire_chat(
        self, chat_key: str, parent_key: str | None, event_id: int
    ) -> ChatSettings | None:
        """Take the chat's lease if it is free and no older unfinished event of it waits.

        Returns the chat's settings, read in the same transaction, or None while another
        event (or replica) goes first.

        Every process's events count as older, this one's too: `ConversationService.submit`
        stores a chat's events one at a time in its local queue's order, so ids agree with
        that queue and nothing in it waits for an event queued behind it. Leaving our own
        events out would let a newer local event overtake an older one this process resumed
        for a dead replica (seen in tests/reliability/test_crash_replicas.py).
        """
        if not self.shared:
            return await self.db.run(
                read_chat_settings, chat_key, parent_key, autocommit=True, durable=False
            )
        # Every older unanswered event goes first, an abandoned one too: a sweeper (here or on
        # another replica) resumes it once its lease runs out. Overtaking it would answer the
        # chat out of order, without that turn in the history.
        now = await self.now()
        params = {
            "chat_key": chat_key,
            "parent_key": parent_key,
            "holder": self.worker_id,
            "until": now + self.lease,
            "now": now,
            "event_id": event_id,
        }
        rows = await self.db.fetch(_TAKE_CHAT, params, durable=False)
        return self._taken(rows, chat_key, parent_key)

    def _taken(
        self, rows: Sequence[Sequence[Any]], chat_key: str, parent_key: str | None
    ) -> ChatSettings | None:
        """The chat's settings when the lease part of a statement gave the chat to this
        process ((holder, settings...) rows), else None."""
        if rows[0][0] != self.worker_id:
            return None
        return merge_chat_settings((tuple(row)[1:] for row in rows), chat_key, parent_key)

    async def release_chat(self, chat_key: str) -> None:
        """Let another replica answer this chat."""
        if self.shared:
            await self.db.run(_release_chat, chat_key, self.worker_id, autocommit=True)

    async def release_all_chats(self) -> None:
        """Shutdown: give up every chat lease this process holds.

        An answer cancelled while its lease was being taken may not know it got it; left
        alone, such a lease would hold the chat back on every other replica until it ran out.
        """
        if self.shared:
            await self.db.run(_release_all_chats, self.worker_id, autocommit=True)


# -- units of work (each runs in one transaction, see core.db.database) ---------------------
_INSERT_EVENT = Statement(insert(InboundEvent).returning(InboundEvent.id))


def _record(conn: Connection, values: dict[str, Any]) -> int:
    return int(_INSERT_EVENT.execute(conn, values).fetchone()[0])


_SERVER_CLOCK = text("SELECT clock_timestamp()")


def _server_clock(conn: Connection) -> tuple[datetime, float]:
    """The server's clock, and this process's monotonic time when the server read it (the
    middle of the round trip: off by half of it at most)."""
    before = time.monotonic()
    server = conn.execute(_SERVER_CLOCK).scalar_one()
    after = time.monotonic()
    return server, (before + after) / 2


def _event_seen(conn: Connection, event_key: str) -> bool:
    found = conn.execute(select(InboundEvent.id).where(InboundEvent.event_key == event_key))
    return found.first() is not None


def _record_and_read(
    conn: Connection, values: dict[str, Any], parent_key: str | None
) -> tuple[int, ChatSettings]:
    return _record(conn, values), read_chat_settings(conn, values["chat_key"], parent_key)


def _finish(conn: Connection, event_id: int, status: str, worker_id: str) -> None:
    ours = or_(InboundEvent.claimed_by == worker_id, InboundEvent.claimed_by.is_(None))
    conn.execute(
        update(InboundEvent)
        .where(InboundEvent.id == event_id, ours)
        .values(
            status=status, finished_at=utcnow(), claimed_by=None, lease_until=None, payload=None
        )
    )


def _release(conn: Connection, event_ids: list[int], worker_id: str) -> None:
    conn.execute(
        update(InboundEvent)
        .where(
            InboundEvent.id.in_(event_ids),
            InboundEvent.status.in_(OPEN_STATUSES),
            InboundEvent.claimed_by == worker_id,
        )
        .values(claimed_by=None, lease_until=None)
    )


def _defer(conn: Connection, event_id: int, worker_id: str) -> None:
    # Not if another process took it over meanwhile (this one stalled): it is theirs now.
    conn.execute(
        update(InboundEvent)
        .where(
            InboundEvent.id == event_id,
            InboundEvent.status == "received",
            InboundEvent.claimed_by == worker_id,
        )
        .values(status="deferred", claimed_by=None, lease_until=None)
    )


def _renew_events(conn: Connection, worker_id: str, event_ids: list[int], until: datetime) -> None:
    # The statuses as literal SQL, as the partial index ix_inbound_events_open_claims names
    # them (bound parameters would not let a kept plan use it).
    conn.execute(
        update(InboundEvent)
        .where(
            InboundEvent.id.in_(event_ids),
            InboundEvent.claimed_by == worker_id,
            text(OPEN_EVENTS),
        )
        .values(lease_until=until)
    )


def _renew_leases(conn: Connection, worker_id: str, chat_keys: list[str], until: datetime) -> None:
    conn.execute(
        update(ChatLease)
        .where(ChatLease.chat_key.in_(chat_keys), ChatLease.holder == worker_id)
        .values(lease_until=until)
    )


def _claim_abandoned(
    conn: Connection,
    platforms: list[str],
    limit: int,
    everything: bool,
    shared: bool,
    worker_id: str,
    now: datetime,
    until: datetime,
    after: int,
) -> list[ClaimedEvent]:
    prefixes = [InboundEvent.chat_key.startswith(f"{p}:") for p in platforms]
    query = (
        select(
            InboundEvent.id,
            InboundEvent.event_key,
            InboundEvent.chat_key,
            InboundEvent.status,
            InboundEvent.payload,
            InboundEvent.reply_ref,
            InboundEvent.attempts,
        )
        .where(InboundEvent.status.in_(OPEN_STATUSES), InboundEvent.id > after, or_(*prefixes))
        .order_by(InboundEvent.id)
        .limit(limit)
    )
    if not everything:
        query = query.where(
            or_(InboundEvent.lease_until.is_(None), InboundEvent.lease_until < now)
        )
    if shared:
        query = query.with_for_update(skip_locked=True)
    rows = [ClaimedEvent(*row) for row in conn.execute(query)]
    if rows:
        # A deferred event is taken as waiting again: the chat's events after it wait for
        # this attempt, as for any other.
        conn.execute(
            update(InboundEvent)
            .where(InboundEvent.id.in_([r.id for r in rows]))
            .values(
                claimed_by=worker_id,
                lease_until=until,
                attempts=InboundEvent.attempts + 1,
                status=case(
                    (InboundEvent.status == "deferred", "received"), else_=InboundEvent.status
                ),
            )
        )
        rows = [
            replace(row, status="received") if row.status == "deferred" else row for row in rows
        ]
    return rows


def _taken_over(conn: Connection, event_ids: list[int], worker_id: str) -> set[int]:
    rows = conn.execute(
        select(InboundEvent.id).where(
            InboundEvent.id.in_(event_ids),
            InboundEvent.claimed_by.is_not(None),
            InboundEvent.claimed_by != worker_id,
        )
    )
    return {int(r[0]) for r in rows}


# inbound_events.reply_ref holds the answer's platform messages as ids separated by spaces,
# in order (text of any length, migration 0007).
def encode_reply_refs(refs: Sequence[str]) -> str | None:
    """The column value for `refs` (None for none)."""
    if any(not ref or any(c.isspace() for c in ref) for ref in refs):
        raise ValueError("a reply ref is empty or holds whitespace")
    return " ".join(refs) or None


def decode_reply_refs(stored: str | None) -> tuple[str, ...]:
    """The refs an `inbound_events.reply_ref` value holds, in order."""
    return tuple(stored.split()) if stored else ()


# Once per streamed answer on a platform: built once (built per call, it went through
# SQLAlchemy's whole execution layer in the SQLite thread: 5 % of the adapters' CPU). The row
# is found by its unique key alone and the status decides the value: with the status in the
# WHERE clause too, PostgreSQL's plan (made once, while the table was small) used the status
# index and read every waiting event of every chat.
_REMEMBER_REPLY = Statement(
    update(InboundEvent)
    .where(InboundEvent.event_key == bindparam("key"))
    .values(
        reply_ref=case(
            (InboundEvent.status == "received", bindparam("stored")),
            else_=InboundEvent.reply_ref,
        )
    )
)


def _remember_reply(conn: Connection, event_key: str, stored: str | None) -> None:
    _REMEMBER_REPLY.execute(conn, {"key": event_key, "stored": stored})


def _user_turn_id(conn: Connection, event_key: str) -> int | None:
    # Through the partial index on messages.event_key (migration 0009): without it, a
    # resumed event read the whole history table.
    found = conn.execute(select(Message.id).where(Message.event_key == event_key).limit(1))
    row = found.first()
    return None if row is None else int(row[0])


def _status(conn: Connection, event_id: int) -> str | None:
    found = conn.execute(select(InboundEvent.status).where(InboundEvent.id == event_id))
    status = found.scalar()
    return None if status is None else str(status)


def _waiting(conn: Connection, event_id: int) -> bool:
    found = conn.execute(select(InboundEvent.status).where(InboundEvent.id == event_id))
    return found.scalar() == "received"


def _later_events(conn: Connection, event_id: int, chat_key: str, limit: int | None) -> list[Any]:
    # Through ix_inbound_events_waiting: only the chat's waiting events are read.
    query = (
        select(InboundEvent.id, InboundEvent.event_key, InboundEvent.payload)
        .where(
            InboundEvent.chat_key == chat_key,
            InboundEvent.status == "received",
            InboundEvent.id > event_id,
        )
        .order_by(InboundEvent.id)
        .limit(limit)
    )
    return list(conn.execute(query))


def _newest_waiting(conn: Connection, chat_key: str) -> list[Any]:
    # Through ix_inbound_events_waiting, from its end: one row read.
    query = (
        select(InboundEvent.event_key, InboundEvent.payload)
        .where(InboundEvent.chat_key == chat_key, InboundEvent.status == "received")
        .order_by(InboundEvent.id.desc())
        .limit(1)
    )
    return list(conn.execute(query))


def _join_parts(conn: Connection, event_id: int, payload: str, parts: list[int]) -> None:
    if parts:
        conn.execute(
            update(InboundEvent)
            .where(InboundEvent.id.in_(parts), InboundEvent.status == "received")
            .values(
                status="done",
                finished_at=utcnow(),
                claimed_by=None,
                lease_until=None,
                payload=None,
            )
        )
    conn.execute(update(InboundEvent).where(InboundEvent.id == event_id).values(payload=payload))


def _lease(source: str, older: str) -> str:
    """Take (or keep) the chat's lease unless an older event of the chat waits (SQL)."""
    return f"""
    INSERT INTO chat_leases (chat_key, holder, lease_until)
    SELECT CAST(:chat_key AS VARCHAR), CAST(:holder AS VARCHAR), CAST(:until AS TIMESTAMPTZ)
    {source}
    WHERE NOT EXISTS (
        SELECT 1 FROM inbound_events
        WHERE chat_key = CAST(:chat_key AS VARCHAR) {older} AND status = 'received'
    )
    ON CONFLICT (chat_key) DO UPDATE
    SET holder = EXCLUDED.holder, lease_until = EXCLUDED.lease_until
    WHERE chat_leases.lease_until < CAST(:now AS TIMESTAMPTZ)
       OR chat_leases.holder = CAST(:holder AS VARCHAR)
    RETURNING holder
    """


# One statement: the chat's lease for event :event_id, and the chat's settings.
_TAKE_CHAT = text(
    f"""
    WITH lease AS ({_lease("", "AND id < :event_id")})
    SELECT (SELECT holder FROM lease), {CHAT_SETTINGS_SQL}
    """
)

# `record` and `_TAKE_CHAT` in one statement. Every part sees the snapshot taken before the
# new event's id was drawn, so each unfinished event of the chat it sees is an older one.
_RECORD_AND_TAKE = text(
    f"""
    WITH event AS (
    INSERT INTO inbound_events (event_key, chat_key, sender_id, status, received_at, payload,
                                claimed_by, lease_until, attempts)
    VALUES (CAST(:event_key AS VARCHAR), CAST(:chat_key AS VARCHAR),
            CAST(:sender_id AS VARCHAR), CAST(:status AS VARCHAR),
            CAST(:received_at AS TIMESTAMPTZ), CAST(:payload AS TEXT),
            CAST(:claimed_by AS VARCHAR), CAST(:lease_until AS TIMESTAMPTZ),
            CAST(:attempts AS INTEGER))
    ON CONFLICT (event_key) DO NOTHING
    RETURNING id
    ), lease AS ({_lease("FROM event", "")})
    SELECT (SELECT id FROM event), (SELECT holder FROM lease), {CHAT_SETTINGS_SQL}
    """
)


def _release_all_chats(conn: Connection, worker_id: str) -> None:
    conn.execute(delete(ChatLease).where(ChatLease.holder == worker_id))


def _release_chat(conn: Connection, chat_key: str, worker_id: str) -> None:
    conn.execute(
        delete(ChatLease).where(ChatLease.chat_key == chat_key, ChatLease.holder == worker_id)
    )
