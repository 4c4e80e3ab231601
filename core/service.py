"""The conversation service: one incoming message in, answers out, everything recorded."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import aclosing, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

from anyascii import anyascii

from core.chat_models import chat_models, not_chat_purpose
from core.commands import HELP_TEXT, help_text, parse_command
from core.config import Settings
from core.db.database import unavailable
from core.db.store import Appended, ChatSettings, Store
from core.errors import (
    AuthFailed,
    BadInput,
    ConfigError,
    ContentRefused,
    ContextTooLong,
    EmptyAnswer,
    EndpointMissing,
    ModelUnavailable,
    NotDelivered,
    QuotaExhausted,
    RateLimited,
    RelaybotError,
    ShuttingDown,
    UpstreamDown,
)
from core.history import ChatWindow, HistoryCache, Turn
from core.inbox import (
    ClaimedEvent,
    Inbox,
    decode_message,
    decode_reply_refs,
    new_worker_id,
    storable,
)
from core.locks import ChatLocks, Ticket
from core.media import image_dimensions
from core.metrics import Metrics
from core.moderation import UNCHECKED_NOTICE, WITHHELD_NOTICE, Moderator
from core.openai_client import (
    EncodedMessage,
    NotAnswered,
    OpenAIClient,
    Picture,
    Usage,
    image_mime,
)
from core.policy import POLICY_COMMANDS, Policy
from core.ports import ReplySink, ReplyStream, Restorer
from core.pricing import image_output_tokens
from core.tokens import (
    TokenCounter,
    context_window,
    counter_for,
    max_input_tokens,
    picture_tokens,
)
from core.trimming import Budget, fit_newest
from core.types import (
    CUT_PARTS_SECONDS,
    EVERY_VOICE_NOTE,
    IMAGE_MARK,
    NEXT_MESSAGE,
    Attachment,
    AttachmentKind,
    ChatRef,
    IncomingMessage,
    Reply,
    ReplyKind,
    quote_lines,
    without_image_mark,
)

log = logging.getLogger("relaybot.service")

AUDIO_EXTENSIONS = ("flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "wav", "webm")
AUDIO_MIME_EXTENSIONS = {
    "audio/ogg": "ogg",
    "audio/opus": "ogg",
    # Aliases platforms send: freedesktop's names (Linux desktop clients), Android's AAC
    # ("audio/mp4a-latm") and the older WAV and FLAC labels.
    "audio/x-opus+ogg": "ogg",
    "audio/x-vorbis+ogg": "ogg",
    "audio/vorbis": "ogg",
    "audio/x-flac": "flac",
    "audio/vnd.wave": "wav",
    "audio/mp4a-latm": "m4a",
    "audio/x-mpeg": "mp3",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/mp4": "m4a",
    "audio/x-m4a": "m4a",
    "audio/m4a": "m4a",
    "audio/aac": "m4a",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/webm": "webm",
    "audio/flac": "flac",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/mpeg": "mpeg",
}
_WORDS = re.compile(r"\w+")
# What Markdown holds that its reader does not see: a link's (or picture's) address, a code
# fence's language.
_UNSEEN = re.compile(r"\]\([^)\s]*(?:\s+\"[^\"]*\")?\)|^([ \t]*(?:`{3,}|~{3,}))[^\n]*$", re.M)


def _read_words(markdown: str) -> list[str]:
    """The words of `markdown` as its reader sees them rendered, lowercased."""
    seen = _UNSEEN.sub(lambda m: m.group(1) or "]", markdown)
    return _WORDS.findall(seen.lower())


_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
# Failures no retry or person can fix: the operator must act (logged at ERROR for alerts).
OPERATOR_ERRORS = (QuotaExhausted, AuthFailed, ConfigError)
MODEL_LIST_LIMIT = 40  # models /model shows at once
# Room a system prompt set with /system must leave for the conversation (a few short turns).
MIN_HISTORY_TOKENS = 256
# Shown after an answer the model stopped before its end, by the reason it gave.
_STOP_NOTES = {
    "length": "\n\n[cut off at the reply length limit]",
    "content_filter": "\n\n[stopped by the provider's content filter]",
}
CUT_SHORT_MARK = "\n\n[answer cut short]"
# A Markdown code fence line: up to three spaces, then ``` or ~~~ (or longer), info string.
_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")


def _closing_fence(markdown: str) -> str:
    """What closes a code block `markdown` leaves open ("" when none is): a note put after
    an answer that stopped inside one then shows as words, not as code."""
    opened = indent = ""
    for line in markdown.split("\n"):
        found = _FENCE.match(line)
        if found is None:
            continue
        spaces, fence, info = found.groups()
        if not opened:
            if not (fence[0] == "`" and "`" in info):  # a backtick fence's info has none
                opened, indent = fence, spaces
        elif fence[0] == opened[0] and len(fence) >= len(opened) and not info.strip():
            opened = ""
    if not opened:
        return ""
    # Indented as it was opened: inside a list item, a fence at the margin would end the
    # item (and with it the code) and open a new block around the note.
    closing = indent + opened
    return closing if markdown.endswith("\n") else "\n" + closing


UNUSABLE_IMAGE = (
    "The image service could not use that picture. Please send it again as a PNG or JPEG photo."
)
UNREADABLE_AUDIO = (
    "I couldn't read that audio file: it may be damaged, or not the format its name says. "
    "Please record it again or send it as MP3, M4A, OGG or WAV."
)

TOO_LONG_AUDIO = (
    "That recording is too long for the transcription model; please send it in shorter parts."
)
# OpenAI's gpt-4o transcribe models refusing a recording past their limit (a 400):
# "audio duration 1830.53 seconds is longer than 1500 seconds which is the maximum ...".
_TOO_LONG_AUDIO = re.compile(r"audio duration\b.{0,80}\blonger than\b.{0,80}\bmaximum", re.I)


def audio_filename(attachment: Attachment) -> str:
    """A file name whose extension the transcription endpoint accepts, or BadInput."""
    stem, _, ext = attachment.filename.rpartition(".")
    ext = ext.lower() if stem else ""
    if ext == "oga" or ext == "opus":
        ext = "ogg"
    if ext not in AUDIO_EXTENSIONS:
        ext = AUDIO_MIME_EXTENSIONS.get(attachment.mime.split(";")[0].strip().lower(), "")
    if not ext:
        raise BadInput(
            f"unsupported audio {attachment.filename!r} ({attachment.mime})",
            user_message=(
                "I can't transcribe that file type. Send audio as "
                + ", ".join(AUDIO_EXTENSIONS)
                + "."
            ),
        )
    return f"{(stem or 'audio').rsplit('/', 1)[-1] or 'audio'}.{ext}"


# How OpenAI, vLLM and llama.cpp's servers state a model's window when refusing a request.
_STATED_WINDOW = re.compile(
    r"(?:maximum context length|context (?:size|window|length))\D{0,40}?(\d[\d,]{2,}) ?tokens",
    re.IGNORECASE,
)


MAX_IMAGE_BYTES = 20 * 2**20  # the largest picture OpenAI's chat models take
# Files read as text when sent with a message (beside any text/* type).
_TEXT_FILE_EXTENSIONS = (
    "txt md markdown rst csv tsv json jsonl yaml yml toml ini cfg conf log xml html htm css "
    "sql sh bash zsh py pyi js mjs ts tsx jsx java kt go rs rb php c h cc cpp hpp cs swift "
    "scala r lua pl dart vue svelte tex diff patch"
)
TEXT_FILE_EXTENSIONS = frozenset(_TEXT_FILE_EXTENSIONS.split())


def picture_too_large(size: int | None = None) -> BadInput:
    """The error for a picture over MAX_IMAGE_BYTES (adapters that download it raise it too)."""
    return BadInput(
        f"picture of {size if size is not None else 'over'} bytes",
        user_message="That picture is too large: I can look at pictures of up to "
        f"{MAX_IMAGE_BYTES // 2**20} MB. Please send a smaller one.",
    )


def audio_too_large(limit: int) -> BadInput:
    """The error for audio over RELAYBOT_MAX_AUDIO_BYTES, `limit` (adapters that download it
    raise it too)."""
    megabytes = f"{limit / 2**20:.1f}".removesuffix(".0")  # the default: "24.9"
    return BadInput(
        "audio too large",
        user_message=f"That audio file is too large to transcribe (the limit is {megabytes} MB).",
    )


def _is_text_file(attachment: Attachment) -> bool:
    mime = attachment.mime.split(";")[0].strip().lower()
    stem, _, ext = attachment.filename.rpartition(".")
    known = bool(stem) and ext.lower() in TEXT_FILE_EXTENSIONS
    return known or mime.startswith("text/") or mime in ("application/json", "application/xml")


def _is_document(attachment: Attachment) -> bool:
    """A file with a name and an extension (a PDF, a text file), not a sticker or a GIF."""
    return attachment.kind is AttachmentKind.FILE and bool(attachment.filename.rpartition(".")[0])


_SHARED = "the one set for the whole group or channel"  # a thread's or topic's parent's
QUOTE_LIMIT = 4000  # characters of a replied-to message the model reads


def quoted(text: str) -> str:
    """A replied-to message as a Markdown quote, cut at QUOTE_LIMIT characters."""
    text = text.strip()
    if len(text) > QUOTE_LIMIT:
        text = text[:QUOTE_LIMIT].rstrip() + " …"
    return quote_lines(text)


# A message taken on this many times without being finished (each process working on it
# stopped: a crash it causes, an out-of-memory kill) is given up rather than resumed again,
# so it cannot take every restart down with it.
GIVE_UP_AFTER = 5
GAVE_UP = (
    "Sorry, I had to give up on this message: I stopped several times while working on it. "
    "Please send it again, perhaps shorter or without its file."
)
# A group's voice note nobody addressed whose transcription failed for now (the endpoint
# down or busy) is taken on this many times in all before it is given up (see
# `ConversationService._quiet_transcript_failure`).
VOICE_NOTE_ATTEMPTS = 3
# Voice notes (one per chat, the newest) that could not be heard, kept for /retry.
UNHEARD_KEPT = 1024
# How many of a chat's newest turns are searched for the bot's message a voice note replies to.
REPLY_LOOKBACK = 50
TRANSCRIPT_NOT_DELIVERED = (
    "The chat service did not take the transcript, so it is not shown here; I kept it, and "
    "can answer questions about it."
)
# A message sent in parts (IncomingMessage.part_of: a Telegram album, one event per picture)
# is answered once, by its first part, which waits until no further part has come for
# PARTS_QUIET_SECONDS (at most PARTS_WAIT_SECONDS in all) and then takes the others in.
# A text the platform may have cut (IncomingMessage.continuation_id: a long paste a client
# split) waits up to PARTS_QUIET_SECONDS for its continuation, each part for the next.
PARTS_QUIET_SECONDS = 1.0
PARTS_WAIT_SECONDS = 5.0
# An answer the person saw is kept in memory while the database cannot store it (down,
# restarting, its SQLite file locked by another program): storing it and closing its event
# are tried again after these pauses (doubling), for as long as the process runs (see
# `ConversationService._until_stored`).
KEEP_RETRY_FIRST = 0.1
KEEP_RETRY_MAX = 5.0
T = TypeVar("T")


def _driver_error(err: BaseException) -> str:
    """The database driver's own error under SQLAlchemy's wrappers, on one short line (the
    wrappers' text names the statement; the driver's holds no value or message content)."""
    for _ in range(8):
        inner = getattr(err, "orig", None) or err.__cause__
        if inner is None or inner is err:
            break
        err = inner
    said = str(err).strip().splitlines()
    return f"{type(err).__name__}: {said[0][:160]}" if said else type(err).__name__


def _plain_text(msg: IncomingMessage) -> bool:
    """Whether `msg` is words of the sender's own and nothing else: what a cut text and its
    continuation are. A command, a forward, a caption (it comes with a file) or an album's
    part never is, nor joined to one."""
    return (
        bool(msg.text)
        and not msg.attachments
        and msg.forwarded_from is None
        and msg.part_of is None
        and parse_command(msg.text) is None
    )


def _follows(cut: IncomingMessage, msg: IncomingMessage) -> bool:
    """Whether `msg` is the message that directly follows `cut` on the platform (by its id,
    or, where ids do not say, by being sent within CUT_PARTS_SECONDS of it)."""
    if cut.continuation_id != NEXT_MESSAGE:
        return msg.platform_message_id == cut.continuation_id
    if cut.sent_at is None or msg.sent_at is None:
        return False
    return 0 <= msg.sent_at - cut.sent_at <= CUT_PARTS_SECONDS


def _continues(cut: IncomingMessage, msg: IncomingMessage) -> bool:
    """Whether `msg` (the chat's next event after `cut`) is the rest of `cut`'s text: the
    message that directly follows it on the platform, from the same sender, plain text."""
    return (
        cut.continuation_id is not None
        and _follows(cut, msg)
        and msg.chat == cut.chat
        and msg.sender.id == cut.sender.id
        and _plain_text(cut)
        and _plain_text(msg)
    )


def _join_texts(texts: list[str]) -> str:
    """The parts of a cut text as one. Clients cut at a newline or a space and the platform
    drops the whitespace at either end of a message, so what stood between two parts is
    lost: a newline puts back the likelier of the two (a line break, in a pasted log or
    code) and at worst breaks a line where a space was. Where a part still ends, or the
    next begins, with whitespace, nothing was lost and nothing is added."""
    whole = texts[0]
    for text in texts[1:]:
        gap = "" if whole[-1:].isspace() or text[:1].isspace() else "\n"
        whole += gap + text
    return whole


# OpenAI's models that take no pictures though their family does (o3 reads them, o3-mini
# does not): a vision model's name does not cover these, unless they are named themselves.
_NO_PICTURES = frozenset(
    {
        "o1-mini",
        "o1-preview",
        "o3-mini",
        "gpt-4-turbo-preview",
        "gpt-4o-audio-preview",
        "gpt-4o-mini-audio-preview",
        "gpt-4o-search-preview",
        "gpt-4o-mini-search-preview",
    }
)


def _reads_pictures(name: str, vision: frozenset[str]) -> bool:
    """Whether the closest of the `vision` names covering `name` (itself, or a name it
    extends: "gpt-4o" covers "gpt-4o-mini") is no closer than one in _NO_PICTURES."""

    def closest(names: frozenset[str]) -> int:
        covering = (len(n) for n in names if name == n or name.startswith(n + "-"))
        return max(covering, default=-1)

    seen = closest(vision)
    return seen >= 0 and seen >= closest(_NO_PICTURES)


def _cannot_see_pictures(model: str, left_out: int = 0) -> str:
    """What a person is told when `model` cannot look at the pictures they sent: alone
    (nothing to answer), or `left_out` pictures beside words the model answers."""
    if not left_out:
        return (
            f"This chat's model, {model}, can't look at pictures. "
            "Send /model to pick one that can."
        )
    pictures = "the picture" if left_out == 1 else "the pictures"
    return (
        f"This chat's model, {model}, can't look at pictures, so it answers without "
        f"{pictures} you sent. Send /model to pick one that can."
    )


def _holds_history(messages: list[dict[str, Any]]) -> bool:
    """Whether a request holds more than its system prompt and newest turn."""
    return sum(1 for m in messages if m.get("role") not in ("system", "developer")) > 1


def speaker_name(name: str, sender_id: str = "") -> str | None:
    """A name the chat API accepts in its `name` field (ASCII letters, digits, _ and -):
    spelt in Latin letters ("Иван" Ivan, "李明" LiMing, "Zoë" Zoe), else from the sender's id,
    so that the model can tell the people of a group apart; None without either."""
    for candidate in (anyascii(name), f"user_{sender_id}" if sender_id else ""):
        cleaned = _NAME_UNSAFE.sub("_", candidate.strip()).strip("_")[:64]
        if cleaned:
            return cleaned
    return None


@dataclass(slots=True)
class _Job:
    """One event being answered by this process."""

    event_id: int
    msg: IncomingMessage
    sink: ReplySink
    ticket: Ticket
    resumed: bool
    closed: bool = False
    # The chat's settings, read when the chat's turn began (in the same transaction).
    settings: ChatSettings | None = None
    # The chat's lease ended (PostgreSQL replicas), with the answer's transaction or after.
    released: bool = False
    # Which time this event is taken on (1: as it arrived; a resumed one counts up).
    attempt: int = 1
    # The person saw the answer (or transcript): storing it and closing the event are tried
    # until the database takes them, and a failure then is not told as an error.
    kept: bool = False
    # Waiting for the database to store what the person saw (see `_until_stored`).
    keeping: bool = False


# The job the running task works on (each task has its own copy of the context).
_current: ContextVar[_Job | None] = ContextVar("relaybot_job", default=None)


class _TakenOver(Exception):
    """The event's claim passed to another replica before this process stored its turn."""


class _Later(Exception):
    """The event is given back to the inbox, to be taken on again by a later sweep (a voice
    note nobody addressed whose transcription failed for now: see
    `_quiet_transcript_failure`)."""


@dataclass(slots=True)
class _Answer:
    usage: Usage | None = None
    # The messages the answer was asked with (to estimate usage a server did not report).
    sent: list[dict[str, Any]] = field(default_factory=list)
    # The streamed pieces (joined once: appending to one string copies it every time).
    parts: list[str] = field(default_factory=list)
    # Why the model stopped ("stop", "length", "content_filter", ...), when it said.
    finish_reason: str | None = None

    @property
    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts[:] = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""


class _UserTurn:
    """The person's turn, being stored while the model is already asked (the wait for the
    database overlaps the wait for the model's first words).

    The chat's held window gets the turn at once, so the request can be built from it. The
    answer is shown only once the store confirmed that window: same revision, no turn stored
    by anyone else in between. Otherwise the window is dropped (and read again) and the
    request is made again; a takeover stops the message before anything was shown.
    """

    def __init__(
        self,
        service: ConversationService,
        chat_key: str,
        window: ChatWindow | None,
        row: dict[str, Any],
        counter: TokenCounter,
        storing: Awaitable[Appended],
        fresh: bool = False,
    ) -> None:
        self._service = service
        # `window` is an empty one made for a chat without a row: it is the history when
        # nothing at all was stored before the turn (whatever the revision).
        self._fresh = fresh
        self._chat_key = chat_key
        self._window = window
        self._row = row
        self._counter = counter
        self._task: asyncio.Future[Appended] = asyncio.ensure_future(storing)
        self._turn: Turn | None = None
        self._last_before = window.last_id if window is not None else None
        self._id: int | None = None
        self._ok: bool | None = None
        self._error: BaseException | None = None

    @property
    def pending(self) -> bool:
        return self._ok is None

    def speculate(self, system: str, budget: int) -> list[dict[str, Any]] | None:
        """The request's messages with the turn added to the held window, or None when the
        window cannot serve them without a read (the turn must be stored first)."""
        window, service = self._window, self._service
        assert window is not None
        if service.windows.get(self._chat_key) is not window:
            return None
        self._turn = service._turn(0, self._row, self._counter)  # its id once stored
        window.append(self._turn)
        if not window.fit(budget):
            # Older turns would fit too: the window is read again, once the turn is stored.
            # Nothing is asked with it: the store is followed as for a turn not speculated on
            # (else `confirmed` would find the window gone and have the request, built from
            # the store already, made a second time).
            service.windows.drop(self._chat_key)
            self._turn = self._window = None
            return None
        service.windows.resized(self._chat_key)
        return window.messages({"role": "system", "content": system})

    async def stored(self) -> int:
        """The stored turn's id (waits for the store); _TakenOver if it was not stored."""
        await self.confirmed()
        assert self._id is not None
        return self._id

    async def confirmed(self) -> bool:
        """Wait for the store: True when the held window (with the turn) is the history."""
        if self._error is not None:
            raise self._error
        if self._ok is not None:
            return self._ok
        window, service = self._window, self._service
        try:
            appended = await asyncio.shield(self._task)
            if not appended.ids:
                raise _TakenOver
        except asyncio.CancelledError:
            raise  # we stopped waiting; the store goes on (asked again, it is awaited again)
        except Exception as exc:
            self._error = exc
            service.windows.drop(self._chat_key)
            raise
        self._id = appended.ids[0]
        if self._turn is None:
            # Not speculated on: follow the store as usual.
            self._ok = True
            service._follow(self._chat_key, window, appended, self._row, self._counter)
            return True
        self._ok = (
            window is not None
            # (A fresh window has no revision to continue: nothing stored before the turn,
            # the check below, is what makes it the history.)
            and (appended.continued or self._fresh)
            and appended.last_before == self._last_before
            and service.windows.get(self._chat_key) is window
        )
        if self._ok:
            assert window is not None
            self._turn.id = self._id
            window.revision = appended.revision
            window.last_id = self._id
        else:
            service.windows.drop(self._chat_key)
        return self._ok


class ConversationService:
    """Handles neutral incoming messages; adapters call `handle` with a reply sink."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: OpenAIClient,
        locks: ChatLocks | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.locks = locks or ChatLocks()
        # Each chat's events are stored one at a time, in queue order (see `submit`).
        self._recording = ChatLocks()
        self.metrics = metrics or Metrics()
        self.metrics.watch_inbox(store.engine)
        self.moderator = Moderator(client, settings.moderation_model, settings.moderation)
        self.policy = Policy(settings, store)
        self._vision = settings.vision_model_names()
        self.inbox = Inbox(store.db, new_worker_id(), settings.lease_seconds)
        self.windows = HistoryCache(int(settings.history_cache_mb * 2**20))
        self.accepting = True
        # Bounds the answers worked on at once (database connections, memory); the rest are
        # stored and wait for a slot in arrival order.
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._jobs: dict[asyncio.Task[None], _Job] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        # remember_reply writes in flight, and chat moves waiting for their chat's answers
        self._notes: set[asyncio.Task[None]] = set()
        # Windows smaller than configured, by model, as the endpoint showed them by refusing
        # a request that fitted the configured one (see `_refused_as_too_long`).
        self._told_windows: dict[str, int] = {}
        # Operator errors already logged for unaddressed voice notes (type, detail): a missing
        # transcription endpoint or model alerts once per process, not once per note.
        self._operator_told: set[tuple[str, str]] = set()
        # Events of this process a text's earlier part took in, until their own jobs see it
        # (SQLite: one process; shared databases are asked, see `_taken_in`).
        self._joined: set[int] = set()
        # The adapters that can restore stored messages, by platform (as `resume` got them).
        self._restorers: dict[str, Restorer] = {}
        # By chat: its newest voice note that could not be heard, for /retry (see
        # `_remember_unheard`): the chat's newest stored turn then, the message, and whether
        # it asked for its transcript only.
        self._unheard: dict[str, tuple[int | None, IncomingMessage, bool]] = {}
        # When the database became unavailable (time.monotonic()), while it is: the operator
        # is told once per outage, not once per attempt (see `_database_down`).
        self._outage: float | None = None

    # -- entry points ---------------------------------------------------------------------
    async def handle(self, msg: IncomingMessage, sink: ReplySink) -> bool:
        """Process one message to the end; False when it was a redelivery (nothing done)."""
        job = await self.submit(msg, sink)
        if job is None:
            return False
        await asyncio.shield(job)
        return True

    async def submit(self, msg: IncomingMessage, sink: ReplySink) -> asyncio.Task[None] | None:
        """Store the event durably and start answering it; returns once it is stored.

        Adapters acknowledge the platform after this returns (the event is then safe).
        None means the event was seen before, or asks nothing of the bot (see
        `_asks_nothing`) and was not stored. Raises ShuttingDown once `shutdown` began:
        do not acknowledge then, so the platform delivers the event again elsewhere.
        """
        if not self.accepting:
            raise ShuttingDown("not accepting new work")
        msg = storable(msg)  # no lone surrogates: they cannot be stored, nor sent on
        # The place in the chat's queue is taken before the first await: arrival order holds.
        ticket = self.locks.reserve(msg.chat.key)
        # Stored in that same order, so event ids (which order a chat across replicas) agree
        # with the local queue: else an event could wait in the queue behind one that waits
        # in the database for it.
        recording = self._recording.reserve(msg.chat.key)
        settings: ChatSettings | None = None
        try:
            async with recording:
                if await self._asks_nothing(msg):
                    ticket.release()
                    return None
                if ticket.ready:
                    # First in the chat's local queue: its turn (across replicas, on
                    # PostgreSQL) and settings come with storing it, one round trip, not two.
                    event_id, settings = await self.inbox.record_and_take(msg)
                else:
                    event_id = await self.inbox.record(msg)
        except BaseException:
            ticket.release()
            raise
        if event_id is None:
            ticket.release()
            log.info("duplicate event dropped", extra={"chat": msg.chat.key})
            self.metrics.duplicate(msg.chat.platform)
            return None
        job = _Job(event_id, msg, sink, ticket, resumed=False, settings=settings)
        return self._start(job)

    def _start(self, job: _Job) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run(job), name=f"relaybot:{job.event_id}")
        self._jobs[task] = job
        task.add_done_callback(self._jobs.pop)
        self._ensure_heartbeat()
        return task

    async def _run(self, job: _Job) -> None:
        started = time.perf_counter()
        msg, sink = job.msg, job.sink
        sink = self.metrics.counting(sink, msg.chat.platform)
        self.metrics.received(msg.chat.platform)
        outcome = "done"
        _current.set(job)
        try:
            # The chat's turn first (in this process's queue, then across replicas), then a
            # working slot: a job holding a slot never waits for a turn, so the two cannot
            # deadlock. (Waiting for the turn inside a slot, the messages after a crashed
            # replica's could take every slot while the older ones, resumed, waited for one.)
            async with job.ticket:
                # No settings yet: the chat was not free when the event was stored, an earlier
                # event went first (and may have taken this one in, see `_gathered`).
                waited = job.settings is None
                if waited:
                    job.settings = await self._wait_for_chat(msg.chat, job.event_id)
                try:
                    async with self._slots:
                        whole = await self._gathered(job, waited)
                        if whole is None:
                            job.closed = True  # answered with an earlier part, which closed it
                        else:
                            job.msg = whole
                            await self._process(whole, sink)
                finally:
                    if not job.released:
                        await self._keeping(job, lambda: self.inbox.release_chat(msg.chat.key))
                        job.released = True
        except asyncio.CancelledError:
            # Shutdown past the grace period: the event stays open for the next process.
            outcome = "released"
            raise
        except _TakenOver:
            # This process stalled past its lease and another replica took the event over:
            # the turn is that replica's to store and answer (nothing was stored here).
            outcome = "released"
            log.warning(
                "another replica took over a message while this process stalled",
                extra={"chat": msg.chat.key},
            )
        except _Later:
            # Left open, unclaimed and not holding the chat: the next sweep (here or on
            # another replica) takes it on.
            outcome = "released"
            await self.inbox.defer(job.event_id)
        except RelaybotError as err:
            outcome = "failed"
            self.metrics.failed(msg.chat.platform, type(err).__name__)
            if isinstance(err, OPERATOR_ERRORS):
                # The person is told "the operator has been told": this line is the telling.
                log.error(
                    "operator action needed: %s: %s",
                    type(err).__name__,
                    err,
                    extra={"chat": msg.chat.key},
                )
            elif isinstance(err, BadInput):
                # The person's own mistake, explained to them: nothing for the operator.
                log.info("message refused: %s", type(err).__name__, extra={"chat": msg.chat.key})
            else:
                # With what the endpoint said (scrubbed of keys where it was raised).
                log.warning(
                    "message failed: %s: %s",
                    type(err).__name__,
                    str(err)[:600],
                    extra={"chat": msg.chat.key},
                )
            if job.msg.addressed_to_bot or isinstance(err, ShuttingDown):
                await self._tell(sink, err.user_message, ReplyKind.ERROR)
        except Exception:
            outcome = "failed"
            self.metrics.failed(msg.chat.platform, "unexpected")
            log.exception("unexpected error handling a message", extra={"chat": msg.chat.key})
            # Nobody spoke to the bot (a group's voice note it transcribes unasked, a part
            # of an album): an error posted under it would answer someone who asked nothing.
            if job.msg.addressed_to_bot:
                await self._tell(sink, RelaybotError.user_message, ReplyKind.ERROR)
        finally:
            self.metrics.finished(msg.chat.platform, outcome, time.perf_counter() - started)
            # A whole answer closed its event in the transaction that stored it.
            if outcome != "released" and not (outcome == "done" and job.closed):
                await self._keeping(job, lambda: self.inbox.finish(job.event_id, outcome))
            log.info(
                "handled message",
                extra={
                    "chat": msg.chat.key,
                    "outcome": outcome,
                    "resumed": job.resumed,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )

    # -- messages sent in parts (see PARTS_QUIET_SECONDS) ------------------------------------
    async def _gathered(self, job: _Job, waited: bool) -> IncomingMessage | None:
        """The whole message `job`'s begins (itself, for most); None when an earlier part
        already took this one in (and closed its event).

        Runs in the chat's turn, so no later part is answered meanwhile. The parts are
        joined in one transaction (the first part's event then carries the whole message,
        the others are closed), so a crash on either side of it loses none of them.
        `waited`: an earlier event of the chat went first, which may have taken this in.
        """
        msg = job.msg
        if msg.part_of is not None:
            return await self._whole(job) if await self.inbox.waiting(job.event_id) else None
        if not _plain_text(msg):
            return msg
        if waited and await self._taken_in(job.event_id):
            return None
        return await self._continued(job) if msg.continuation_id is not None else msg

    async def _taken_in(self, event_id: int) -> bool:
        """Whether a text's earlier part took this event in (as the rest of the text)."""
        if self.inbox.shared:  # perhaps by another replica
            return not await self.inbox.waiting(event_id)
        # One process holds the database: its own record says (no query per message).
        if event_id in self._joined:
            self._joined.discard(event_id)
            return True
        return False

    async def _asks_nothing(self, msg: IncomingMessage) -> bool:
        """Whether `msg` is none of the bot's business and so is not stored at all.

        Nobody spoke to the bot and the message carries nothing it might transcribe: only
        the rest of an addressed text the platform cut may be such (a group's chatter
        reaches the core for that), and that only when the chat's latest event awaits it.
        Asked in the chat's recording order: an earlier part is stored (and running) first.
        """
        if msg.addressed_to_bot or msg.attachments or msg.part_of is not None:
            return False
        if not _plain_text(msg):
            return True
        for job in self._jobs.values():
            if _continues(job.msg, msg):
                return False
        if not self.inbox.shared:  # this process holds every event of its database
            return True
        # Another replica may have stored the earlier part.
        latest = await self.inbox.newest_waiting(msg.chat.key)
        return latest is None or not _continues(latest, msg)

    async def _continued(self, job: _Job) -> IncomingMessage:
        """The whole of a text the platform may have cut (`IncomingMessage.continuation_id`):
        its continuation, and the continuation's, taken in while each comes in time."""
        msg = job.msg
        pieces, taken = [msg], [job.event_id]
        while (following := await self._next_part(taken[-1], pieces[-1])) is not None:
            taken.append(following[0])
            pieces.append(following[1])
        taken = taken[1:]  # the other parts' events
        whole = dataclasses.replace(
            msg,
            text=_join_texts([p.text for p in pieces]),
            addressed_to_bot=any(p.addressed_to_bot for p in pieces),
            continuation_id=None,
        )
        if taken:
            await self.inbox.join_parts(job.event_id, whole, taken)
            if not self.inbox.shared:
                self._joined.update(taken)  # their jobs, queued behind this one, close
            log.info("text sent in parts", extra={"chat": msg.chat.key, "count": len(pieces)})
        return whole

    async def _next_part(
        self, after: int, cut: IncomingMessage
    ) -> tuple[int, IncomingMessage] | None:
        """The event (id, message) continuing `cut` (stored as `after`), once it is the
        chat's next; None when another event comes next, or none within PARTS_QUIET_SECONDS."""
        if cut.continuation_id is None:
            return None
        deadline = time.monotonic() + PARTS_QUIET_SECONDS
        while True:
            following = await self.inbox.next_waiting(after, cut.chat.key)
            if following is not None:
                return following if _continues(cut, following[1]) else None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            # Looked for in short steps: the rest usually comes at once (after the first
            # part's own event is stored), and a long text that is whole waits no longer
            # than the window.
            await asyncio.sleep(min(left, PARTS_QUIET_SECONDS / 5))

    async def _whole(self, job: _Job) -> IncomingMessage:
        """The whole album of which `job`'s message is a part (see PARTS_QUIET_SECONDS),
        once no more parts come."""
        msg = job.msg
        assert msg.part_of is not None
        deadline = time.monotonic() + PARTS_WAIT_SECONDS
        seen = -1
        while True:
            parts = await self.inbox.later_parts(job.event_id, msg.chat.key, msg.part_of)
            if len(parts) == seen or time.monotonic() >= deadline:
                break
            seen = len(parts)
            await asyncio.sleep(min(PARTS_QUIET_SECONDS, max(deadline - time.monotonic(), 0)))
        # The parts this process received carry their downloads; others (stored by another
        # replica) are restored by their adapter, as a resumed message is.
        live = {j.event_id: j.msg for j in self._jobs.values()}
        pieces = [msg] + [live.get(i) or self._restored(part) for i, part in parts]
        whole = dataclasses.replace(
            msg,
            text="\n\n".join(p.text.strip() for p in pieces if p.text.strip()),
            attachments=tuple(a for p in pieces for a in p.attachments),
            addressed_to_bot=any(p.addressed_to_bot for p in pieces),
            reply_to_text=next((p.reply_to_text for p in pieces if p.reply_to_text), None),
            part_of=None,
        )
        await self.inbox.join_parts(job.event_id, whole, [i for i, _ in parts])
        if parts:
            log.info("message sent in parts", extra={"chat": msg.chat.key, "count": len(pieces)})
        return whole

    def _restored(self, msg: IncomingMessage) -> IncomingMessage:
        """A stored message with its attachments downloadable again (by its adapter)."""
        restorer = self._restorers.get(msg.chat.platform)
        restored = restorer.restore(msg) if restorer is not None else None
        return restored[0] if restored is not None else msg

    async def _wait_for_chat(self, chat: ChatRef, event_id: int) -> ChatSettings:
        """Wait until this process may answer the chat (across replicas: PostgreSQL only).

        Returns the chat's settings, read as its turn begins.
        """
        delay = 0.02
        while True:
            settings = await self.inbox.try_acquire_chat(chat.key, chat.parent_key, event_id)
            if settings is not None:
                return settings
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _chat_settings(self, msg: IncomingMessage) -> ChatSettings:
        """The settings of the message's chat (read once per message)."""
        job = _current.get()
        if job is not None and job.msg is msg and job.settings is not None:
            return job.settings
        return await self.store.chat_settings(msg.chat.key, msg.chat.parent_key)

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._renew_leases(), name="relaybot:leases")

    async def _renew_leases(self) -> None:
        """Keep this process's claims alive while it has work; stops when idle."""
        interval = max(self.settings.lease_seconds / 3, 0.05)
        while self._jobs:
            await asyncio.sleep(interval)
            jobs = list(self._jobs.values())
            # The claims and chat turns this process's work holds (see `Inbox.renew`).
            held = {j.msg.chat.key for j in jobs if j.settings is not None and not j.released}
            try:
                await self.inbox.renew([j.event_id for j in jobs], held)
                if self.inbox.shared:
                    await self._drop_taken_over()
                self._database_back()
            except Exception as err:
                if unavailable(err):
                    self._database_down(err)  # told once per outage
                else:
                    log.exception("could not renew leases")

    async def _drop_taken_over(self) -> None:
        """Stop working on events another replica took over while this process stalled."""
        tasks = {job.event_id: task for task, job in self._jobs.items()}
        for event_id in await self.inbox.taken_over(list(tasks)):
            job = self._jobs.get(tasks[event_id])
            log.warning(
                "another replica took over a message while this process stalled",
                extra={"chat": job.msg.chat.key if job else None},
            )
            # Cancelled jobs leave the event alone (outcome "released"): its new owner answers.
            tasks[event_id].cancel()

    async def resume(self, restorers: Mapping[str, Restorer], *, everything: bool = False) -> int:
        """Take over unfinished events of these platforms; returns how many were resumed.

        `everything`: this process is alone (SQLite start-up), so every open event is
        abandoned. Otherwise only events whose lease ran out are taken.

        All of them are taken at once, before any is started (claims come in batches): one
        left behind would keep the dead process's lease, and its chat's next message would
        overtake it (SQLite: this process alone orders a chat) or wait for a later sweep.
        """
        self._restorers = {**self._restorers, **restorers}
        platforms = list(restorers)
        claimed: list[ClaimedEvent] = []
        while True:
            after = claimed[-1].id if claimed else 0
            batch = await self.inbox.claim_abandoned(
                platforms, limit=100, everything=everything, after=after
            )
            claimed += batch
            if len(batch) < 100:
                break
        running = {job.event_id for job in self._jobs.values()}
        resumed = 0
        for event in claimed:
            if event.id in running:
                # Our own work, whose lease ran out while this process stalled: it goes on.
                continue
            if event.status == "answered" or event.payload is None:
                # The answer was stored (and so delivered): never send it twice.
                await self.inbox.finish(event.id, "done")
                continue
            try:
                stored = decode_message(event.event_key, event.payload)
                refs = decode_reply_refs(event.reply_ref)
                if refs:
                    stored = dataclasses.replace(stored, reply_refs=refs)
                restored = restorers[stored.chat.platform].restore(stored)
            except Exception:
                # Not one this release can take on (a newer one's, say): it must not stop
                # the recovery of every event after it, sweep after sweep.
                await self.inbox.finish(event.id, "failed")
                self.metrics.failed(event.chat_key.partition(":")[0], "unreadable")
                log.exception(
                    "operator action needed: an unfinished message could not be read to be "
                    "taken on again; it is given up",
                    extra={"chat": event.chat_key},
                )
                continue
            if restored is None:
                if event.attempts >= GIVE_UP_AFTER:  # never taken on: nobody to tell
                    await self.inbox.finish(event.id, "failed")
                    log.error(
                        "operator action needed: a message was given up after %d attempts "
                        "(its platform could not take it on again)",
                        event.attempts,
                        extra={"chat": event.chat_key},
                    )
                else:
                    await self.inbox.release([event.id])
                continue
            msg, sink = restored
            if event.attempts >= GIVE_UP_AFTER:
                await self._give_up(event, msg, sink)
                continue
            # Across replicas the database orders a chat (oldest unanswered event first). A
            # resumed event is older than what this process may already queue for its chat,
            # so it must not wait in that queue: it would wait behind events waiting for it.
            queue = ChatLocks() if self.inbox.shared else self.locks
            ticket = queue.reserve(msg.chat.key)
            job = _Job(event.id, msg, sink, ticket, resumed=True, attempt=event.attempts + 1)
            self._start(job)
            resumed += 1
        if resumed:
            log.info("resumed unfinished messages", extra={"count": resumed})
        return resumed

    async def _give_up(self, event: ClaimedEvent, msg: IncomingMessage, sink: ReplySink) -> None:
        """A message that every process working on it stopped with (a crash each time, say):
        closed first, so that it cannot stop the next one, then the person is told."""
        await self.inbox.finish(event.id, "failed")
        self.metrics.failed(msg.chat.platform, "GaveUp")
        log.error(
            "operator action needed: a message was given up after %d attempts (each one "
            "ended with the process, e.g. a crash or a kill while answering it)",
            event.attempts,
            extra={"chat": msg.chat.key},
        )
        if msg.addressed_to_bot:  # else nobody asked the bot anything: nothing is posted
            await self._tell(sink, GAVE_UP, ReplyKind.ERROR)

    async def move_chat(self, old: ChatRef, new: ChatRef) -> None:
        """Adapters: chat `old` lives on as `new` (a Telegram group upgraded to a supergroup
        changes its id): its history, settings and budgets follow it.

        After the messages of `old` this process is answering: moved while one is made, its
        turn went ahead without its answer (which was then asked again of a history gone,
        and stored under the old id). With none, at once; else in the background, once they
        are done (the adapter does not wait for answers being made).
        """
        ticket = self.locks.reserve(old.key)
        if ticket.ready:
            async with ticket:
                await self._move_chat(old, new)
            return
        task = asyncio.create_task(
            self._move_chat_after(ticket, old, new), name=f"relaybot:move:{old.key}"
        )
        self._notes.add(task)
        task.add_done_callback(self._notes.discard)

    async def _move_chat_after(self, ticket: Ticket, old: ChatRef, new: ChatRef) -> None:
        """`_move_chat` once the chat's turn comes (a failure is logged: nobody waits)."""
        try:
            async with ticket:
                await self._move_chat(old, new)
        except Exception:
            log.exception("could not move a chat", extra={"chat": old.key, "to": new.key})

    async def _move_chat(self, old: ChatRef, new: ChatRef) -> None:
        moved = await self.store.move_chat(old.key, new.key)
        self.windows.drop(old.key)
        self.windows.drop(new.key)
        log.info("chat moved", extra={"chat": old.key, "to": new.key, "turns": moved})

    async def has_history(self, chat: ChatRef) -> bool:
        """Adapters: whether this conversation holds history, that is whether the bot has
        talked in it (a platform where replies in the bot's threads need no mention asks).
        The database is shared by every replica, so all of them answer alike."""
        return await self.store.has_history(chat.key)

    def remember_reply(self, msg: IncomingMessage, refs: tuple[str, ...]) -> None:
        """Adapters: the platform messages showing `msg`'s answer are now `refs`, in order.

        Called whenever an answer's messages change (one more rolled over, one replaced).
        Stored in the background, beside the event, in the order of the calls: if this
        process dies before the answer is stored, whoever resumes the message continues in
        those platform messages (see `IncomingMessage.reply_refs`) instead of posting the
        answer a second time.
        """
        name = f"relaybot:reply-note:{msg.event_key}"
        earlier = [task for task in self._notes if task.get_name() == name]
        task = asyncio.create_task(self._remember(msg.event_key, refs, earlier), name=name)
        self._notes.add(task)
        task.add_done_callback(self._notes.discard)

    async def _remember(
        self, event_key: str, refs: tuple[str, ...], earlier: list[asyncio.Task[None]]
    ) -> None:
        if earlier:
            # A newer list must not be overwritten by an older one still on its way.
            await asyncio.wait(earlier)
        try:
            await self.inbox.remember_reply(event_key, refs)
        except Exception:
            log.warning("could not note where an answer is shown", exc_info=True)

    async def drain(self) -> None:
        """Wait until every message this process took on is answered."""
        while self._jobs:
            await asyncio.wait(set(self._jobs))

    async def shutdown(
        self, grace: float | None = None, *, hurry: asyncio.Event | None = None
    ) -> int:
        """Stop taking work; let every answer in progress finish within `grace`, those
        received and those resumed alike, then release the rest for another process to
        resume: at once when `hurry` is set meanwhile. Returns how many were released."""
        self.accepting = False
        grace = self.settings.shutdown_grace if grace is None else grace
        worked = bool(self._jobs)
        if self._jobs and grace > 0 and not (hurry is not None and hurry.is_set()):
            # `drain` also waits for an answer that starts meanwhile (its event was being
            # stored as the shutdown began); waiting on it, or giving up, cancels no answer.
            waits: set[asyncio.Task[Any]] = {
                asyncio.create_task(self.drain(), name="relaybot:drain")
            }
            if hurry is not None:
                waits.add(asyncio.create_task(hurry.wait(), name="relaybot:hurry"))
            try:
                await asyncio.wait(waits, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
        still = [task for task in self._jobs if not task.done()]
        if still:
            unfinished = [self._jobs[task].event_id for task in still]
            kept = sum(1 for task in still if self._jobs[task].keeping)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
            if kept:
                log.error(
                    "stopped while the database was unavailable: %d answer(s) already shown "
                    "could not be stored; their messages are left open and will be answered "
                    "again by the next process",
                    kept,
                )
            await self._releasing(self.inbox.release(unfinished))
        if worked or still:
            await self._releasing(self.inbox.release_all_chats())
        if self._notes:
            await asyncio.gather(*self._notes, return_exceptions=True)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        await self.store.db.release()
        return len(still)

    async def _releasing(self, release: Awaitable[None]) -> None:
        """Shutdown: give claims or chat leases back; with the database unavailable they
        run out by themselves (after RELAYBOT_LEASE_SECONDS) instead."""
        try:
            await release
        except Exception as err:
            if not unavailable(err):
                raise
            log.warning(
                "could not give back this process's claims (%s): they run out by themselves",
                _driver_error(err),
            )

    async def _tell(self, sink: ReplySink, text: str, kind: ReplyKind) -> None:
        try:
            await sink.send(Reply(text=text, kind=kind))
        except Exception:
            log.exception("could not deliver a notice")

    # -- routing --------------------------------------------------------------------------
    async def _process(self, msg: IncomingMessage, sink: ReplySink) -> None:
        command = parse_command(msg.text)
        audio = self._first(msg, AttachmentKind.AUDIO)
        # In a group that asked for transcripts, a voice note gets just its transcript,
        # unless someone asks the bot something about it ("@bot summarise this", as its
        # caption or in reply to it) or answers the bot by voice (in reply to one of its
        # answers: not to a transcript it posted, which is the speaker's words): a bare
        # mention asks for nothing more.
        transcript_only = (
            command is None
            and audio is not None
            and not msg.is_direct
            and await self._voice_mode(msg) == "transcript"
            and not (
                msg.addressed_to_bot
                and (bool(msg.text.strip()) or await self._replies_to_answer(msg))
            )
        )
        if not msg.addressed_to_bot and not transcript_only:
            # Adapters pass group voice notes nobody addressed to us: only a group that
            # asked for transcripts gets one; otherwise they are none of our business.
            return
        # Access, rate limit, admin rights and budgets, before any model call.
        # The chat's settings were read as its turn began: the budgets' estimate uses them.
        try:
            await self.policy.admit(
                msg,
                command,
                lambda: self._chat_settings(msg),
                lambda: sink.chat_admin(msg.sender.id),
            )
        except RelaybotError as refused:
            if msg.addressed_to_bot:
                raise
            # Nobody spoke to the bot (a voice note it transcribes unasked): a refusal posted
            # under it would answer someone who asked nothing. It is left without one.
            log.info(
                "unaddressed message refused quietly: %s",
                type(refused).__name__,
                extra={"chat": msg.chat.key},
            )
            return
        if command is not None:
            await self._command(command[0], command[1], msg, sink)
            return
        await self._respond(msg, sink, transcript_only)

    async def _respond(self, msg: IncomingMessage, sink: ReplySink, transcript_only: bool) -> None:
        """Answer an admitted message that is no command (or post its transcript)."""
        audio = self._first(msg, AttachmentKind.AUDIO)
        images = [a for a in msg.attachments if a.kind is AttachmentKind.IMAGE]
        text = msg.text.strip()
        heard = ""  # a voice note's transcript, which _transcribe already moderated
        if audio is not None:
            # Every recording the message carries (an album of audio files has several).
            recordings = [a for a in msg.attachments if a.kind is AttachmentKind.AUDIO]
            try:
                transcript = "\n\n".join(
                    [await self._transcribe(msg, a, translate=False) for a in recordings]
                )
            except Exception as failed:
                if isinstance(failed, ShuttingDown):
                    raise
                if msg.addressed_to_bot:
                    # Nothing of it was stored: /retry takes this voice note on again
                    # (rather than the chat's last answered turn, from before it).
                    await self._remember_unheard(msg, transcript_only)
                    raise
                # Nobody asked for this transcript: a failure posted under the voice note
                # (silence, a flagged transcript, a server without the endpoint) would answer
                # someone who asked nothing, under every note. It is left without one.
                self._quiet_transcript_failure(msg, failed)
                return
            said = transcript
            if msg.forwarded_from:
                # Someone else's recording, forwarded: their words, quoted under their name
                # (as the adapter quotes a forwarded text), not the forwarder's own.
                said = f"Forwarded from {msg.forwarded_from}:\n{quote_lines(transcript)}"
            if transcript_only:
                await self._post_transcript(msg, sink, transcript, said)
                return
            heard = said
            text = f"{text}\n\n{said}".strip() if text else said
        documents = [a for a in msg.attachments if _is_document(a)]
        if documents:
            # A document sent with a question: read it, or say it cannot be read, rather
            # than answer as if it had been. (A sticker or a GIF beside words is left out.)
            text = "\n\n".join([*[await self._text_file(d) for d in documents], text]).strip()
        # "@bot is this true?" in reply to someone's message is about that message; "how
        # many live there?" under an older answer is about that answer. The chat's latest
        # answer (or transcript) is the history's last turn already.
        if (
            msg.reply_to_text
            and msg.reply_to_text.strip()
            and not await self._is_latest_turn(msg, msg.reply_to_text)
        ):
            text = f"{quoted(msg.reply_to_text)}\n\n{text}".strip()
        if not text and not images:
            if msg.attachments:
                raise BadInput(
                    "unsupported attachment",
                    user_message="I can only read text, voice or audio messages and images.",
                )
            raise BadInput("empty message", user_message="Your message was empty.")
        await self._chat(msg, sink, text, images, moderated=heard)

    async def _is_latest_turn(self, msg: IncomingMessage, shown: str) -> bool:
        """Whether `shown` (a message replied to, as the platform shows it) is the chat's
        newest stored turn, whole: its latest answer, or a transcript posted since. Compared
        by the words people read: an answer is stored as the model wrote it (Markdown), the
        platform shows it rendered. (A part the person quoted is quoted again: it says which
        part they mean.) The chat's window in memory knows its newest turn, when it is the
        history as read with the event; else the newest row is read."""
        said = _WORDS.findall(shown.lower())
        if not said:
            return False
        chat_key = msg.chat.key
        window = self.windows.get(chat_key)
        history_rev = (await self._chat_settings(msg)).history_rev
        if window is not None and history_rev is not None and history_rev == window.revision:
            # The window is the history as it stands (the revision read with the event).
            newest = window.turns[-1].message.get("content") if window.turns else ""
            return said == _read_words(str(newest or ""))
        async for row in self.store.newest_messages(chat_key, page_size=1):
            return said == _read_words(row.content)
        return False

    async def _replies_to_answer(self, msg: IncomingMessage) -> bool:
        """Whether `msg` replies to one of the bot's answers (a stored assistant turn), not
        to a transcript the bot posted (stored as the speaker's turn) nor to anyone else's
        message. Told by the words people read (the platform shows an answer rendered, or
        the part of it the person quoted, or one of the messages a long answer took), among
        the chat's newest REPLY_LOOKBACK turns: the newest turn showing them says whose."""
        said = " ".join(_WORDS.findall((msg.reply_to_text or "").lower()))
        if not said:
            return False
        looked = 0
        async for row in self.store.newest_messages(msg.chat.key, page_size=16):
            if f" {said} " in f" {' '.join(_read_words(row.content))} ":
                return row.role == "assistant"
            looked += 1
            if looked >= REPLY_LOOKBACK:
                break
        return False

    async def _post_transcript(
        self, msg: IncomingMessage, sink: ReplySink, transcript: str, said: str
    ) -> None:
        """Post a voice note's transcript and keep it in the history. One the platform did
        not take is kept all the same, as an answer it did not take is (NotDelivered): the
        transcription was paid for, and the speaker's words are the chat's history. Nobody
        who asked nothing is told; a person who asked for it (a bare mention) is."""
        try:
            await sink.send(Reply(text=transcript, kind=ReplyKind.TRANSCRIPT))
        except Exception as err:
            await self._keep_heard(msg, said)
            if msg.addressed_to_bot:
                raise NotDelivered(
                    f"the platform did not take a transcript: {type(err).__name__}",
                    user_message=TRANSCRIPT_NOT_DELIVERED,
                ) from err
            self.metrics.failed(msg.chat.platform, "NotDelivered")
            log.warning(
                "the platform did not take a voice note's transcript (%s): it is kept in the "
                "history, nothing is posted",
                type(err).__name__,
                extra={"chat": msg.chat.key, "event": _event_id()},
            )
            return
        await self._keep_heard(msg, said)

    async def _remember_unheard(self, msg: IncomingMessage, transcript_only: bool) -> None:
        """Remember a voice note that could not be heard (fetched or transcribed) for /retry:
        with the chat's newest stored turn, so that /retry takes it on again only while
        nothing was stored in the chat since. Held by this process only (the message's
        downloads are live here): after a restart, or on another replica, /retry answers
        the chat's last answered turn again, as before."""
        try:
            last_id = (await self.store.read_history(msg.chat.key, page_size=1)).last_id
        except Exception:
            log.warning("could not note a failed voice note for /retry", exc_info=True)
            return
        self._unheard.pop(msg.chat.key, None)
        while len(self._unheard) >= UNHEARD_KEPT:
            del self._unheard[next(iter(self._unheard))]  # the oldest
        self._unheard[msg.chat.key] = (last_id, msg, transcript_only)

    def _quiet_transcript_failure(self, msg: IncomingMessage, failed: Exception) -> None:
        """Log an unaddressed voice note's failed transcription (nothing is posted): the
        operator's own errors at ERROR once per process for each cause (a missing endpoint
        or model fails every note alike), a passing failure at WARNING (the note is kept for
        a later attempt, see below), an unexpected one at ERROR, all else at info."""
        name = type(failed).__name__ if isinstance(failed, RelaybotError) else "unexpected"
        self.metrics.failed(msg.chat.platform, name)
        where = {"chat": msg.chat.key, "event": _event_id()}
        if isinstance(failed, UpstreamDown | RateLimited):
            # The transcription endpoint (or the platform's file server) is down or busy
            # for now, past the client's own retries: dropped, the transcript would be lost
            # for good. The event goes back to the inbox, open and unclaimed, and the next
            # sweep (every lease_seconds / 2, here or on another replica; at the latest the
            # next start) takes it on again, with fresh downloads: up to
            # VOICE_NOTE_ATTEMPTS times in all (the inbox counts them), then it is given up.
            # Meanwhile the chat goes on (the event is "deferred", which holds no chat): the
            # note is transcribed after the chat's later messages.
            job = _current.get()
            attempt = job.attempt if job is not None else VOICE_NOTE_ATTEMPTS
            if attempt < VOICE_NOTE_ATTEMPTS:
                log.warning(
                    "unaddressed voice note not transcribed: %s: kept for a later attempt "
                    "(%d of %d)",
                    type(failed).__name__,
                    attempt,
                    VOICE_NOTE_ATTEMPTS,
                    extra=where,
                )
                raise _Later from failed
            log.warning(
                "unaddressed voice note not transcribed: %s: given up after %d attempts",
                type(failed).__name__,
                attempt,
                extra=where,
            )
            return
        if not isinstance(failed, RelaybotError):
            log.error(
                "unexpected error transcribing an unaddressed voice note",
                exc_info=failed,
                extra=where,
            )
            return
        if isinstance(failed, OPERATOR_ERRORS):
            cause = (type(failed).__name__, str(failed))
            if cause not in self._operator_told and len(self._operator_told) < 64:
                self._operator_told.add(cause)
                log.error(
                    "operator action needed: %s: %s (unaddressed voice notes are left "
                    "without a transcript; said once)",
                    type(failed).__name__,
                    failed,
                    extra={"chat": msg.chat.key},
                )
                return
        log.info(
            "unaddressed voice note not transcribed: %s",
            type(failed).__name__,
            extra={"chat": msg.chat.key},
        )

    async def _keep_heard(self, msg: IncomingMessage, transcript: str) -> None:
        """A transcript posted in a group joins its history as the speaker's turn (no answer
        follows it): a later question about it ("@bot is that true?" in reply to it, "@bot
        sum up what Anna said") has it to go on. Stored with the event's end, in one
        transaction: after a crash the voice note is not transcribed and posted again."""
        chat = await self._chat_settings(msg)
        counter = counter_for(chat.model or self.settings.chat_model)
        row = {
            "role": "user",
            "content": transcript,
            "name": speaker_name(msg.sender.name, msg.sender.id),
            "token_count": counter.count(transcript),
            "encoding": counter.stored_as,
            "status": "heard",
            "event_key": msg.event_key,
        }
        await self._store_last(msg, row, counter, close=True)

    async def _voice_mode(self, msg: IncomingMessage) -> str:
        """What a group does with voice notes: "answer" them or post a "transcript"."""
        chosen = (await self._chat_settings(msg)).voice_mode
        if chosen:
            return chosen
        return "transcript" if self.settings.group_voice_transcript_only else "answer"

    @staticmethod
    def _first(msg: IncomingMessage, kind: AttachmentKind) -> Attachment | None:
        return next((a for a in msg.attachments if a.kind is kind), None)

    # -- chat -----------------------------------------------------------------------------
    async def _chat(
        self,
        msg: IncomingMessage,
        sink: ReplySink,
        text: str,
        images: list[Attachment],
        *,
        store_user_turn: bool = True,
        moderated: str = "",
        answer_to: int | None = None,
    ) -> None:
        """Answer `text` (with `images`); `moderated`: the end of `text` that input
        moderation already passed (a voice note's transcript), not checked again;
        `answer_to`: the stored turn the request ends with (/retry: turns stored after it,
        transcripts posted since, are left out of the request)."""
        if len(text) > self.settings.max_input_chars:
            raise BadInput(
                f"input of {len(text)} chars",
                user_message=(
                    f"Your message is {len(text):,} characters long; the limit is "
                    f"{self.settings.max_input_chars:,}. Please send a shorter one."
                ),
            )
        chat = await self._chat_settings(msg)
        model = chat.model or self.settings.chat_model
        system = chat.system_prompt or self.settings.system_prompt
        counter = counter_for(model)
        left_out = 0  # pictures the model cannot look at: the person is told
        if images and not self._supports_vision(model):
            left_out, images = len(images), []
            if not text:
                raise BadInput("vision unsupported", user_message=_cannot_see_pictures(model))
        # Pictures are fetched and checked before the turn is stored: one the model cannot
        # take is refused with nothing kept (else its question would stay in the history,
        # unanswered, and go with every later request). Without pictures the turn is stored
        # while the model is asked.
        pictures = [await self._image_part(a) for a in images]
        image_parts = [part for part, _ in pictures]
        # Room the pictures take in the request: the history is trimmed to what is left.
        picture_room = sum(tokens for _, tokens in pictures)
        # A turn that came with pictures says so in the history (the pictures are not kept).
        stored_text = f"{text}\n{IMAGE_MARK}".strip() if images else text
        name = None if msg.is_direct else speaker_name(msg.sender.name, msg.sender.id)
        user_turn: _UserTurn | None = None
        window = self.windows.get(msg.chat.key)
        # A chat without a row has no history (every stored turn creates or updates the
        # row): its first turn needs no read, and the model is asked while it is stored.
        # Should the store find older turns after all (rows written by a script), the
        # request is made again before anything is shown.
        fresh = (
            window is None
            and chat.history_rev is None
            and store_user_turn
            and self.windows.max_bytes > 0
        )
        if fresh:
            window = ChatWindow(0, counter.stored_as, [], None, None)
            self.windows.put(msg.chat.key, window)
        # A resumed event whose turn was stored before the crash: that turn's id.
        resumed_turn = await self._resumed_user_turn(msg) if store_user_turn else None
        if store_user_turn and resumed_turn is None:
            row = {
                "role": "user",
                "content": stored_text,
                "name": name,
                "token_count": counter.count(stored_text),
                "encoding": counter.stored_as,
                "event_key": msg.event_key,
            }
            stored = self.store.append_messages(
                msg.chat.key,
                [row],
                expected_revision=window.revision if window else None,
                claim=self._claim(),
            )
            user_turn = _UserTurn(self, msg.chat.key, window, row, counter, stored, fresh)
            if not fresh and not (
                window is not None
                and window.encoding == counter.stored_as
                and chat.history_rev is not None
                and chat.history_rev == window.revision
            ):
                await user_turn.stored()
            # Otherwise the chat's window is held and was the history as this turn began: the
            # request can be built and sent while the turn is being stored (see _UserTurn;
            # should anything be stored in between after all, the request is made again
            # before anything is shown).
        else:
            # A resumed or retried turn: what the store holds is read again.
            self.windows.drop(msg.chat.key)

        async def withhold_turn() -> None:
            """Keep the person's refused turn out of the history (it stays stored)."""
            if user_turn is not None:
                turn_id: int | None = await user_turn.stored()
            else:
                turn_id = resumed_turn
            if turn_id is not None:
                self.windows.drop(msg.chat.key)
                await self.store.set_message_status(msg.chat.key, turn_id, "withheld")

        # What the model wrote: a refusal before any of it is the prompt's (see below).
        streamed = _Answer()
        try:
            try:
                await self.moderator.check_input(
                    text.removesuffix(moderated).rstrip() if moderated else text,
                    pictures=image_parts,
                )
            except RelaybotError:
                # Refused, or unchecked (moderation down): kept out of the history either
                # way, so that no later request carries input moderation never passed.
                await withhold_turn()
                raise
            system_tokens = counter.count_cached(system)
            budget = self._history_budget(model, system_tokens)
            if budget <= 0:
                raise self._system_too_long(chat, model, budget)
            # At most half the history's room goes to the pictures: a model whose window is
            # unknown (8,192 tokens assumed) still gets an album with its question.
            budget -= min(picture_room, budget // 2)
            if left_out:
                await self._tell(sink, _cannot_see_pictures(model, left_out), ReplyKind.NOTICE)
            await sink.typing()
            messages = None
            if user_turn is not None and user_turn.pending:
                messages = user_turn.speculate(system, budget)
            if messages is None:
                if user_turn is not None:
                    await user_turn.stored()
                messages = await self._request_messages(
                    msg.chat.key, system, model, budget, answer_to
                )

            async def confirm() -> list[dict[str, Any]] | None:
                """None when the request sent holds the history as stored; else the request
                to send instead (the window proved stale once the turn was stored)."""
                if user_turn is None or await user_turn.confirmed():
                    return None
                return await self._request_messages(msg.chat.key, system, model, budget, answer_to)

            async def trim_harder(refused: ContextTooLong) -> list[dict[str, Any]]:
                if user_turn is not None:
                    await user_turn.confirmed()
                smaller = budget // 2
                if not images:  # a picture's size is no sign of the model's window
                    self._refused_as_too_long(model, refused, budget)
                    smaller = self._history_budget(model, system_tokens)
                if smaller <= 0:
                    raise refused
                return await self._request_messages(
                    msg.chat.key, system, model, smaller, answer_to
                )

            try:
                answer = await self._stream_answer(
                    sink, model, messages, image_parts, msg, trim_harder, confirm, streamed
                )
            except (ContentRefused, BadInput):
                if not streamed.text.strip():
                    # The provider refused the prompt itself (its content filter, OpenAI's
                    # invalid_prompt): kept in the history, the turn would go with every
                    # later request and have each refused too. It is kept out, as a turn
                    # input moderation refused is.
                    await withhold_turn()
                raise
            except ModelUnavailable as err:
                if not chat.model:
                    raise  # the configured model: the operator's to mend, and told
                # A model picked for this chat with /model that the endpoint no longer
                # serves (or never could chat): the people in the chat can pick another.
                raise BadInput(
                    str(err),
                    user_message=f"This chat's model, {model}, is not available for chat at "
                    "the moment. Send /model to pick another, or /model default.",
                ) from err
        except ContextTooLong:
            if streamed.text.strip():
                raise  # cut short after part of the answer was shown (stored as partial)
            # Refused as too long for the model's window before any answer: the person is
            # asked for something shorter. Kept in the history, the turn would stop every
            # later request's trimming at it (nothing older would reach the model again)
            # and be exported as answered.
            await withhold_turn()
            raise
        finally:
            if user_turn is not None:
                # Whatever happened, the turn's storing has finished before the message does
                # (its outcome, e.g. a takeover, is what counts).
                await user_turn.stored()
        if answer is not None:
            await self._store_answer(msg, model, answer, "ok")

    def _follow(
        self,
        chat_key: str,
        window: ChatWindow | None,
        appended: Appended,
        row: dict[str, Any],
        counter: TokenCounter,
    ) -> ChatWindow | None:
        """Add a turn this process stored to the chat's window, or drop a stale window."""
        if window is None and appended.last_before is None and self.windows.max_bytes > 0:
            # The chat's first turn: nothing to read, ever.
            window = ChatWindow(appended.revision, counter.stored_as, [], None, None)
            self.windows.put(chat_key, window)
        elif window is None:
            return None
        elif (
            not appended.continued
            or appended.last_before != window.last_id
            or window.encoding != counter.stored_as
        ):
            self.windows.drop(chat_key)
            return None
        window.revision = appended.revision
        window.last_id = appended.ids[-1]
        if row.get("status", "ok") != "withheld":
            window.append(self._turn(appended.ids[-1], row, counter))
            self.windows.resized(chat_key)
        return window

    @staticmethod
    def _turn(row_id: int, row: Mapping[str, Any], counter: TokenCounter) -> Turn:
        """A stored row as a request message, with what it costs under `counter`."""
        content: str = row["content"]
        name: str | None = row.get("name")
        tokens = row["token_count"]
        if row["encoding"] != counter.stored_as:
            tokens = counter.count(content)
        item: dict[str, Any] = {"role": row["role"], "content": content}
        if name:
            item["name"] = name
            tokens += counter.count(name)
        cost = counter.message_cost(tokens, has_name=bool(name))
        return Turn(row_id, cost, EncodedMessage(item))

    async def _store_answer(
        self, msg: IncomingMessage, model: str, answer: _Answer, status: str
    ) -> None:
        """Store an answer the person saw (whole, cut short or withheld) and what it cost."""
        counter = counter_for(model)
        tokens = counter.count(answer.text)
        usage = answer.usage or _estimated(answer, counter, tokens)
        row = {
            "role": "assistant",
            "content": answer.text,
            "token_count": tokens,
            "encoding": counter.stored_as,
            "status": status,
        }
        usage_row = self._usage_row(msg, model, "chat", usage=usage)
        await self._store_last(msg, row, counter, usage=usage_row, close=status == "ok")

    async def _store_last(
        self,
        msg: IncomingMessage,
        row: dict[str, Any],
        counter: TokenCounter,
        *,
        close: bool,
        usage: dict[str, Any] | None = None,
    ) -> None:
        """Store the running event's last turn (an answer, a transcript posted), its usage
        and the event's new state in one transaction: `close`d, the event is done (and,
        across replicas, this process's turn in the chat ends with it); else it is marked
        answered. Nothing is stored once another replica took the event over."""
        job = _current.get()
        release = job is not None and close and self.inbox.shared
        if job is not None:
            job.kept = True  # shown: stored and closed once the database takes them
        tried = False
        found: str | None = None

        async def store() -> tuple[ChatWindow | None, Appended] | None:
            """One try; None when an earlier try was stored after all (its reply lost as
            the server stopped, the event `found` answered or done): never stored twice."""
            nonlocal tried, found
            if tried and job is not None:
                found = await self.inbox.status(job.event_id)
                if found in ("answered", "done"):
                    return None
            tried = True
            window = self.windows.get(msg.chat.key)
            appended = await self.store.append_messages(
                msg.chat.key,
                [row],
                answered_event=job.event_id if job else None,
                usage=usage,
                close_event=close,
                expected_revision=window.revision if window else None,
                release_chat=self.inbox.worker_id if release else None,
                claim=self._claim(),
            )
            return window, appended

        stored = await self._until_stored(job, store)
        if stored is None:
            assert job is not None
            self.windows.drop(msg.chat.key)  # its new turn's id is not known here
            if found == "done":
                job.closed = True
                job.released = release
            return
        window, appended = stored
        if appended.forgotten:
            # /forget took the chat while this answer was made (a thread of a DM forgotten
            # at its top level): nothing was stored, and its event went with the chat.
            self.windows.drop(msg.chat.key)
            if job is not None:
                job.closed = True
            log.info("answer not stored: its chat was forgotten", extra={"chat": msg.chat.key})
            return
        if not appended.ids:
            raise _TakenOver
        self._follow(msg.chat.key, window, appended, row, counter)
        if job is not None and close:
            job.closed = True
            job.released = release

    async def _keeping(self, job: _Job, work: Callable[[], Awaitable[None]]) -> None:
        """`work` on the database for `job`: until the database takes it once the person saw
        the answer (see `_until_stored`), else tried once."""
        task = asyncio.current_task()
        if not job.kept:
            await work()
        elif task is not None and task.cancelling():
            # Stopping (shutdown past its grace): one try, no wait; with the database
            # unavailable the event's claim and the chat's lease run out by themselves.
            try:
                await work()
            except Exception as err:
                if not unavailable(err):
                    raise
        else:
            await self._until_stored(job, work)

    async def _until_stored(self, job: _Job | None, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work`, database work keeping what the person saw (the answer, the event's
        end), until the database takes it.

        Failing instead would tell the person "something went wrong" about an answer they
        have, and leave its event open for a sweep to answer (and bill) a second time. While
        the database is unavailable (see `core.db.database.unavailable`) the answer waits in
        memory and `work` is tried again after a pause growing to KEEP_RETRY_MAX, for as long
        as the process runs; the job stays live meanwhile, so the heartbeat renews its claim
        and chat lease as soon as the database answers, and the chat's next messages wait
        their turn. Shutdown cancels the wait (see `shutdown`). Any other error is raised.
        """
        pause = KEEP_RETRY_FIRST
        while True:
            try:
                result = await work()
            except Exception as err:
                if job is None or not unavailable(err):
                    raise
                self._database_down(err)
                job.keeping = True
                await asyncio.sleep(pause)
                pause = min(pause * 2, KEEP_RETRY_MAX)
                continue
            if job is not None and job.keeping:
                job.keeping = False
                self._database_back()
            return result

    def _database_down(self, err: BaseException) -> None:
        """Tell the operator, once per outage, that the database cannot be used now."""
        if self._outage is not None:
            return
        self._outage = time.monotonic()
        log.warning(
            "the database is unavailable (%s): messages wait for it; answers already shown "
            "are kept in memory and stored once it is back",
            _driver_error(err),
        )

    def _database_back(self) -> None:
        if self._outage is None:
            return
        log.warning("the database is back after %.1f s", time.monotonic() - self._outage)
        self._outage = None

    def _claim(self) -> tuple[int, str] | None:
        """The running job's event and this worker: stored turns need the claim to hold.

        Only replicas can lose a claim (one that stalled past its lease is taken over);
        a SQLite process is alone.
        """
        job = _current.get()
        if job is None or not self.inbox.shared:
            return None
        return job.event_id, self.inbox.worker_id

    async def _resumed_user_turn(self, msg: IncomingMessage) -> int | None:
        """The id of a resumed event's user turn, when it was stored before the crash."""
        job = _current.get()
        if job is None or not job.resumed:
            return None
        return await self.inbox.user_turn_id(msg.event_key)

    def _supports_vision(self, model: str) -> bool:
        """Whether `model` reads pictures: a RELAYBOT_VISION_MODELS name covers its snapshots
        and variants ("gpt-4o-2024-08-06", "gpt-4o-mini"), under a provider's prefix too
        ("openai/gpt-4o", as the price table reads it), unless a closer name is one of the
        variants that take none (o3 reads pictures, o3-mini does not)."""
        bare = model.rsplit("/", 1)[-1]
        return _reads_pictures(model, self._vision) or _reads_pictures(bare, self._vision)

    async def _text_file(self, attachment: Attachment) -> str:
        """A text file's content for the model (fenced, under its name), or BadInput."""
        name = attachment.filename
        if not _is_text_file(attachment):
            raise BadInput(
                f"unsupported file {name!r} ({attachment.mime})",
                user_message=f"I can't read {name}: I read text, voice or audio messages, "
                "pictures and text files (.txt, .md, .csv, .json, code). Paste the part you "
                "want me to read, or send it as a text file.",
            )
        limit = self.settings.max_input_chars
        too_long = BadInput(
            f"text file of {attachment.size} bytes",
            user_message=f"{name} is too long for me: I read up to {limit:,} characters. "
            "Please send the part that matters.",
        )
        if attachment.size is not None and attachment.size > 4 * limit:
            raise too_long
        data = await attachment.fetch()
        try:
            content = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise BadInput(
                f"text file {name!r} is not UTF-8",
                user_message=f"I can't read {name}: it is not UTF-8 text. Please save it as "
                "UTF-8, or paste the text.",
            ) from None
        if len(content) > limit:
            raise too_long
        fence = "```"
        while fence in content:
            fence += "`"
        return f"{name}:\n{fence}\n{content.rstrip()}\n{fence}"

    async def _image_part(self, attachment: Attachment) -> tuple[dict[str, Any], int]:
        """The picture as an image_url part, and the tokens it takes in the request."""
        if attachment.size is not None and attachment.size > MAX_IMAGE_BYTES:
            raise picture_too_large(attachment.size)
        data = await attachment.fetch()
        if len(data) > MAX_IMAGE_BYTES:
            raise picture_too_large(len(data))
        mime = image_mime(data)
        if mime is None:  # e.g. an iPhone's HEIC sent as a file: the endpoint would refuse it
            raise BadInput(
                f"unsupported picture ({attachment.mime})",
                user_message="I can only look at JPEG, PNG, WebP or GIF pictures. "
                "Send it as a photo, or convert it first.",
            )
        return _data_url_part(data, mime), picture_tokens(image_dimensions(data))

    async def _request_messages(
        self, chat_key: str, system: str, model: str, budget: int, upto: int | None = None
    ) -> list[dict[str, Any]]:
        """System prompt + the newest history that fits `budget`, oldest first (ending with
        the turn `upto`, when given: turns stored after it are not sent, nor take room)."""
        counter = counter_for(model)
        window = self.windows.get(chat_key)
        if (
            window is None
            or window.encoding != counter.stored_as
            or (upto is not None and window.last_id != upto)
            or not window.fit(budget)
        ):
            window = await self._read_window(chat_key, counter, budget, upto)
        else:
            self.windows.resized(chat_key)
        return window.messages({"role": "system", "content": system})

    async def _read_window(
        self, chat_key: str, counter: TokenCounter, budget: int, upto: int | None = None
    ) -> ChatWindow:
        """The newest history that fits `budget`, read from the store (and kept, if it may);
        with `upto`, the history as it stood after that turn."""
        turns: list[Turn] = []
        # The revision is read with the first page; the next append checks it, so a change
        # made while later pages are read only costs a fresh read next time.
        history = await self.store.read_history(chat_key)
        revision = history.revision

        async def costs() -> AsyncIterator[int]:
            async for row in history:
                if upto is not None and row.id > upto:
                    continue  # (/retry: transcripts posted since the question it answers)
                turn = self._turn(
                    row.id,
                    {
                        "role": row.role,
                        "content": row.content,
                        "name": row.name,
                        "token_count": row.token_count,
                        "encoding": row.encoding,
                    },
                    counter,
                )
                turns.append(turn)
                yield turn.cost

        collected = [c async for c in _take_while_fits(costs(), budget)]
        count = fit_newest(collected, budget)
        older = turns[count].cost if len(turns) > count else None
        window = ChatWindow(
            revision or 0, counter.stored_as, reversed(turns[:count]), older, history.last_id
        )
        # A window that left later turns out is not the chat's history: it is not kept.
        whole = upto is None or history.last_id == upto
        if revision is not None and whole and self.windows.max_bytes > 0:
            self.windows.put(chat_key, window)
        return window

    def _window(self, model: str) -> int:
        """`model`'s context window: the configured one, or the smaller one the endpoint
        showed (`_refused_as_too_long`)."""
        configured = context_window(model, self.settings.context_tokens)
        return min(configured, self._told_windows.get(model, configured))

    def _history_budget(self, model: str, system_tokens: int) -> int:
        """Tokens of `model`'s window left for history beside the system prompt and reply,
        within the model's input limit."""
        return Budget(
            window=self._window(model),
            reply_tokens=self.settings.reply_tokens,
            system_tokens=system_tokens,
            max_input=max_input_tokens(model),
        ).history_tokens

    def _refused_as_too_long(self, model: str, refused: ContextTooLong, budget: int) -> None:
        """The endpoint refused as too long a request whose history fitted `budget`: its
        window for `model` is smaller than configured (an unknown model taken as 8,192
        tokens, a server started with a shorter context, a proxy's body limit). Remember the
        window the endpoint states ("maximum context length is N tokens"), else one that
        leaves half the history, so that the chat's next messages fit at once instead of
        each being refused first."""
        window = self._window(model)
        # What the request could take, reply included: less than the window where the model
        # takes less input (gpt-5), so that half the history is half of what was sent.
        limit = max_input_tokens(model)
        room = window if limit is None else min(window, limit + self.settings.reply_tokens)
        stated = _STATED_WINDOW.search(str(refused))
        told = int(stated.group(1).replace(",", "")) if stated else room
        if told >= room:  # no number, or one our count already keeps to (tokenizers differ)
            told = room - budget // 2
        self._told_windows[model] = told
        log.warning(
            "the endpoint refused a request that fitted the model's window: using a smaller "
            "one; set RELAYBOT_CONTEXT_TOKENS to the model's real window",
            extra={"model": model, "configured": window, "now": told},
        )

    def _system_too_long(self, chat: ChatSettings, model: str, budget: int) -> RelaybotError:
        """The system prompt leaves no room for a conversation: the chat's own (its people
        can change it) or the configured one (the operator's)."""
        detail = f"the system prompt leaves {budget} tokens of {model}'s window for history"
        if chat.system_prompt:
            return BadInput(
                detail,
                user_message=f"This chat's system prompt is too long for {model}. Set a shorter "
                "one with /system TEXT, or go back to the default with /system default.",
            )
        return ConfigError(
            f"{detail}: shorten RELAYBOT_SYSTEM_PROMPT, lower RELAYBOT_REPLY_TOKENS or set "
            "RELAYBOT_CONTEXT_TOKENS to the model's real window"
        )

    async def _stream_answer(
        self,
        sink: ReplySink,
        model: str,
        messages: list[dict[str, Any]],
        image_parts: list[dict[str, Any]],
        msg: IncomingMessage,
        trim_harder: Callable[[ContextTooLong], Awaitable[list[dict[str, Any]]]],
        confirm: Callable[[], Awaitable[list[dict[str, Any]] | None]] | None = None,
        into: _Answer | None = None,
    ) -> _Answer | None:
        """Stream the model's answer to the person (into `into` when given): the answer to
        store, or None when it was withheld (stored so already)."""
        answer = into if into is not None else _Answer()

        async def withheld(stream: ReplyStream) -> bool:
            """Moderate the text the person saw; take it back and store it "withheld" (out
            of the history, billed) when it is flagged or cannot be checked: fail closed."""
            try:
                flagged = await self.moderator.output_flagged(answer.text)
            except Exception as err:
                kind = type(err).__name__ if isinstance(err, RelaybotError) else "unexpected"
                self.metrics.failed(msg.chat.platform, kind)
                log.log(
                    logging.ERROR if isinstance(err, OPERATOR_ERRORS) else logging.WARNING,
                    "output moderation failed (%s): the answer was withheld unchecked",
                    kind,
                    exc_info=not isinstance(err, RelaybotError),
                    extra={"chat": msg.chat.key},
                )
                notice = UNCHECKED_NOTICE
            else:
                if not flagged:
                    return False
                notice = WITHHELD_NOTICE
            await stream.retract(notice)
            await self._store_answer(msg, model, answer, "withheld")
            return True

        complete = False  # the model is done: what fails from here is the answer's delivery
        try:
            async with sink.stream() as stream:
                try:
                    try:
                        await self._stream_into(
                            msg, stream, answer, model, messages, image_parts, confirm
                        )
                    except ContextTooLong as refused:
                        if answer.text:
                            raise
                        # The provider counts differently from us (or its window is smaller
                        # than configured): trim harder once before giving up.
                        messages = await trim_harder(refused)
                        try:
                            await self._stream_into(
                                msg, stream, answer, model, messages, image_parts
                            )
                        except ContextTooLong as err:
                            if answer.text or not _holds_history(messages):
                                raise  # the newest message alone is too long: the default text
                            raise ContextTooLong(
                                str(err),
                                user_message="This conversation no longer fits the model, "
                                "even with its older messages left out. Send /reset to start "
                                "afresh.",
                            ) from err
                except RelaybotError as err:
                    # (The platform failing to take part of the answer, NotDelivered, is
                    # such a break too.)
                    if not answer.text.strip():
                        raise
                    if await withheld(stream):
                        # What the person saw was flagged (or could not be checked): its
                        # notice is all they are told; the break is the operator's to hear of.
                        self.metrics.failed(msg.chat.platform, type(err).__name__)
                        log.warning(
                            "message failed: %s (the partial answer was withheld)",
                            type(err).__name__,
                            extra={"chat": msg.chat.key},
                        )
                        return None
                    # Keep what the person already saw, marked, and say what happened. The
                    # error keeps its class: a quota used up mid-answer still alerts the
                    # operator, and is counted as what it is.
                    await stream.append(_closing_fence(answer.text) + CUT_SHORT_MARK)
                    await self._store_answer(msg, model, answer, "partial")
                    err.user_message = "The answer was cut short: " + err.user_message
                    raise
                if not answer.text.strip():  # (only spaces and newlines show as nothing)
                    # What the model spent (reading, thinking) is billed: recorded, estimated
                    # as a stored answer's is when the server said nothing of it.
                    usage = answer.usage
                    if usage is None:
                        counter = counter_for(model)
                        usage = _estimated(answer, counter, counter.count(answer.text))
                    await self._record_unanswered(msg, model, "chat", usage=usage)
                    raise self._nothing_written(answer, model)
                note = _STOP_NOTES.get(answer.finish_reason or "")
                if note:
                    # The model stopped before it was done: the person sees why (the note is
                    # not the model's words, and is not kept in the history).
                    await stream.append(_closing_fence(answer.text) + note)
                if await withheld(stream):
                    return None
                complete = True
        except Exception as err:
            if not complete:
                raise
            # The platform did not take the finished answer (its last send failed): the
            # model's work is stored and billed all the same.
            if isinstance(err, NotDelivered) and err.shown_all:
                # Only closing its message failed: the person has the whole answer.
                log.warning(
                    "the platform did not confirm the end of an answer shown whole: %s",
                    err,
                    extra={"chat": msg.chat.key},
                )
                return answer
            # Not all of it reached the person: kept as a partial answer is, and they are
            # told (NotDelivered says what happened).
            await self._store_answer(msg, model, answer, "partial")
            raise
        return answer

    def _nothing_written(self, answer: _Answer, model: str) -> RelaybotError:
        """The error for an answer without text, by why the model stopped."""
        if answer.finish_reason == "content_filter":
            return ContentRefused(f"{model}: the provider's content filter stopped the answer")
        if answer.finish_reason == "length":
            # A reasoning model can spend its whole allowance thinking: the operator's to set.
            log.warning(
                "the model wrote nothing within the reply limit: raise RELAYBOT_REPLY_TOKENS",
                extra={"model": model, "reply_tokens": self.settings.reply_tokens},
            )
            return EmptyAnswer(
                f"{model}: no text within {self.settings.reply_tokens} reply tokens",
                user_message="The model used up its whole reply allowance before writing "
                "anything. Please try again, or ask for something shorter.",
            )
        return EmptyAnswer(f"{model}: an empty answer (finish_reason {answer.finish_reason})")

    async def _stream_into(
        self,
        msg: IncomingMessage,
        stream: ReplyStream,
        answer: _Answer,
        model: str,
        messages: list[dict[str, Any]],
        image_parts: list[dict[str, Any]],
        confirm: Callable[[], Awaitable[list[dict[str, Any]] | None]] | None = None,
    ) -> None:
        """Stream the model's answer into `stream`.

        `confirm`, when given, is awaited before the first text is shown (and once the
        model is done): the request may have been sent before the person's turn was stored;
        should the stored history differ from what was sent, the request is made again with
        the history as stored, before anything was shown.

        Every request the model read is recorded: one it answered nothing of (made again by
        the client, or failed) and one dropped for being stale, by its usage or else an
        estimate (the request's tokens), as a stored answer's is.
        """

        async def abandoned() -> None:
            """Record the request in `answer.sent`, read by the model and not answered."""
            usage = _estimated(answer, counter_for(model), 0)
            await self._record_unanswered(msg, model, "chat", usage=usage)

        while True:
            answer.sent = messages
            if image_parts and messages[-1]["role"] == "user":
                last = dict(messages[-1])
                text, _ = without_image_mark(last["content"])
                words = [{"type": "text", "text": text}] if text else []
                last["content"] = [*words, *image_parts]
                messages = [*messages[:-1], last]
            retry: list[dict[str, Any]] | None = None
            with self.metrics.model_call("chat", model):
                async with aclosing(
                    self.client.chat_stream(
                        model=model,
                        messages=messages,
                        max_tokens=self.settings.reply_tokens,
                        abandoned=abandoned,
                    )
                ) as deltas:
                    async for delta in deltas:
                        if confirm is not None and (delta.text or delta.usage is not None):
                            retry, confirm = await confirm(), None
                            if retry is not None:
                                break
                        if delta.text:
                            answer.parts.append(delta.text)
                            await stream.append(delta.text)
                        if delta.usage is not None:
                            answer.usage = delta.usage
                        if delta.finish_reason:
                            answer.finish_reason = delta.finish_reason
            if retry is None and confirm is not None:
                retry = await confirm()  # an answer with no text at all
            if retry is None:
                return
            if answer.usage is None:
                await abandoned()
            else:
                await self._record_unanswered(msg, model, "chat", usage=answer.usage)
            messages, confirm = retry, None
            answer.usage = answer.finish_reason = None

    # -- audio ----------------------------------------------------------------------------
    async def _transcribe(
        self, msg: IncomingMessage, audio: Attachment, *, translate: bool
    ) -> str:
        limit = self.settings.max_audio_bytes
        too_big = audio_too_large(limit)
        if audio.size is not None and audio.size > limit:
            raise too_big
        filename = audio_filename(audio)
        data = await audio.fetch()
        if len(data) > limit:
            raise too_big
        if not data:
            raise BadInput("empty audio", user_message="That audio file is empty.")
        model = self.settings.translate_model if translate else self.settings.transcribe_model
        # The endpoint may refuse the file itself (corrupt, or mislabelled).
        with self.metrics.model_call("audio", model), _refused_input_says(UNREADABLE_AUDIO):
            try:
                heard = await self.client.transcribe(
                    model=model, audio=data, filename=filename, translate=translate
                )
            except BadInput as refused:
                if refused.user_message == BadInput.user_message and _TOO_LONG_AUDIO.search(
                    str(refused)
                ):
                    raise BadInput(str(refused), user_message=TOO_LONG_AUDIO) from refused
                raise
            except NotAnswered:
                # The endpoint had the audio and may have transcribed it: billed all the
                # same, recorded by the platform's duration (all that is known of it).
                seconds = audio.duration_seconds or 0.0
                await self._record_unanswered(msg, model, "audio", audio_seconds=seconds)
                raise
        # Billed as the endpoint reports it (tokens, or seconds); else by the platform's
        # duration (a console file or a Slack upload has none: then only the server knows).
        await self._record_usage(
            msg,
            model,
            "audio",
            usage=heard.usage,
            audio_tokens=heard.audio_tokens,
            audio_seconds=heard.seconds or audio.duration_seconds or 0.0,
        )
        text = heard.text.strip()
        if not text:
            raise BadInput("no speech", user_message="I couldn't hear any speech in that audio.")
        await self.moderator.check_input(text)
        return text

    # -- commands -------------------------------------------------------------------------
    async def _help(self, msg: IncomingMessage, sink: ReplySink) -> str:
        """The help for where it was asked: in a group, a member the platform does not name
        one of its admins sees what only they may do marked (they were refused it after)."""
        access = self.policy.access
        if access.is_admin(msg.chat.platform, msg.sender.id):
            return HELP_TEXT if msg.is_direct else help_text(group=True)
        # Picking a model is the bot's admins' where it has any (Policy.admit).
        not_bot_admin = bool(access.admins)
        if msg.is_direct:
            return help_text(group=False, not_bot_admin=not_bot_admin)
        try:
            admin = await sink.chat_admin(msg.sender.id)
        except RelaybotError:
            admin = False  # asking failed: the changes would be refused, so say so
        return help_text(group=True, member=admin is False, not_bot_admin=not_bot_admin)

    async def _command(self, name: str, args: str, msg: IncomingMessage, sink: ReplySink) -> None:
        key = msg.chat.key
        if name in ("help", "start"):
            await sink.send(Reply(text=await self._help(msg, sink), kind=ReplyKind.NOTICE))
        elif name == "reset":
            await self.store.clear_history(key)
            await sink.send(
                Reply(text="History cleared. Let's start over.", kind=ReplyKind.NOTICE)
            )
        elif name == "system":
            await self._system_command(args, msg, sink)
        elif name == "voicemode":
            await self._voice_mode_command(args, msg, sink)
        elif name == "model":
            await self._model_command(args, msg, sink)
        elif name == "image":
            await self._image_command(args, msg, sink)
        elif name == "edit":
            await self._edit_command(args, msg, sink)
        elif name == "translate":
            audio = self._first(msg, AttachmentKind.AUDIO)
            if audio is None:
                raise BadInput(
                    "translate without audio",
                    user_message="Send /translate with a voice note or audio file to translate.",
                )
            text = await self._transcribe(msg, audio, translate=True)
            await sink.send(Reply(text=text, kind=ReplyKind.TRANSCRIPT))
        elif name == "retry":
            await self._retry(key, msg, sink)
        elif name in POLICY_COMMANDS:
            if name == "forget":  # nothing of the chat (nor of its threads) is kept
                for kept in [k for k in self._unheard if key in (k, ChatRef.parent_of(k))]:
                    del self._unheard[kept]

            await self.policy.command(name, args, msg, sink)
        else:
            raise BadInput(
                f"unknown command {name}",
                user_message=f"Unknown command /{name}. Send /help to see what I can do.",
            )

    async def _retry(self, key: str, msg: IncomingMessage, sink: ReplySink) -> None:
        """Answer the last answered turn again; its old answer stays until a new one exists.
        A voice note that could not be heard since (nothing of it was stored) is the chat's
        latest message: it is taken on again instead (fetched and transcribed anew)."""
        unheard = self._unheard.get(key)
        if unheard is not None:
            since, voice, transcript_only = unheard
            if (await self.store.read_history(key, page_size=1)).last_id == since:
                await self._respond(voice, sink, transcript_only)
                if self._unheard.get(key) is unheard:  # heard at last
                    del self._unheard[key]
                return
            del self._unheard[key]  # a turn was stored since: that is the latest
        popped = await self.store.pop_last_answer(key)
        if popped is None:
            raise BadInput("nothing to retry", user_message="There is no answer to retry yet.")
        try:
            text, pictures = without_image_mark(popped.user.content)
            if pictures:
                # Pictures are not kept: asked again without it, the model would answer
                # something else.
                raise BadInput(
                    "retry of a turn with a picture",
                    user_message="I no longer have the picture that message came with. "
                    "Please send it again.",
                )
            await self._chat(msg, sink, text, [], store_user_turn=False, answer_to=popped.user.id)
        except Exception:
            if await self.store.restore_answer(key, popped):
                self.windows.drop(key)
            raise

    async def _voice_mode_command(self, args: str, msg: IncomingMessage, sink: ReplySink) -> None:
        # A group's or channel's setting, shared by its threads and topics.
        key = msg.chat.parent_key or msg.chat.key
        choice = args.strip().lower()
        if msg.is_direct:
            raise BadInput(
                "voicemode in a direct chat",
                user_message="Here I answer every voice note. /voicemode is for groups: it "
                "chooses whether voice notes there get an answer or a transcript.",
            )
        if choice and choice not in ("answer", "transcript"):
            raise BadInput(
                f"voicemode {choice!r}",
                user_message="Send /voicemode transcript (a transcript of every voice note) "
                "or /voicemode answer (answer voice notes addressed to me).",
            )
        if choice in ("answer", "transcript"):
            await self.store.update_chat(key, msg.chat.platform, voice_mode=choice)
            every = choice == "transcript"
            done = (
                "I'll post the transcript of each voice note here."
                if every
                else "I'll answer voice notes addressed to me here."
            )
            extras = {EVERY_VOICE_NOTE: msg.chat.key} if every else {}
            await sink.send(Reply(text=done, kind=ReplyKind.NOTICE, extras=extras))
            return
        current = await self._voice_mode(msg)
        await sink.send(
            Reply(
                text=f"Voice notes in groups: {current}. "
                "Change it with /voicemode transcript or /voicemode answer.",
                kind=ReplyKind.NOTICE,
            )
        )

    async def _system_command(self, args: str, msg: IncomingMessage, sink: ReplySink) -> None:
        key = msg.chat.key
        if not args:
            own = (await self.store.chat_settings(key)).system_prompt
            current = (await self.store.chat_settings(key, msg.chat.parent_key)).system_prompt
            shown = current or self.settings.system_prompt
            origin = "this chat's" if own else _SHARED if current else "the default"
            await sink.send(
                Reply(
                    text=f"Current system prompt ({origin}):\n{shown}\n\n"
                    "Change it with /system TEXT, or go back with /system default.",
                    kind=ReplyKind.NOTICE,
                )
            )
            return
        if args.lower() in ("default", "reset"):
            await self.store.update_chat(key, msg.chat.platform, system_prompt=None)
            shared = (await self.store.chat_settings(key, msg.chat.parent_key)).system_prompt
            done = (
                f"This chat's own system prompt is removed: it uses {_SHARED} again."
                if shared
                else "System prompt reset to the default."
            )
            await sink.send(Reply(text=done, kind=ReplyKind.NOTICE))
            return
        chat = await self.store.chat_settings(key, msg.chat.parent_key)
        model = chat.model or self.settings.chat_model
        tokens = counter_for(model).count(args)
        if self._history_budget(model, tokens) < MIN_HISTORY_TOKENS:
            window = self._window(model)
            raise BadInput(
                f"system prompt of {tokens} tokens",
                user_message=f"That system prompt is too long for {model}: about {tokens:,} "
                f"tokens, and the model reads {window:,} at most, answer included. Please "
                "send a shorter one.",
            )
        await self.moderator.check_input(args)
        await self.store.update_chat(key, msg.chat.platform, system_prompt=args)
        await sink.send(Reply(text="System prompt updated for this chat.", kind=ReplyKind.NOTICE))

    async def _model_command(self, args: str, msg: IncomingMessage, sink: ReplySink) -> None:
        key = msg.chat.key
        chat = await self.store.chat_settings(key, msg.chat.parent_key)
        current = chat.model or self.settings.chat_model
        try:
            # Only chat models: the endpoint lists its audio, image and embedding models too.
            models: list[str] | None = chat_models(await self.client.list_models())
        except (BadInput, EndpointMissing, ModelUnavailable, UpstreamDown) as err:
            # Servers without /models (or one failing now): any name may be picked.
            log.info("the endpoint did not list its models: %s", type(err).__name__)
            models = None
        if not args:
            if models is None:
                text = (
                    f"Current model: {current}\nThe endpoint does not list its models; "
                    "pick one by name with /model NAME."
                )
            else:
                text = (
                    f"Current model: {current}\nAvailable models:\n"
                    f"{_model_list(models, current)}\n\nPick one with /model NAME."
                )
            await sink.send(Reply(text=text, kind=ReplyKind.NOTICE))
            return
        name, *extra = args.split()
        if extra:
            raise BadInput(
                f"model name with spaces: {args!r}",
                user_message="Model names have no spaces: send /model NAME, "
                "or /model to list them.",
            )
        purpose = not_chat_purpose(name)
        if purpose is not None:
            raise BadInput(
                f"not a chat model: {name}",
                user_message=f"{name} is not a chat model (it is for {purpose}). "
                "Send /model to list the chat models.",
            )
        if name.lower() == "default":
            await self.store.update_chat(key, msg.chat.platform, model=None)
            shared = (await self.store.chat_settings(key, msg.chat.parent_key)).model
            done = (
                f"This chat's own model choice is removed: it uses {shared} again, "
                "as chosen for the whole group or channel."
                if shared
                else f"Model reset to {self.settings.chat_model}."
            )
            await sink.send(Reply(text=done, kind=ReplyKind.NOTICE))
            return
        if models and name not in models:
            similar = [m for m in models if name.lower() in m.lower()]
            hint = (
                f"Models whose name has it:\n{_model_list(similar)}\nPick one with /model NAME."
                if similar
                else "Send /model to list them."
            )
            raise BadInput(
                f"unknown model {name}",
                user_message=f"The endpoint has no model named {name}. {hint}",
            )
        await self.store.update_chat(key, msg.chat.platform, model=name)
        await sink.send(Reply(text=f"This chat now uses {name}.", kind=ReplyKind.NOTICE))

    async def _image_command(self, prompt: str, msg: IncomingMessage, sink: ReplySink) -> None:
        if not prompt:
            raise BadInput(
                "image without prompt", user_message="Describe the image: /image PROMPT"
            )
        await self.moderator.check_input(prompt)
        await sink.typing()
        model = self.settings.image_model
        picture = await self._picture(
            msg,
            model,
            self.client.generate_image(
                model=model,
                prompt=prompt,
                size=self.settings.image_size,
                quality=self.settings.image_quality,
            ),
        )
        await sink.send(Reply(text=prompt, image=picture.data, image_name="image.png"))

    async def _edit_command(self, prompt: str, msg: IncomingMessage, sink: ReplySink) -> None:
        source = self._first(msg, AttachmentKind.IMAGE)
        if source is None or not prompt:
            raise BadInput(
                "edit without image",
                user_message="Send /edit INSTRUCTION together with (or as a reply to) a photo.",
            )
        if sum(1 for a in msg.attachments if a.kind is AttachmentKind.IMAGE) > 1:
            # An album: which of its pictures is meant is anyone's guess.
            raise BadInput(
                "edit of several pictures",
                user_message=(
                    "I edit one picture at a time: send /edit INSTRUCTION with one photo."
                ),
            )
        image = await source.fetch()
        mime = image_mime(image)
        # The picture to edit goes in as much as the instruction does (where moderation
        # reads pictures, and it can: one the edit endpoint refuses is told as such below).
        pictures = [_data_url_part(image, mime)] if mime is not None else []
        await self.moderator.check_input(prompt, pictures=pictures)
        await sink.typing()
        model = self.settings.image_model
        # The endpoint may refuse the picture itself (its size, its colour mode, ...).
        with _refused_input_says(UNUSABLE_IMAGE):
            picture = await self._picture(
                msg,
                model,
                self.client.edit_image(
                    model=model,
                    image=image,
                    filename=source.filename or "image.png",
                    prompt=prompt,
                    size=self.settings.image_size,
                    quality=self.settings.image_quality,
                ),
            )
        await sink.send(Reply(text=prompt, image=picture.data, image_name="edited.png"))

    async def _picture(
        self, msg: IncomingMessage, model: str, asking: Awaitable[Picture]
    ) -> Picture:
        """The picture `asking` makes (or edits), with what it cost recorded: also when it
        was sent but not answered (NotAnswered: the endpoint bills it all the same)."""
        try:
            with self.metrics.model_call("image", model):
                picture = await asking
        except NotAnswered:
            await self._record_unanswered_picture(msg, model)
            raise
        await self._record_usage(
            msg, model, "image", usage=picture.usage, images=1, picture=picture
        )
        return picture

    # -- usage ----------------------------------------------------------------------------
    async def _record_unanswered_picture(self, msg: IncomingMessage, model: str) -> None:
        """Record a picture asked for but not answered (NotAnswered): the endpoint may have
        made it, and bills it. Estimated as the budgets do: one picture of the configured
        size and quality (its output tokens, for a model priced by tokens)."""
        size, quality = self.settings.image_size, self.settings.image_quality
        usage = Usage(prompt_tokens=0, completion_tokens=image_output_tokens(size, quality))
        await self._record_unanswered(msg, model, "image", usage=usage, images=1)

    async def _record_unanswered(
        self,
        msg: IncomingMessage,
        model: str,
        kind: str,
        *,
        usage: Usage | None = None,
        audio_seconds: float = 0.0,
        images: int = 0,
    ) -> None:
        """Record, at its estimate, a model call sent but not answered (or answered with
        nothing, or dropped to be made again). The person is then told the model's error
        (or gets the answer made again): a failed write (the database locked or down that
        moment) must not replace that, so it is logged for the operator, not raised."""
        try:
            await self._record_usage(
                msg, model, kind, usage=usage, audio_seconds=audio_seconds, images=images
            )
        except Exception as err:
            log.error(
                "could not record the cost of a model call sent but not answered (%s, %s: "
                "%s): /usage and the budgets leave it out",
                kind,
                model,
                type(err).__name__,
                exc_info=True,
                extra={"chat": msg.chat.key, "model": model},
            )

    async def _record_usage(
        self,
        msg: IncomingMessage,
        model: str,
        kind: str,
        *,
        usage: Usage | None = None,
        audio_tokens: int = 0,
        audio_seconds: float = 0.0,
        images: int = 0,
        picture: Picture | None = None,
    ) -> None:
        await self.store.add_usage(
            **self._usage_row(
                msg,
                model,
                kind,
                usage=usage,
                audio_tokens=audio_tokens,
                audio_seconds=audio_seconds,
                images=images,
                picture=picture,
            )
        )

    def _usage_row(
        self,
        msg: IncomingMessage,
        model: str,
        kind: str,
        *,
        usage: Usage | None = None,
        audio_tokens: int = 0,
        audio_seconds: float = 0.0,
        images: int = 0,
        picture: Picture | None = None,
    ) -> dict[str, Any]:
        """The usage row of one model call, priced (and counted in the metrics). A picture
        is priced at the quality and size the endpoint says it made ("auto" chose one), and
        its input tokens (the prompt's text, an edit's picture) at their own prices."""
        cost = self.policy.cost(
            model,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cached_tokens=usage.cached_tokens if usage else 0,
            audio_tokens=audio_tokens,
            audio_seconds=audio_seconds,
            images=images,
            image_quality=picture.quality if picture else None,
            image_size=picture.size if picture else None,
            image_tokens=picture.image_tokens if picture else 0,
        )
        self.metrics.usage(msg.chat.platform, model, usage, cost_usd=cost)
        return {
            "platform": msg.chat.platform,
            "chat_key": msg.chat.key,
            "user_id": msg.sender.id,
            "model": model,
            "kind": kind,
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "completion_tokens": usage.completion_tokens if usage else 0,
            "cached_tokens": usage.cached_tokens if usage else 0,
            "audio_seconds": audio_seconds,
            "images": images,
            "cost_usd": cost,
        }


@contextmanager
def _refused_input_says(user_message: str) -> Iterator[None]:
    """An input the endpoint refused without saying why for the person (a plain BadInput) is
    explained with `user_message`; refusals that already say something pass unchanged."""
    try:
        yield
    except BadInput as err:
        if err.user_message != BadInput.user_message:
            raise
        raise BadInput(str(err), user_message=user_message) from err


def _estimated(answer: _Answer, counter: TokenCounter, completion_tokens: int) -> Usage:
    """The usage of a request the server did not report: the text of the messages sent,
    counted with the model's tokenizer, and `completion_tokens`."""
    return Usage(
        prompt_tokens=sum(counter.count(str(m.get("content", ""))) for m in answer.sent),
        completion_tokens=completion_tokens,
    )


def _data_url_part(data: bytes, mime: str) -> dict[str, Any]:
    """A picture as the image_url part chat models and omni-moderation take."""
    b64 = base64.b64encode(data).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{b64}"}}


def _model_list(models: list[str], current: str | None = None) -> str:
    """Model names one a line (the chat's own starred), at most MODEL_LIST_LIMIT: a catalogue
    of hundreds (OpenRouter's) would fill the chat; the rest are found by a word."""
    lines = [f"{'* ' if m == current else '  '}{m}" for m in models[:MODEL_LIST_LIMIT]]
    more = len(models) - MODEL_LIST_LIMIT
    if more > 0:
        lines.append(f"  ... and {more} more: /model WORD lists those whose name has WORD.")
    return "\n".join(lines)


def _event_id() -> int | None:
    job = _current.get()
    return job.event_id if job else None


async def _take_while_fits(costs: AsyncIterator[int], budget: int) -> AsyncIterator[int]:
    """Pull costs until their sum passes `budget` (one past, so fit_newest sees the edge)."""
    total = 0
    async for cost in costs:
        yield cost
        total += cost
        if total > budget:
            return
