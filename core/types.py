"""Neutral message types shared by the core and every platform adapter."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

# Platforms whose chats have no threads: there a ":" in a chat key belongs to the chat's own
# name (a console chat may be called "a:b"), not to a thread of it.
THREADLESS_PLATFORMS = frozenset({"console"})
# The platforms relaybot ships adapters for, as messages name them.
PLATFORMS = ("console", "slack", "telegram")
_THREAD_ID = re.compile(r"\d+(?:\.\d+)?")


def quote_lines(text: str) -> str:
    """`text` as a Markdown quote, line by line: how the model reads words that are not the
    sender's own (a replied-to message, a forward), whichever platform brought them."""
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines())


@dataclass(frozen=True, slots=True)
class ChatRef:
    """Where a conversation lives: platform, chat and (optional) thread or topic."""

    platform: str
    chat_id: str
    thread_id: str | None = None

    @property
    def key(self) -> str:
        """A stable string naming this conversation in the database."""
        base = f"{self.platform}:{self.chat_id}"
        return f"{base}:{self.thread_id}" if self.thread_id else base

    @staticmethod
    def platform_of(key: str) -> str:
        """The platform a chat `key` (as `key` builds it) belongs to."""
        return key.split(":", 1)[0]

    @property
    def parent_key(self) -> str | None:
        """The key of the channel or group a thread belongs to (None when not a thread)."""
        return f"{self.platform}:{self.chat_id}" if self.thread_id else None

    @staticmethod
    def parent_of(key: str) -> str | None:
        """`parent_key` read back from a chat `key` (as `key` builds it).

        A chat id may hold ":" itself (Slack's "TEAM:CHANNEL"), so a thread is told by its
        id, a number on every threaded platform (a Telegram topic's id, a Slack message's
        timestamp "1700000000.000100"), which the last part of a chat id never is.
        """
        platform, _, rest = key.partition(":")
        if platform in THREADLESS_PLATFORMS:
            return None
        chat_id, sep, last = rest.rpartition(":")
        if sep and chat_id and _THREAD_ID.fullmatch(last):
            return f"{platform}:{chat_id}"
        return None


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent a message."""

    id: str
    name: str = ""
    is_bot: bool = False


class AttachmentKind(StrEnum):
    """What an attachment holds, as far as the core cares."""

    AUDIO = "audio"
    IMAGE = "image"
    FILE = "file"


Fetch = Callable[[], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file the adapter can download on demand; the core calls `fetch` only when needed."""

    kind: AttachmentKind
    mime: str
    size: int | None
    filename: str
    fetch: Fetch
    duration_seconds: float | None = None
    # What the adapter needs to fetch the file again after a restart (a file id or URL).
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One platform event turned neutral; `event_key` is unique per platform delivery."""

    chat: ChatRef
    sender: Sender
    event_key: str
    text: str = ""
    attachments: tuple[Attachment, ...] = ()
    is_direct: bool = True
    addressed_to_bot: bool = True
    platform_message_id: str | None = None
    # Text of the message this one replies to (or the part of it the person quoted), the
    # bot's own answers too. The model reads it quoted before the person's words, unless it
    # is the chat's latest answer (the history's last turn already).
    reply_to_text: str | None = None
    # On a resumed message: the platform messages (their ids, as the adapter gave them to
    # `ConversationService.remember_reply`), in order, that already show part or all of the
    # answer from a run that died before storing it. The adapter's sink continues in them.
    reply_refs: tuple[str, ...] = ()
    # Set when the platform delivers one message as several events (a Telegram album: one
    # per picture, the caption on one of them), to the same value for each. The core answers
    # them once, as one message (`ConversationService`, "messages sent in parts").
    part_of: str | None = None
    # Set when the platform may have cut the sender's text off here (a client splits a paste
    # longer than a message may be into several, sent one right after the other): the
    # `platform_message_id` the rest would come as, the message that directly follows this
    # one. The core takes that message in when it is the chat's next, from the same sender
    # and plain text, and answers the whole once (`ConversationService`, "messages sent in
    # parts"); a long part of its own may be continued in turn. NEXT_MESSAGE where the
    # platform's ids do not say which message follows (they count across chats): the rest
    # is then the chat's next message if it was sent within CUT_PARTS_SECONDS (`sent_at`).
    continuation_id: str | None = None
    # When the platform says the message was sent (seconds since the epoch), if it says.
    sent_at: float | None = None
    # Set on a forwarded message: who wrote it first, as the platform names them. What it
    # carries is theirs, not the sender's: the adapter quotes its text under their name, and
    # the core does the same with what only it learns (a forwarded voice note's transcript).
    forwarded_from: str | None = None


class ReplyKind(StrEnum):
    """Why the core sends a reply, so sinks can format notices differently from answers."""

    ANSWER = "answer"
    NOTICE = "notice"
    ERROR = "error"
    TRANSCRIPT = "transcript"


# IncomingMessage.continuation_id of a text whose rest is the chat's next message, whatever
# its id, when sent within CUT_PARTS_SECONDS of it (a client sends a long paste's parts one
# right after the other; a platform may date messages to the whole second only).
NEXT_MESSAGE = "next"
CUT_PARTS_SECONDS = 2.0

# Reply.extras key: this chat was forgotten (/forget); a sink that stored files for it
# (the console's saved images) deletes them.
FORGOTTEN = "forgotten"
# Reply.extras key: this group now wants a transcript of every voice note (/voicemode
# transcript); a sink whose platform may hold back what is not addressed to the bot says so.
EVERY_VOICE_NOTE = "every_voice_note"


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete reply: text, an image, or both (the text then is the caption)."""

    text: str = ""
    kind: ReplyKind = ReplyKind.ANSWER
    image: bytes | None = None
    image_name: str = "image.png"
    extras: dict[str, str] = field(default_factory=dict)


IMAGE_MARK = "[image]"  # ends a stored turn that came with pictures (they are not kept)


def without_image_mark(content: str) -> tuple[str, bool]:
    """A stored user turn's own words, and whether it came with pictures."""
    if content == IMAGE_MARK or content.endswith("\n" + IMAGE_MARK):
        return content[: -len(IMAGE_MARK)].rstrip("\n"), True
    return content, False
