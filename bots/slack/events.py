"""Pure conversion of Slack events into neutral incoming messages."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

from core.budgets import SCOPES
from core.commands import COMMANDS
from core.types import (
    Attachment,
    AttachmentKind,
    ChatRef,
    Fetch,
    IncomingMessage,
    Sender,
    quote_lines,
)

PLATFORM = "slack"

# Subtypes that are still a person talking; everything else (edits, joins, bots) is not.
USER_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})
AUDIO_FILETYPES = frozenset({"m4a", "mp3", "mp4", "ogg", "oga", "wav", "webm", "flac", "aac"})
# Those that hold sound alone (mp4 and webm are usually videos).
_AUDIO_ONLY_FILETYPES = AUDIO_FILETYPES - {"mp4", "webm"}

# Words that act as commands when they open the message (after the mention). A message
# starting with "/" never reaches a bot in Slack (the composer takes it for a slash
# command), so every core command has a word form; `command_words` shows people those.
_EXACT_COMMANDS = frozenset(
    {
        "help",
        "reset",
        "retry",
        "usage",
        "forget",
        "translate",
        "budget",
        "system",
        "model",
        "voicemode",
    }
)
# Commands whose argument follows a colon: "image: a red fox", "edit: make the sky pink",
# "system: You are terse.", "model: gpt-4o".
_COLON_COMMANDS = ("image", "edit", "system", "model")
_COLON_PREFIX = re.compile(
    r"^(" + "|".join(_COLON_COMMANDS) + r")\s*:\s*(.*)$", re.IGNORECASE | re.DOTALL
)
# A model id as people type one after `model` with no colon: gpt-4o, o3, llama3.1:8b.
_MODEL_ID = re.compile(r"^(?=.*[\d\-.:/_])[^\s?!]*[^\s?!.,]$")
# An admin's "budget user slack:U1 day 5", "budget chat here month 20", "budget global day 0":
# what the core's /budget sets comes first.
_BUDGET_TARGETS = frozenset(SCOPES)
_CORE_COMMAND = re.compile(
    r"(?<![\w/<`])/(" + "|".join(sorted(COMMANDS, key=len, reverse=True)) + r")\b"
)
# What follows "/system" or "/model" in the core's notices when they name the argument: a
# placeholder (TEXT, NAME, WORD) or "default". Typed in Slack, those need the colon.
_NAMED_ARGUMENT = re.compile(r" (?:[A-Z][A-Z_|]*\b|default\b)")
# Slack's markup in message text (docs.slack.dev "Formatting text for app surfaces"): every
# literal <, > and & arrives as &lt; &gt; &amp;, so each <...> is one of these.
_MARKUP = re.compile(r"<([^<>]*)>")
_USER_MENTION = re.compile(r"<@([A-Z0-9]+)(?:\|[^<>]*)?>")
_SPECIAL_MENTIONS = frozenset({"here", "channel", "everyone"})

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
    if event.get("edited"):
        # Slack sends a mention's edit as a new app_mention (its ts the original's, an
        # `edited` field): answered again once the original's event row is gone (/forget,
        # retention). Edits are never answered, as on Telegram.
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
    """Slack has no bot commands in messages: "reset", "model: x", "image: a cat" become "/…".

    Only forms ordinary talk does not take: one command word alone ("system" shows the
    system prompt, "model" lists the models); a command and a colon before its argument:
    `system: TEXT`, `model: NAME`, `image: PROMPT` on a message without a picture and
    `edit: INSTRUCTION` on one with a picture ("Image: what does this chart show?" on a
    chart, or "Edit: I meant Tuesday", is talk); `model NAME` when NAME looks like a model
    id (a digit or one of - . : / _ in it, no ? or ! at the end: "model gpt-4o", not
    "Model comparison?"); `voicemode` with one word; `usage` with one PLATFORM:ID; and
    `budget` followed by what it sets (user, chat, global). "System requirements for
    PostgreSQL 16?" is a question.
    """
    stripped = text.strip()
    if stripped.startswith("/"):
        return stripped
    colon = _COLON_PREFIX.match(stripped)
    if colon is not None:
        name, argument = colon.group(1).lower(), colon.group(2).strip()
        if name not in ("image", "edit") or (name == "edit") == with_image:
            return f"/{name} {argument}".rstrip()
    words = stripped.split()
    if not words:
        return stripped
    head = words[0].lower().rstrip(":")
    rest = stripped[len(words[0]) :].strip()
    if head in _EXACT_COMMANDS and len(words) == 1:
        return f"/{head}"
    if head == "model" and len(words) == 2 and _MODEL_ID.match(words[1]):
        return f"/model {rest}"
    if head == "voicemode" and len(words) == 2:
        return f"/voicemode {rest}"
    if head == "usage" and len(words) == 2 and ":" in words[1]:
        return f"/usage {rest}"
    if head == "budget" and words[1].lower() in _BUDGET_TARGETS:
        return f"/budget {rest}"
    return stripped


def asks_to_edit(text: str) -> bool:
    """Whether a message's text is the edit command (`edit: INSTRUCTION`, as
    `translate_commands` reads it on a message with a picture)."""
    colon = _COLON_PREFIX.match(text.strip())
    return colon is not None and colon.group(1).lower() == "edit"


def command_words(text: str) -> str:
    """The core's notices name commands as "/reset", "/image PROMPT", "/system TEXT": in
    Slack, where people type them as words, they read `reset`, `image:` PROMPT,
    `system:` TEXT instead (`system` and `model` alone, with no argument named after them,
    stay bare: they show the prompt and list the models)."""

    def word(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in ("image", "edit"):
            return f"`{name}:`"
        if name in ("system", "model") and _NAMED_ARGUMENT.match(text, match.end()):
            return f"`{name}:`"
        return f"`{name}`"

    return _CORE_COMMAND.sub(word, text)


def unlabelled_users(text: str, bot_user_id: str) -> list[str]:
    """The people `text` mentions by id alone (`<@U123>`; not the bot), whose names
    `plain_text` needs, in order, each once."""
    found: list[str] = []
    for match in _USER_MENTION.finditer(text):
        user = match.group(1)
        if "|" not in match.group(0) and user != bot_user_id and user not in found:
            found.append(user)
    return found


def mentioned_users(event: Mapping[str, Any], bot_user_id: str) -> list[str]:
    """The people an event mentions by id alone, in its text and in what it carries (a
    forward's or an alert's attachments, blocks: `<@U123>` in their words, a rich_text
    block's user elements), in order, each once: the names the model reads them by."""
    found = unlabelled_users(str(event.get("text", "")), bot_user_id)
    for text, user in _carried(event.get("attachments")) + _carried(event.get("blocks")):
        for other in [*unlabelled_users(text, bot_user_id), *([user] if user else [])]:
            if other != bot_user_id and other not in found:
                found.append(other)
    return found


def _carried(value: Any) -> list[tuple[str, str]]:
    """(a string, a rich_text user element's id) found anywhere in a JSON value."""
    found: list[tuple[str, str]] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "<@" in item:
                found.append((item, ""))
        elif isinstance(item, Mapping):
            if item.get("type") == "user" and isinstance(item.get("user_id"), str):
                found.append(("", item["user_id"]))
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return found


def plain_text(text: str, names: Mapping[str, str] | None = None) -> str:
    """Slack's message markup as the plain text people see: `<@U123>` → @name (from its
    label, else `names`, else the id), `<#C123|general>` → #general, `<!here>` → @here,
    `<!subteam^S1|@team>` → @team, `<https://x|label>` → label (https://x), `<https://x>`
    → https://x, `<mailto:a@b|a@b>` → a@b; then &lt; &gt; and &amp; decoded (&amp; last,
    so "&amp;lt;" stays the "&lt;" the person typed)."""
    known = names or {}

    def convert(match: re.Match[str]) -> str:
        target, _, label = match.group(1).partition("|")
        if target.startswith("@"):
            user = target[1:]
            return "@" + (label or known.get(user) or user)
        if target.startswith("#"):
            return "#" + (label or target[1:])
        if target.startswith("!"):
            kind, _, ident = target[1:].partition("^")
            if kind in _SPECIAL_MENTIONS:
                return "@" + kind
            if kind == "subteam":
                return "@" + (label.lstrip("@") or ident)
            return label or target[1:]  # a date's fallback text, say
        address = target.removeprefix("mailto:")
        if not label:
            return address
        if label in (address, address.partition("://")[2].rstrip("/")):
            return label  # what the person typed, which Slack made a link
        return f"{label} ({address})"

    converted = _MARKUP.sub(convert, text)
    return converted.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _emoji(element: Mapping[str, Any]) -> str:
    """An emoji as its character where Slack gives the code points ("1f44d"), else :name:."""
    try:
        return "".join(chr(int(p, 16)) for p in str(element["unicode"]).split("-"))
    except (KeyError, ValueError, OverflowError):
        return f":{element.get('name', '')}:"


def _rich_text(elements: Any, names: Mapping[str, str]) -> str:
    """The plain text of rich_text elements (literal text, not mrkdwn: no escapes)."""
    parts: list[str] = []
    for element in elements if isinstance(elements, list) else ():
        if not isinstance(element, Mapping):
            continue
        kind = element.get("type")
        if kind == "text":
            parts.append(str(element.get("text") or ""))
        elif kind == "link":
            url, label = str(element.get("url") or ""), str(element.get("text") or "")
            parts.append(f"{label} ({url})" if label and label != url else url)
        elif kind == "user":
            user = str(element.get("user_id") or "")
            parts.append("@" + names.get(user, user))
        elif kind == "channel":
            parts.append("#" + str(element.get("channel_id") or ""))
        elif kind == "usergroup":
            parts.append("@" + str(element.get("usergroup_id") or ""))
        elif kind == "broadcast":
            parts.append("@" + str(element.get("range") or "here"))
        elif kind == "emoji":
            parts.append(_emoji(element))
        elif kind == "date":
            parts.append(str(element.get("fallback") or ""))
        elif kind == "rich_text_list":
            items = [
                _rich_text(item.get("elements"), names)
                for item in element.get("elements") or ()
                if isinstance(item, Mapping)
            ]
            parts.append("\n".join(f"- {item}" for item in items) + "\n")
        elif kind in ("rich_text_section", "rich_text_preformatted", "rich_text_quote"):
            inner = _rich_text(element.get("elements"), names)
            if kind == "rich_text_preformatted":
                inner = f"```\n{inner}\n```\n"
            elif kind == "rich_text_quote":
                inner = quote_lines(inner) + "\n"
            parts.append(inner)
    return "".join(parts)


def _composed(value: Any, names: Mapping[str, str]) -> str:
    """A text object's text: mrkdwn through `plain_text`, plain_text as it is."""
    if not isinstance(value, Mapping):
        return ""
    text = str(value.get("text") or "")
    return plain_text(text, names) if value.get("type") == "mrkdwn" else text


def blocks_text(blocks: Any, names: Mapping[str, str] | None = None) -> str:
    """What a message's blocks say (rich_text, section, header, markdown, context), for a
    message whose `text` is empty: some integrations and clients send only blocks."""
    known = names or {}
    found: list[str] = []
    for block in blocks if isinstance(blocks, list) else ():
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "rich_text":
            found.append(_rich_text(block.get("elements"), known))
        elif kind in ("section", "header"):
            found.append(_composed(block.get("text"), known))
            fields = block.get("fields")
            found.extend(_composed(f, known) for f in fields or () if isinstance(fields, list))
        elif kind == "markdown":
            found.append(str(block.get("text") or ""))
        elif kind == "context":
            elements = block.get("elements")
            found.append(" ".join(_composed(e, known) for e in elements or () if e).strip())
    return "\n".join(text.strip() for text in found if text.strip())


def _is_link_preview(attachment: Mapping[str, Any]) -> bool:
    """A web page's unfurl under a link the message holds (the link is in its text)."""
    shared = attachment.get("is_share") or attachment.get("is_msg_unfurl")
    return bool(attachment.get("original_url")) and not shared


def _attachment_text(attachment: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """A legacy attachment's words: pretext, title, text (else its message's blocks, else
    its fallback) and fields."""
    parts = [plain_text(str(attachment.get(k) or ""), names) for k in ("pretext", "title")]
    body = plain_text(str(attachment.get("text") or ""), names)
    if not body.strip():
        inner = [
            blocks_text(((item.get("message") or {}).get("blocks")), names)
            for item in attachment.get("message_blocks") or ()
            if isinstance(item, Mapping)
        ]
        body = "\n".join(inner) or blocks_text(attachment.get("blocks"), names)
    if not body.strip() and not any(p.strip() for p in parts):
        body = plain_text(str(attachment.get("fallback") or ""), names)
    parts.append(body)
    for field in attachment.get("fields") or ():
        if isinstance(field, Mapping):
            title = plain_text(str(field.get("title") or ""), names).strip()
            value = plain_text(str(field.get("value") or ""), names).strip()
            parts.append(f"{title}: {value}" if title and value else title or value)
    return "\n".join(p.strip() for p in parts if p.strip())


def shared_text(message: Mapping[str, Any], names: Mapping[str, str] | None = None) -> str:
    """The messages a message shares (a forward, a message link's unfurl) and its legacy
    attachments (an integration's alert), each quoted, a forward's under "Forwarded from
    NAME in #channel:". Not the previews of web links."""
    known = names or {}
    found: list[str] = []
    for attachment in message.get("attachments") or ():
        if not isinstance(attachment, Mapping) or _is_link_preview(attachment):
            continue
        text = _attachment_text(attachment, known)
        if not text:
            continue
        author = str(attachment.get("author_name") or attachment.get("author_subname") or "")
        label = ""
        if attachment.get("is_share") or attachment.get("is_msg_unfurl"):
            label = f"Forwarded from {author}" if author else "Forwarded message"
            channel = attachment.get("channel_name")
            label += f" in #{channel}:" if channel else ":"
        elif author:
            label = f"From {author}:"
        found.append(f"{label}\n{quote_lines(text)}" if label else quote_lines(text))
    return "\n\n".join(found)


def message_text(message: Mapping[str, Any], names: Mapping[str, str] | None = None) -> str:
    """A message's own words as people see them: `text`, else (empty) its blocks'."""
    text = plain_text(str(message.get("text") or ""), names).strip()
    return text or blocks_text(message.get("blocks"), names)


def _with_shared(text: str, message: Mapping[str, Any], names: Mapping[str, str] | None) -> str:
    shared = shared_text(message, names)
    return f"{text}\n\n{shared}".strip() if shared else text


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


def _heard(file: Mapping[str, Any]) -> bool:
    """Whether a Slack file is something said aloud: an audio file or an audio clip (also
    one labelled application/octet-stream whose file type is an audio-only one)."""
    mime = str(file.get("mimetype") or "").lower()
    if mime.startswith("audio/") or file.get("subtype") == "slack_audio":
        return True
    filetype = str(file.get("filetype") or "").lower()
    return filetype in _AUDIO_ONLY_FILETYPES and not mime.startswith(("video/", "image/"))


def to_attachment(file: Mapping[str, Any], fetch_for: FetchFactory) -> Attachment:
    """A Slack file object as a neutral attachment whose `fetch` downloads it with the token."""
    kind = attachment_kind(file)
    name = str(file.get("name") or "")
    if not name:
        name = f"{file.get('id', 'file')}.{file.get('filetype') or 'bin'}"
    elif kind is AttachmentKind.FILE and not name.rpartition(".")[0]:
        # A snippet ("Untitled"), a Dockerfile: the core reads a file that comes with a
        # message only under a name with an extension, and would pass over this one.
        mime = str(file.get("mimetype") or "")
        name = f"{name}.{'txt' if mime.startswith('text/') else file.get('filetype') or 'bin'}"
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
    names: Mapping[str, str] | None = None,
) -> IncomingMessage | None:
    """The neutral message for a Slack event, or None when the bot should not answer it.

    A channel mention starts (or continues) a conversation in the thread under it; replies in
    a thread the bot is part of (`in_bot_thread`) need no mention; DMs are always answered,
    a DM thread being its own conversation. The event key is channel + ts, so one message
    delivered as both `app_mention` and `message`, or retried, is answered once. The text
    is what people see (`plain_text`; `names` of the people it mentions by id alone, see
    `unlabelled_users`), commands translated.
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
    # Unaddressed, only something said aloud counts (as Telegram's): an audio file or an audio
    # clip; a video (a screen recording, "look at this bug") is not a voice note to transcribe.
    heard_audio = any(_heard(f) for f in files)
    if not addressed and not heard_audio:
        return None
    if not addressed:  # only what was said aloud is heard: not the video beside the clip
        attachments = tuple(to_attachment(f, fetch_for) for f in files if _heard(f))
    # An unaddressed audio clip still goes to the core: the channel's /voicemode decides.
    mention = mention_pattern(bot_user_id)
    text = mention.sub("", str(event.get("text", "")))
    text = plain_text(text, names).strip()
    if not text:  # some clients and integrations send only blocks
        text = blocks_text(event.get("blocks"), names)
        text = re.sub(rf"@{re.escape(bot_user_id)}\b", "", text).strip()
    with_image = any(a.kind is AttachmentKind.IMAGE for a in attachments)
    text = translate_commands(text, with_image=with_image)
    # A forwarded message, an alert's attachment: quoted after what the person wrote.
    text = _with_shared(text, event, names)
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


def with_thread_parent(
    msg: IncomingMessage,
    parent: Mapping[str, Any],
    fetch_for: FetchFactory,
    names: Mapping[str, str] | None = None,
) -> IncomingMessage:
    """`msg`, asked in a thread, with the message the thread hangs under: its text quoted
    (as a replied-to message) and, when `msg` brings no file of its own, its pictures
    ("@bot what is in this picture?" under a photo, "edit: add a hat"), as a reply to a
    photo brings the photo on Telegram. Its other files are named in the quote, not
    attached: a question in the thread is not necessarily about them (a document the core
    cannot read would refuse it, a clip would be transcribed and billed)."""
    files = [f for f in parent.get("files") or () if isinstance(f, Mapping) and f.get("id")]
    pictures = pictures_of(parent)
    others = [str(f.get("name") or f.get("title") or "") for f in files if f not in pictures]
    quoted = _with_shared(message_text(parent, names), parent, names)
    named = ", ".join(name for name in others if name)
    if named:
        quoted = f"{quoted}\n[attached: {named}]".strip()
    if not msg.attachments and pictures:
        msg = with_pictures(msg, pictures, fetch_for)
    return dataclasses.replace(msg, reply_to_text=quoted or None)


def pictures_of(message: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The pictures a message from conversations.* holds (its files that are images)."""
    return [
        f
        for f in message.get("files") or ()
        if isinstance(f, Mapping) and f.get("id") and attachment_kind(f) is AttachmentKind.IMAGE
    ]


def with_pictures(
    msg: IncomingMessage, pictures: list[Mapping[str, Any]], fetch_for: FetchFactory
) -> IncomingMessage:
    """`msg`, which brought no file, with these pictures from its thread attached, its
    commands read as on a message with a picture ("edit: make it blue" edits it)."""
    return dataclasses.replace(
        msg,
        attachments=tuple(to_attachment(f, fetch_for) for f in pictures),
        text=translate_commands(msg.text, with_image=True),
    )
