"""Telegram updates to neutral incoming messages: a pure translation, no I/O."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

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


def _media(message: Message, fetcher: FetchFactory) -> Attachment | None:
    """The one file a message carries that the core can use, if any."""
    if message.voice is not None:
        voice = message.voice
        return Attachment(
            kind=AttachmentKind.AUDIO,
            mime=voice.mime_type or "audio/ogg",
            size=voice.file_size,
            # Telegram stores voice notes as .oga; the core names them .ogg for transcription.
            filename=f"voice-{voice.file_unique_id}.oga",
            fetch=fetcher(voice.file_id, voice.file_size),
            ref=voice.file_id,
            duration_seconds=_seconds(voice),
        )
    if message.audio is not None:
        audio = message.audio
        return Attachment(
            kind=AttachmentKind.AUDIO,
            mime=audio.mime_type or "audio/mpeg",
            size=audio.file_size,
            filename=audio.file_name or f"audio-{audio.file_unique_id}.mp3",
            fetch=fetcher(audio.file_id, audio.file_size),
            ref=audio.file_id,
            duration_seconds=_seconds(audio),
        )
    if message.video_note is not None:
        note = message.video_note
        return Attachment(
            kind=AttachmentKind.AUDIO,
            mime="video/mp4",
            size=note.file_size,
            filename=f"video-note-{note.file_unique_id}.mp4",
            fetch=fetcher(note.file_id, note.file_size),
            ref=note.file_id,
            duration_seconds=_seconds(note),
        )
    if message.video is not None:
        video = message.video
        return Attachment(
            kind=AttachmentKind.AUDIO,
            mime=video.mime_type or "video/mp4",
            size=video.file_size,
            filename=video.file_name or f"video-{video.file_unique_id}.mp4",
            fetch=fetcher(video.file_id, video.file_size),
            ref=video.file_id,
            duration_seconds=_seconds(video),
        )
    if message.photo:
        largest = max(message.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        return Attachment(
            kind=AttachmentKind.IMAGE,
            mime="image/jpeg",
            size=largest.file_size,
            filename=f"photo-{largest.file_unique_id}.jpg",
            fetch=fetcher(largest.file_id, largest.file_size),
            ref=largest.file_id,
        )
    document = message.document
    if document is not None and document.mime_type:
        mime = document.mime_type
        if mime.startswith("image/"):
            kind = AttachmentKind.IMAGE
        elif mime.startswith(("audio/", "video/")):
            kind = AttachmentKind.AUDIO
        else:
            kind = AttachmentKind.FILE
        return Attachment(
            kind=kind,
            mime=mime,
            size=document.file_size,
            filename=document.file_name or f"file-{document.file_unique_id}",
            fetch=fetcher(document.file_id, document.file_size),
            ref=document.file_id,
        )
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
    if message is None:
        return None
    user = message.from_user
    if user is None or user.is_bot:
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
        sender=Sender(
            id=str(user.id),
            name=user.username or user.full_name,
            is_bot=user.is_bot,
        ),
        event_key=f"{PLATFORM}:{chat.id}:{message.message_id}",
        text=text,
        attachments=tuple(attachments),
        is_direct=private,
        addressed_to_bot=addressed,
        platform_message_id=str(message.message_id),
        reply_to_text=reply_to_text,
    )
