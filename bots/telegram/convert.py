"""Telegram updates to neutral incoming messages: a pure translation, no I/O."""

from __future__ import annotations

import mimetypes
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from telegram import (
    Message,
    MessageEntity,
    MessageOrigin,
    MessageOriginChannel,
    MessageOriginChat,
    MessageOriginHiddenUser,
    MessageOriginUser,
    Update,
)

from bots.telegram.formatting import utf16_len
from core.commands import KNOWN
from core.errors import BadInput
from core.service import AUDIO_MIME_EXTENSIONS
from core.types import (
    NEXT_MESSAGE,
    Attachment,
    AttachmentKind,
    ChatRef,
    Fetch,
    IncomingMessage,
    Sender,
    quote_lines,
)

PLATFORM = "telegram"
# getFile refuses files above this size, so such files can never be downloaded by a bot.
DOWNLOAD_LIMIT_BYTES = 20 * 1024 * 1024

# A message holds at most 4,096 UTF-16 units of text: a client sending a longer paste cuts it
# into several messages, sent one right after the other, each but the last close to the
# limit (a little under: clients cut at a newline or a space before it). A text at least
# this long may be such a part, and says which message would continue it (the core decides
# whether one does). Below 4,096 by the longest line or word a cut may step back over (a
# log's or minified code's line runs to hundreds of units); few messages people type are
# this long, and for those the mark costs one short wait (the core's quiet window).
CUT_TEXT_UTF16 = 3500

# file_id, declared size -> an async download callable (the adapter binds it to its Bot)
FetchFactory = Callable[[str, int | None], Fetch]


@dataclass(frozen=True, slots=True)
class BotIdentity:
    """Who the bot is, as learnt from getMe."""

    id: int
    username: str
    # Privacy mode off (BotFather /setprivacy): groups deliver every message, not only
    # commands, mentions and replies.
    reads_all_group_messages: bool = False


def _file(
    media: Any,
    fetcher: FetchFactory,
    kind: AttachmentKind,
    mime: str,
    filename: str,
    *,
    timed: bool = True,
) -> Attachment:
    """An attachment for a Telegram file object; its file_id lets a restart fetch it again."""
    return Attachment(
        kind=kind,
        mime=mime,
        size=media.file_size,
        filename=filename,
        fetch=fetcher(media.file_id, media.file_size),
        ref=media.file_id,
        duration_seconds=_seconds(media) if timed else None,
    )


def _named(prefix: str, unique_id: str, mime: str) -> str:
    """A name for a file Telegram gave none: its extension from the MIME type, if known."""
    ext = AUDIO_MIME_EXTENSIONS.get(mime.split(";")[0].strip().lower())
    return f"{prefix}-{unique_id}.{ext}" if ext else f"{prefix}-{unique_id}"


# What a document's MIME type is when the sender's client could not tell (or named only the
# container): its file name's extension says more.
_GENERIC_MIME_TYPES = frozenset(
    {
        "application/octet-stream",
        "binary/octet-stream",
        "application/binary",
        "application/x-binary",
        "application/unknown",
        "application/ogg",
    }
)


async def _nothing_to_fetch() -> bytes:
    # The core fetches no FILE attachment; this stands in for the file such content lacks.
    raise BadInput("no file to download")


def _media(message: Message, fetcher: FetchFactory) -> Attachment | None:
    """The file a message carries for the core (a voice note, audio, a video's sound, a
    picture, a document), if any."""
    audio = AttachmentKind.AUDIO
    if (voice := message.voice) is not None:
        # Telegram stores voice notes as .oga; the core names them .ogg for transcription.
        mime = voice.mime_type or "audio/ogg"
        return _file(voice, fetcher, audio, mime, f"voice-{voice.file_unique_id}.oga")
    if (clip := message.audio) is not None:
        mime = clip.mime_type or "audio/mpeg"
        name = clip.file_name or _named("audio", clip.file_unique_id, mime)
        return _file(clip, fetcher, audio, mime, name)
    if (note := message.video_note) is not None:
        name = f"video-note-{note.file_unique_id}.mp4"
        return _file(note, fetcher, audio, "video/mp4", name)
    if (video := message.video) is not None:
        # Sent to the bot, a video's sound track is transcribed (the endpoint takes MP4).
        mime = video.mime_type or "video/mp4"
        name = video.file_name or _named("video", video.file_unique_id, mime)
        return _file(video, fetcher, audio, mime, name)
    if message.photo:
        largest = max(message.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        name = f"photo-{largest.file_unique_id}.jpg"
        return _file(largest, fetcher, AttachmentKind.IMAGE, "image/jpeg", name, timed=False)
    # A GIF comes as `animation` with a copy in `document` (for old clients): not a document.
    if (document := message.document) is not None and message.animation is None:
        guessed = mimetypes.guess_type(document.file_name or "", strict=False)[0]
        mime = document.mime_type or guessed or "application/octet-stream"
        if mime.split(";")[0].strip().lower() in _GENERIC_MIME_TYPES:
            # A type that says nothing of the content (clients send an .m4a or .mp3 as
            # application/octet-stream, an .ogg as application/ogg): the name says more.
            mime = guessed or mime
        if mime.startswith("image/"):
            kind = AttachmentKind.IMAGE
        elif mime.startswith(("audio/", "video/")):
            kind = AttachmentKind.AUDIO
        else:
            kind = AttachmentKind.FILE
        name = document.file_name or _named("file", document.file_unique_id, mime)
        return _file(document, fetcher, kind, mime, name, timed=False)
    return None


# What people send that the core cannot read and that is no document: a GIF (a silent MP4),
# a sticker, a location, a poll... Each comes to the core as an attachment of kind FILE,
# named for what it is and without an extension (no document to read), so whoever addresses
# the bot with one is told what it reads, instead of "Your message was empty." (or, for a
# GIF, getting it transcribed).
_UNREADABLE_CONTENT = {
    "animation": "the GIF",
    "sticker": "the sticker",
    "location": "the location",
    "venue": "the place",
    "contact": "the contact",
    "poll": "the poll",
    "dice": "the dice",
    "game": "the game",
    "story": "the story",
    "invoice": "the invoice",
    "paid_media": "the paid media",
    "live_photo": "the live photo",
    "giveaway": "the giveaway",
    "giveaway_winners": "the giveaway",
    "checklist": "the checklist",
}


def _unreadable(message: Message, fetcher: FetchFactory) -> Attachment | None:
    """A FILE attachment for content the core cannot use (a GIF, a sticker, a location...)."""
    for field, name in _UNREADABLE_CONTENT.items():
        content = getattr(message, field, None)
        if not content:
            continue
        mime = getattr(content, "mime_type", None) or f"application/x-telegram-{field}"
        if getattr(content, "file_id", None):  # a GIF, a sticker: a real file, kept fetchable
            return _file(content, fetcher, AttachmentKind.FILE, mime, name, timed=False)
        return Attachment(
            kind=AttachmentKind.FILE, mime=mime, size=None, filename=name, fetch=_nothing_to_fetch
        )
    return None


def _heard(message: Message, media: Attachment | None) -> bool:
    """Whether a message is something said aloud: a voice note, an audio file (also one sent
    as a document) or a video note. Videos and GIFs are not."""
    if media is None or media.kind is not AttachmentKind.AUDIO:
        return False
    if message.voice or message.audio or message.video_note:
        return True
    return message.document is not None and media.mime.startswith("audio/")


def _seconds(media: object) -> float | None:
    """A media's duration in seconds (PTB 22 warns while it moves from int to timedelta)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        duration = getattr(media, "duration", None)
    if duration is None:
        return None
    total = getattr(duration, "total_seconds", None)
    if callable(total):
        return float(total())
    return float(duration) if isinstance(duration, int | float) else None


def _may_be_cut(message: Message) -> bool:
    """Whether `message` is text as long as a part a client cut a longer text into."""
    text = message.text
    return text is not None and utf16_len(text) >= CUT_TEXT_UTF16


def _continuation(message: Message) -> str:
    """Which message would carry the rest of `message`'s text (IncomingMessage.continuation_id).

    A supergroup (or channel) numbers its own messages one by one: the next one's id follows
    this one's. Private chats and basic groups share one sequence per account, the bot's
    (core.telegram.org/api/channel): any other chat's message, or the bot's own, may take the
    next id, so the rest is the chat's next message, sent within a second or two.
    """
    if message.chat.type in (message.chat.PRIVATE, message.chat.GROUP):
        return NEXT_MESSAGE
    return str(message.message_id + 1)


def _entity_text(text: str, entity: MessageEntity) -> str:
    # Entity offsets count UTF-16 units.
    encoded = text.encode("utf-16-le")
    return encoded[entity.offset * 2 : (entity.offset + entity.length) * 2].decode("utf-16-le")


def _mentions_bot(text: str, entities: tuple[MessageEntity, ...], bot: BotIdentity) -> bool:
    handle = "@" + bot.username.lower()
    for entity in entities:
        if entity.type == MessageEntity.MENTION and _entity_text(text, entity).lower() == handle:
            return True
        if (
            entity.type == MessageEntity.TEXT_MENTION
            and entity.user is not None
            and entity.user.id == bot.id
        ):
            return True
    return False


_COMMAND_HEAD = re.compile(r"^/([A-Za-z0-9_]{1,32})(?:@([A-Za-z0-9_]+))?(?=\s|$)")


def _strip_command_target(text: str, bot: BotIdentity, *, private: bool) -> tuple[str, bool, bool]:
    """(text with "/cmd@bot" as "/cmd", is a command for us, is aimed at another bot).

    In a group, a bare "/cmd" is ours only when it is one of the core's commands: Telegram
    gives every bot of the group the commands of all of them ("/roll" for a dice bot), and
    those are the members' chatter. "/cmd@ThisBot" is ours whatever the command.
    """
    m = _COMMAND_HEAD.match(text)
    if m is None:
        return text, False, False
    target = m.group(2)
    if target is not None and target.lower() != bot.username.lower():
        return text, False, True
    ours = private or target is not None or m.group(1).lower() in KNOWN
    return f"/{m.group(1)}" + text[m.end() :], ours, False


def _origin_name(origin: MessageOrigin) -> str:
    """Who wrote a forwarded message, as Telegram lets the bot know it."""
    if isinstance(origin, MessageOriginUser):
        user = origin.sender_user
        return user.full_name or user.username or "someone"
    if isinstance(origin, MessageOriginHiddenUser):
        return origin.sender_user_name or "someone"
    if isinstance(origin, MessageOriginChat):
        return origin.sender_chat.title or origin.sender_chat.username or "a chat"
    if isinstance(origin, MessageOriginChannel):
        return origin.chat.title or origin.chat.username or "a channel"
    return "someone"


def _strip_mention(text: str, bot: BotIdentity) -> str:
    """`text` without "@bot" (and its "," or ":"), every other space and line kept as sent:
    code the person pasted under the mention keeps its indentation.

    A mention that opens a line goes with the spaces after it (and its line, when nothing
    else is on it); one inside a line takes one neighbouring space with it.
    """
    mention = re.compile(rf"(?<!\w)@{re.escape(bot.username)}\b[,:]?", re.IGNORECASE)
    kept: list[str] = []
    done = 0
    for m in mention.finditer(text):
        start, end = m.start(), m.end()
        if start < done:
            continue
        line_start = text.rfind("\n", 0, start) + 1
        if not text[line_start:start].strip(" \t"):
            start = max(line_start, done)
            while end < len(text) and text[end] in " \t":
                end += 1
            if end < len(text) and text[end] == "\n" and (start == 0 or text[start - 1] == "\n"):
                end += 1  # the mention was the whole line: the line goes too
        elif end < len(text) and text[end] in " \t":
            end += 1
        elif text[start - 1] in " \t":
            start -= 1
        kept.append(text[done:start])
        done = end
    kept.append(text[done:])
    # Blank lines left at the start, and trailing spaces, go; the first line's indentation
    # (code pasted right under the mention) stays.
    return re.sub(r"\A(?:[ \t]*\n)+", "", "".join(kept)).rstrip()


def _replied_text(message: Message) -> str | None:
    """The words `message` answers, for the model to read quoted before it.

    The part the person quoted, when they picked one (also in a reply to a message of
    another chat, whose text Telegram sends only that way); else the whole message replied
    to. The bot's own messages too ("how many people live there?" under an older answer is
    about that one, which /reset may have taken out of the history); the core leaves out
    the chat's latest answer, already the history's last turn.
    """
    quote = message.quote
    if quote is not None and quote.text.strip():
        return quote.text
    replied = message.reply_to_message
    if replied is None:
        return None
    return replied.text or replied.caption or None


def to_incoming(
    update: Update,
    bot: BotIdentity,
    fetcher: FetchFactory,
    *,
    group_voice: bool = False,
) -> IncomingMessage | None:
    """The neutral message for an update, or None when the bot should not react to it.

    Private chats: every message. Groups: a mention by @username, a reply to the bot, or a
    command of ours (one of the core's, or "/cmd@ThisBot"; never one aimed at another bot);
    with `group_voice` (the transcript-only group setting) also every voice note, audio file
    or video note. Own and other bots' messages, and service messages (a pin, a new member,
    a topic created...), are ignored.
    """
    message = update.message
    if message is None or message.is_automatic_forward:  # a channel's post, copied in
        return None
    user = message.from_user
    # An anonymous group admin (or a channel posting in its group) writes as a chat: Telegram
    # names a placeholder bot as the sender, and the chat in `sender_chat`.
    as_chat = message.sender_chat
    if user is None or (user.is_bot and as_chat is None):
        return None
    chat = message.chat
    private = chat.type == chat.PRIVATE
    text = message.text or message.caption or ""
    own = _media(message, fetcher) or _unreadable(message, fetcher)
    if not text and own is None:
        return None  # a service message: nobody said anything
    # Entity offsets are into the text as sent, before "/cmd@bot" loses its "@bot".
    entities = message.entities or message.caption_entities or ()
    forwarded = message.forward_origin
    # Someone else's words passed on ask the bot nothing: not their "/reset", nor their
    # "@bot" (the forwarder may only be showing the others what was said).
    mentioned = forwarded is None and _mentions_bot(text, tuple(entities), bot)
    if forwarded is not None:
        is_command = other_bot = False
    else:
        text, is_command, other_bot = _strip_command_target(text, bot, private=private)
    if other_bot:
        return None
    replied = message.reply_to_message
    reply_to_bot = (
        replied is not None and replied.from_user is not None and replied.from_user.id == bot.id
    )
    addressed = private or is_command or mentioned or reply_to_bot
    # An album comes as one message per picture, the caption (and so the mention) on one
    # of them: every part goes to the core, which answers the album once, as one message.
    album = message.media_group_id
    # Likewise a long paste a client cut (see CUT_TEXT_UTF16): the mention is in its first
    # part only, so a group's text goes to the core, which keeps it only as the rest of an
    # addressed part. Only a group that shows the bot every message (privacy mode off) can
    # bring the rest; in privacy mode it never comes, and the first part is answered alone.
    chatter = bot.reads_all_group_messages and message.text is not None
    if (
        not addressed
        and album is None
        and not chatter
        and not (group_voice and _heard(message, own))
    ):
        return None
    if mentioned:
        text = _strip_mention(text, bot)
    if forwarded is not None and text:
        # Someone else's words passed on: quoted under who wrote them, never read as the
        # sender's own.
        text = f"Forwarded from {_origin_name(forwarded)}:\n{quote_lines(text)}"
    # A video in an album nobody addressed (it comes only to be joined with the album's
    # other parts): its sound is not something said to the bot, so a group that wants
    # transcripts of what is said does not get one of it.
    heard = group_voice and _heard(message, own)
    if not addressed and own is not None and own.kind is AttachmentKind.AUDIO and not heard:
        own = None
    attachments: list[Attachment] = [own] if own is not None else []
    if not attachments and replied is not None and addressed:
        # "/translate" on a voice note, "/edit" on a photo, a question about a picture. (Not
        # for chatter: "haha so true" under a voice note would have it heard again.)
        quoted = _media(replied, fetcher)
        if quoted is not None:
            attachments.append(quoted)
    reply_to_text = _replied_text(message)
    thread_id = str(message.message_thread_id) if message.is_topic_message else None
    return IncomingMessage(
        chat=ChatRef(PLATFORM, str(chat.id), thread_id),
        sender=(
            Sender(id=str(as_chat.id), name=as_chat.title or as_chat.username or "anonymous")
            if as_chat is not None
            else Sender(id=str(user.id), name=user.username or user.full_name, is_bot=user.is_bot)
        ),
        event_key=f"{PLATFORM}:{chat.id}:{message.message_id}",
        text=text,
        attachments=tuple(attachments),
        is_direct=private,
        addressed_to_bot=addressed,
        platform_message_id=str(message.message_id),
        reply_to_text=reply_to_text,
        part_of=f"album:{album}" if album else None,
        continuation_id=_continuation(message) if _may_be_cut(message) else None,
        sent_at=message.date.timestamp(),
        forwarded_from=_origin_name(forwarded) if forwarded is not None else None,
    )


def group_upgrade(update: Update) -> tuple[str, str] | None:
    """(old chat id, new chat id) when `update` says a group became a supergroup (Telegram
    gives it a new id, and says so in both chats), else None."""
    message = update.message
    if message is None:
        return None
    if message.migrate_from_chat_id:
        return str(message.migrate_from_chat_id), str(message.chat.id)
    if message.migrate_to_chat_id:
        return str(message.chat.id), str(message.migrate_to_chat_id)
    return None
