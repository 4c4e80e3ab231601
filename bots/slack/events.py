"""Pure conversion of Slack events into neutral incoming messages."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from core.budgets import SCOPES
from core.commands import COMMANDS
from core.types import Attachment, AttachmentKind, ChatRef, Fetch, IncomingMessage, Sender

PLATFORM = "slack"

# Subtypes that are still a person talking; everything else (edits, joins, bots) is not.
USER_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})
AUDIO_FILETYPES = frozenset({"m4a", "mp3", "mp4", "ogg", "oga", "wav", "webm", "flac", "aac"})

# Words that act as commands when they open the message (after the mention). A message
# starting with "/" never reaches a bot in Slack (the composer takes it for a slash
# command), so every core command has a word form; `command_words` shows people those.
_EXACT_COMMANDS = frozenset({"help", "reset", "retry", "usage", "forget", "translate", "budget"})
# Commands that take free text: "image: a red fox", "edit: make the sky pink".
_PROMPT_PREFIX = re.compile(r"^(image|edit)\s*:\s*(.*)$", re.IGNORECASE | re.DOTALL)
# An admin's "budget user slack:U1 day 5", "budget chat here month 20", "budget global day 0":
# what the core's /budget sets comes first.
_BUDGET_TARGETS = frozenset(SCOPES)
_CORE_COMMAND = re.compile(
    r"(?<![\w/<`])/(" + "|".join(sorted(COMMANDS, key=len, reverse=True)) + r")\b"
)

FetchFactory = Callable[[Mapping[str, Any]], Fetch]


def mention_pattern(bot_user_id: str) -> re.Pattern[str]:
    """Matches `<@BOTID>` and `<@BOTID|name>` mentions of the bot."""
    return re.compile(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>")


def is_direct(event: Mapping[str, Any]) -> bool:
    """True for a message in a DM (app_mention events carry no channel_type)."""
    return event.get("channel_type") == "im" or str(event.get("channel", "")).startswith("D")


def is_person_message(event: Mapping[str, Any], bot_user_id: str, bot_id: str | None) -> bool:
    """A message (or mention) written by a person, not a bot, an edit or a join notice."""
    if event.get("type") not in ("message", "app_mention"):
        return False
    if event.get("subtype") not in USER_SUBTYPES:
        return False
    if event.get("bot_id") or event.get("bot_profile"):
        return False
    user = event.get("user")
    return bool(user) and user != bot_user_id and (bot_id is None or event.get("bot_id") != bot_id)


def mentions_bot(event: Mapping[str, Any], bot_user_id: str) -> bool:
    """True when the event @-mentions the bot."""
    if event.get("type") == "app_mention":
        return True
    return mention_pattern(bot_user_id).search(str(event.get("text", ""))) is not None


def thread_to_check(
    event: Mapping[str, Any], bot_user_id: str, bot_id: str | None
) -> tuple[str, str] | None:
    """(channel, thread_ts) when answering depends on whether the bot is in that thread."""
    if not is_person_message(event, bot_user_id, bot_id) or is_direct(event):
        return None
    thread_ts = event.get("thread_ts")
    if not thread_ts or mentions_bot(event, bot_user_id):
        return None
    return str(event["channel"]), str(thread_ts)


def translate_commands(text: str, *, with_image: bool = False) -> str:
    """Slack has no bot commands in messages: "reset", "model x", "image: a cat" become "/…".

    Only forms ordinary talk does not take: one command word alone, `image:` with a colon
    (`edit:` too, on a message that carries an image: "Edit: I meant Tuesday" is talk),
    `model`/`voicemode` with one word, `system` with anything, `usage` with one
    PLATFORM:ID, and `budget` followed by what it sets (user, chat, global).
    """
    stripped = text.strip()
    if stripped.startswith("/"):
        return stripped
    prompt = _PROMPT_PREFIX.match(stripped)
    if prompt is not None and (with_image or prompt.group(1).lower() == "image"):
        return f"/{prompt.group(1).lower()} {prompt.group(2).strip()}".rstrip()
    words = stripped.split()
    if not words:
        return stripped
    head = words[0].lower().rstrip(":")
    rest = stripped[len(words[0]) :].strip()
    if head in _EXACT_COMMANDS and len(words) == 1:
        return f"/{head}"
    if head in ("model", "voicemode") and len(words) <= 2:
        return f"/{head} {rest}".rstrip()
    if head == "usage" and len(words) == 2 and ":" in words[1]:
        return f"/usage {rest}"
    if head == "budget" and words[1].lower() in _BUDGET_TARGETS:
        return f"/budget {rest}"
    if head == "system":
        return f"/system {rest}".rstrip()
    return stripped


def command_words(text: str) -> str:
    """The core's notices name commands as "/reset", "/image PROMPT": in Slack, where
    people type them as words, they read `reset`, `image:` PROMPT instead."""

    def word(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"`{name}:`" if name in ("image", "edit") else f"`{name}`"

    return _CORE_COMMAND.sub(word, text)


def attachment_kind(file: Mapping[str, Any]) -> AttachmentKind:
    """AUDIO for audio/video files and clips, IMAGE for images, else FILE."""
    mime = str(file.get("mimetype", "")).lower()
    if mime.startswith(("audio/", "video/")) or file.get("subtype") == "slack_audio":
        return AttachmentKind.AUDIO
    if str(file.get("filetype", "")).lower() in AUDIO_FILETYPES and not mime.startswith("image/"):
        return AttachmentKind.AUDIO
    if mime.startswith("image/"):
        return AttachmentKind.IMAGE
    return AttachmentKind.FILE


def to_attachment(file: Mapping[str, Any], fetch_for: FetchFactory) -> Attachment:
    """A Slack file object as a neutral attachment whose `fetch` downloads it with the token."""
    kind = attachment_kind(file)
    name = str(file.get("name") or "")
    if not name:
        name = f"{file.get('id', 'file')}.{file.get('filetype') or 'bin'}"
    duration_ms = file.get("duration_ms")
    size = file.get("size")
    return Attachment(
        kind=kind,
        mime=str(file.get("mimetype") or "application/octet-stream"),
        size=int(size) if isinstance(size, int | float) else None,
        filename=name,
        fetch=fetch_for(file),
        duration_seconds=duration_ms / 1000 if isinstance(duration_ms, int | float) else None,
        # The file id lets a restarted process fetch it again (files.info, then download).
        ref=str(file["id"]) if file.get("id") else None,
    )


def to_incoming(
    event: Mapping[str, Any],
    *,
    team_id: str,
    bot_user_id: str,
    bot_id: str | None = None,
    in_bot_thread: bool = False,
    fetch_for: FetchFactory,
) -> IncomingMessage | None:
    """The neutral message for a Slack event, or None when the bot should not answer it.

    A channel mention starts (or continues) a conversation in the thread under it; replies in
    a thread the bot is part of (`in_bot_thread`) need no mention; DMs are always answered,
    a DM thread being its own conversation. The event key is channel + ts, so one message
    delivered as both `app_mention` and `message`, or retried, is answered once.
    """
    if not is_person_message(event, bot_user_id, bot_id):
        return None
    channel = str(event.get("channel", ""))
    ts = str(event.get("ts", ""))
    if not channel or not ts:
        return None
    direct = is_direct(event)
    thread_ts = event.get("thread_ts")
    mentioned = mentions_bot(event, bot_user_id)
    files = [f for f in event.get("files") or () if isinstance(f, Mapping)]
    attachments = tuple(to_attachment(f, fetch_for) for f in files)
    addressed = direct or mentioned or bool(thread_ts and in_bot_thread)
    heard_audio = any(a.kind is AttachmentKind.AUDIO for a in attachments)
    if not addressed and not heard_audio:
        return None
    # An unaddressed audio clip still goes to the core: the channel's /voicemode decides.
    text = mention_pattern(bot_user_id).sub("", str(event.get("text", ""))).strip()
    with_image = any(a.kind is AttachmentKind.IMAGE for a in attachments)
    text = translate_commands(text, with_image=with_image)
    # The installing workspace, not event["team"]: in shared channels that is the sender's team.
    team = team_id
    thread_id = str(thread_ts) if thread_ts else (None if direct else ts)
    user = str(event["user"])
    return IncomingMessage(
        chat=ChatRef(PLATFORM, f"{team}:{channel}", thread_id),
        sender=Sender(id=user, name=user),
        event_key=f"{PLATFORM}:{channel}:{ts}",
        text=text,
        attachments=attachments,
        is_direct=direct,
        addressed_to_bot=addressed,
        platform_message_id=ts,
    )
