"""Telegram updates to neutral incoming messages: a pure translation, no I/O."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from telegram import Message, MessageEntity, Update

from core.types import Attachment, AttachmentKind, ChatRef, Fetch, IncomingMessage, Sender

PLATFORM = "telegram"
# getFile refuses files above this size, so such files can never be downloaded by a bot.
DOWNLOAD_LIMIT_BYTES = 20 * 1024 * 1024

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


def _media(message: Message, fetcher: FetchFactory) -> Attachment | None:
    """The one file a message carries that the core can use, if any."""
    audio = AttachmentKind.AUDIO
    if (voice := message.voice) is not None:
        # Telegram stores voice notes as .oga; the core names them .ogg for transcription.
        mime = voice.mime_type or "audio/ogg"
        return _file(voice, fetcher, audio, mime, f"voice-{voice.file_unique_id}.oga")
    if (clip := message.audio) is not None:
        name = clip.file_name or f"audio-{clip.file_unique_id}.mp3"
        return _file(clip, fetcher, audio, clip.mime_type or "audio/mpeg", name)
    if (note := message.video_note) is not None:
        name = f"video-note-{note.file_unique_id}.mp4"
        return _file(note, fetcher, audio, "video/mp4", name)
    if (video := message.video) is not None:
        name = video.file_name or f"video-{video.file_unique_id}.mp4"
        return _file(video, fetcher, audio, video.mime_type or "video/mp4", name)
    if message.photo:
        largest = max(message.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        name = f"photo-{largest.file_unique_id}.jpg"
        return _file(largest, fetcher, AttachmentKind.IMAGE, "image/jpeg", name, timed=False)
    document = message.document
    if document is not None and document.mime_type:
        mime = document.mime_type
        if mime.startswith("image/"):
            kind = AttachmentKind.IMAGE
        elif mime.startswith(("audio/", "video/")):
            kind = AttachmentKind.AUDIO
        else:
            kind = AttachmentKind.FILE
        name = document.file_name or f"file-{document.file_unique_id}"
        return _file(document, fetcher, kind, mime, name, timed=False)
    return None


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


def _strip_command_target(text: str, bot: BotIdentity) -> tuple[str, bool, bool]:
    """(text with "/cmd@bot" as "/cmd", is a command, is aimed at another bot)."""
    m = _COMMAND_HEAD.match(text)
    if m is None:
        return text, False, False
    target = m.group(2)
    if target is not None and target.lower() != bot.username.lower():
        return text, True, True
    return f"/{m.group(1)}" + text[m.end() :], True, False


def _strip_mention(text: str, bot: BotIdentity) -> str:
    stripped = re.sub(rf"(?<!\w)@{re.escape(bot.username)}\b[,:]?", "", text, flags=re.IGNORECASE)
    return re.sub(r"[ \t]{2,}", " ", stripped).strip()


def to_incoming(
    update: Update,
    bot: BotIdentity,
    fetcher: FetchFactory,
    *,
    group_voice: bool = False,
) -> IncomingMessage | None:
    """The neutral message for an update, or None when the bot should not react to it.

    Private chats: every message. Groups: a mention by @username, a reply to the bot, or a
    command (not one aimed at another bot); with `group_voice` (the transcript-only group
    setting) also every voice note or audio file. Own and other bots' messages are ignored.
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
    entities = message.entities or message.caption_entities or ()
    text, is_command, other_bot = _strip_command_target(text, bot)
    if other_bot:
        return None
    replied = message.reply_to_message
    reply_to_bot = (
        replied is not None and replied.from_user is not None and replied.from_user.id == bot.id
    )
    mentioned = _mentions_bot(text, tuple(entities), bot)
    own = _media(message, fetcher)
    addressed = private or is_command or mentioned or reply_to_bot
    if not addressed:
        heard_voice = own is not None and own.kind is AttachmentKind.AUDIO
        if not (group_voice and heard_voice):
            return None
    if mentioned:
        text = _strip_mention(text, bot)
    attachments: list[Attachment] = [own] if own is not None else []
    if not attachments and replied is not None:
        # "/translate" on a voice note, "/edit" on a photo, a question about a picture.
        quoted = _media(replied, fetcher)
        if quoted is not None:
            attachments.append(quoted)
    reply_to_text = None
    if replied is not None:
        reply_to_text = replied.text or replied.caption or None
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
    )
