"""A fake Telegram Bot API over real HTTP, for relaybot's tests and for yours.

Start it in the test's event loop (`async with FakeTelegram() as tg:`), point
python-telegram-bot at `tg.api_base_url` / `tg.file_base_url`, inject updates with
`await tg.push_update(tg.text_update(...))` and assert on what a person would see in
`tg.chat_log(chat_id)`. It serves `/bot<token>/<method>` (JSON, form-urlencoded and
multipart bodies) and `/file/bot<token>/<path>`, long-polls `getUpdates`, delivers to a
webhook when one is set, and enforces the rules that bite: 4096 UTF-16 units per message,
1024 per caption, well-formed Telegram HTML, 20 MB downloads, "message is not modified".
`fail_next`/`rate_limit_next` inject errors; `delay` and `hold` make a method slow;
`flood_limit` answers 429, as Telegram does, to a bot sending too much into one group.
A message's first link is fetched for a preview, as Telegram's servers do, unless its
link_preview_options turn previews off: `previews` lists every address fetched so.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from core.media import image_dimensions
from core.testing.server import FakeServer, SlidingWindow

log = logging.getLogger("relaybot.fake_telegram")

DEFAULT_TOKEN = "123456789:TEST-fake-token-not-real"
MAX_TEXT_UTF16 = 4096
MAX_CAPTION_UTF16 = 1024
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
# The key of the message-id sequence shared by private chats and basic groups (no chat's id).
ACCOUNT_SEQUENCE = 0
MAX_PHOTO_BYTES = 10 * 1024 * 1024
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)
# Parameters Telegram documents as strings: never JSON-decode them ("123" stays text).
_STRING_PARAMS = frozenset(
    {
        "text",
        "caption",
        "parse_mode",
        "url",
        "secret_token",
        "action",
        "file_id",
        "inline_message_id",
        "emoji",
        "description",
        "short_description",
        "name",
        "language_code",
    }
)


# An address in a message's text, which Telegram makes a link of (a "url" entity), roughly.
_URL = re.compile(r"https?://[^\s<>\"]+", re.IGNORECASE)


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of Telegram's limits and entity offsets."""
    return len(text.encode("utf-16-le")) // 2


class ApiError(Exception):
    """A Bot API error reply in Telegram's shape."""

    def __init__(
        self, error_code: int, description: str, parameters: dict[str, Any] | None = None
    ) -> None:
        super().__init__(description)
        self.error_code = error_code
        self.description = description
        self.parameters = parameters

    def response(self) -> web.Response:
        """The HTTP response Telegram would send."""
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.error_code,
            "description": self.description,
        }
        if self.parameters:
            body["parameters"] = self.parameters
        return web.json_response(body, status=self.error_code)


# BotCommandScope's types (Bot API): where a command list applies.
_SCOPE_TYPES = frozenset(
    {
        "default",
        "all_private_chats",
        "all_group_chats",
        "all_chat_administrators",
        "chat",
        "chat_administrators",
        "chat_member",
    }
)


@dataclass(frozen=True, slots=True)
class CommandScope:
    """Where one setMyCommands list applies: a BotCommandScope and a language ("": all)."""

    type: str
    chat_id: int | str | None = None
    user_id: int | None = None
    language_code: str = ""


def _bad_request(description: str) -> ApiError:
    return ApiError(400, "Bad Request: " + description)


# -- Telegram HTML -------------------------------------------------------------------------
_TAG = re.compile(
    r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)"
    r"((?:\s+[a-zA-Z][\w-]*(?:\s*=\s*(?:\"[^\"]*\"|'[^']*'|[^\s\"'>]+))?)*)\s*>"
)
_ATTR = re.compile(r"([a-zA-Z][\w-]*)(?:\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s\"'>]+)))?")
_ENTITY = re.compile(r"&(lt|gt|amp|quot|#[0-9]{1,7}|#x[0-9a-fA-F]{1,6});")
_AUTO_ENTITY = re.compile(
    r"(?<![\w/@])(?:(/[A-Za-z0-9_]+(?:@[A-Za-z0-9_]+)?)|(@[A-Za-z0-9_]{3,}))"
)
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_TAG_TYPES = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}


@dataclass(slots=True)
class _Open:
    tag: str
    type: str | None  # None: no entity of its own (code carrying pre's language)
    start: int
    byte: int
    extra: dict[str, Any] = field(default_factory=dict)


# A link Telegram makes a text_mention of (tdlib's LinkManager::get_link_user_id): it names
# a user by id, and Telegram refuses it unless the bot has seen that user (see `_mention`).
_MENTION_LINK = re.compile(r"tg:(?://)?user/?\?(?:[^#]*&)?id=(\d+)(?:[&#].*)?", re.IGNORECASE)


def _cant_parse(what: str) -> ApiError:
    return _bad_request("can't parse entities: " + what)


def parse_html(source: str) -> tuple[str, list[dict[str, Any]]]:
    """Visible text and entities of a Telegram-HTML text, or the ApiError Telegram answers."""
    out: list[str] = []
    offset = 0  # UTF-16 units of visible text so far
    stack: list[_Open] = []
    entities: list[dict[str, Any]] = []
    i = 0

    def byte_at(index: int) -> int:
        return len(source[:index].encode())

    def emit(text: str) -> None:
        nonlocal offset
        out.append(text)
        offset += utf16_len(text)

    while i < len(source):
        ch = source[i]
        if ch == "&":
            m = _ENTITY.match(source, i)
            if m is None:
                raise _cant_parse(f"Unsupported HTML entity at byte offset {byte_at(i)}")
            name = m.group(1)
            if name.startswith("#x"):
                emit(chr(int(name[2:], 16)))
            elif name.startswith("#"):
                emit(chr(int(name[1:])))
            else:
                emit(_NAMED[name])
            i = m.end()
            continue
        if ch == ">":
            # Telegram tolerates a bare ">" in text, as browsers do.
            emit(ch)
            i += 1
            continue
        if ch != "<":
            emit(ch)
            i += 1
            continue
        m = _TAG.match(source, i)
        if m is None:
            name_match = re.match(r"</?([^\s>/]*)", source[i:])
            name = name_match.group(1) if name_match else ""
            if ">" not in source[i:]:
                raise _cant_parse(f"Unclosed start tag at byte offset {byte_at(i)}")
            raise _cant_parse(f'Unsupported start tag "{name}" at byte offset {byte_at(i)}')
        closing, tag, attr_text = m.group(1) == "/", m.group(2).lower(), m.group(3)
        if closing:
            if not stack or stack[-1].tag != tag:
                raise _cant_parse(f"Unexpected end tag at byte offset {byte_at(i)}")
            top = stack.pop()
            length = offset - top.start
            if top.type is not None and length > 0:
                entity: dict[str, Any] = {"type": top.type, "offset": top.start, "length": length}
                entity.update(top.extra)
                entities.append(entity)
            i = m.end()
            continue
        if tag not in _TAG_TYPES:
            raise _cant_parse(f'Unsupported start tag "{tag}" at byte offset {byte_at(i)}')
        attrs = {
            a.group(1).lower(): html.unescape(
                next((g for g in a.groups()[1:] if g is not None), "")
            )
            for a in _ATTR.finditer(attr_text)
        }
        inside = stack[-1] if stack else None
        kind: str | None = _TAG_TYPES[tag]
        extra: dict[str, Any] = {}
        if (
            inside is not None
            and inside.tag in ("code", "pre")
            and not (tag == "code" and inside.tag == "pre" and inside.start == offset)
        ):
            raise _cant_parse(
                f'Unsupported start tag "{tag}" inside a code block at byte offset {byte_at(i)}'
            )
        if tag == "blockquote" and any(o.tag == "blockquote" for o in stack):
            raise _cant_parse(f"Nested blockquotes at byte offset {byte_at(i)}")
        if tag == "span" and attrs.get("class") != "tg-spoiler":
            raise _cant_parse(f'Unsupported start tag "span" at byte offset {byte_at(i)}')
        if tag == "a":
            href = attrs.get("href", "")
            if not href:
                raise _cant_parse(f"Can't find href of a link at byte offset {byte_at(i)}")
            mention = _MENTION_LINK.fullmatch(href)
            if mention is not None:
                kind = "text_mention"
                extra["user"] = {"id": int(mention.group(1))}
            else:
                extra["url"] = href
        if tag == "tg-emoji":
            extra["custom_emoji_id"] = attrs.get("emoji-id", "")
        if tag == "blockquote" and "expandable" in attrs:
            kind = "expandable_blockquote"
        if tag == "code" and inside is not None and inside.tag == "pre":
            language = attrs.get("class", "")
            if language.startswith("language-"):
                inside.extra["language"] = language[len("language-") :]
            kind = None
        stack.append(_Open(tag, kind, offset, byte_at(i), extra))
        i = m.end()
    if stack:
        raise _cant_parse(f'Can\'t find end tag corresponding to start tag "{stack[-1].tag}"')
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(out), entities


# -- the bot's side of a chat --------------------------------------------------------------
@dataclass(slots=True)
class SentMessage:
    """A message the bot sent, as the chat shows it now (with its history of edits)."""

    chat_id: int
    message_id: int
    kind: str  # "text", "photo" or "document"
    text: str  # visible text (the caption for media)
    source: str  # the text exactly as sent (HTML source when parse_mode is HTML)
    parse_mode: str | None
    entities: list[dict[str, Any]]
    thread_id: int | None = None
    reply_to: int | None = None
    file: bytes | None = None
    filename: str | None = None
    file_id: str | None = None
    edits: list[str] = field(default_factory=list)  # earlier visible texts, oldest first
    deleted: bool = False
    # The address of the link preview shown under it (fetched by Telegram), if any.
    link_preview: str | None = None


@dataclass(slots=True)
class Draft:
    """One sendMessageDraft call (a streamed preview in a private chat)."""

    chat_id: int
    draft_id: int
    text: str
    parse_mode: str | None
    thread_id: int | None


@dataclass(slots=True)
class FakeFile:
    """A file the fake can serve through getFile and /file/bot<token>/<path>."""

    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    file_size: int


@dataclass(slots=True)
class ApiCall:
    """One Bot API call: which method, when (time.monotonic()) it arrived, the error code,
    if any, and when it was answered (carried out, or refused; also when its caller had
    hung up meanwhile, as Telegram carries such a call out): None while it waits at a
    `delay` or `hold`, or when it never was (`hang_up_next`, the fake stopped)."""

    method: str
    at: float
    error_code: int | None = None
    answered: float | None = None


# What Telegram counts against a group's flood limit: messages sent and edited.
_FLOOD_COUNTED = frozenset({"sendmessage", "editmessagetext", "sendphoto", "senddocument"})


@dataclass(slots=True)
class _Failure:
    method: str
    error: ApiError
    times: int


class FakeTelegram(FakeServer):
    """A fake Bot API server: getUpdates / webhooks in, a per-chat log of what the bot sent."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        bot_username: str = "relay_test_bot",
        bot_name: str = "RelayBot",
    ) -> None:
        super().__init__()
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.bot_user: dict[str, Any] = {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": bot_name,
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        # Longest time getUpdates holds a request open (Telegram: `timeout`, here kept short).
        self.poll_wait = 0.5
        self.pending: list[dict[str, Any]] = []
        self.webhook: dict[str, Any] | None = None
        # Where webhook deliveries really go (the public URL given to setWebhook is not local).
        self.webhook_delivery_url: str | None = None
        self.webhook_deliveries: list[tuple[int, int]] = []  # (update_id, HTTP status)
        # setMyCommands' lists by scope and language (see `command_list`, `menu`).
        self.command_lists: dict[CommandScope, list[dict[str, Any]]] = {}
        self.log: dict[int, list[SentMessage]] = {}
        self.drafts: list[Draft] = []
        # Every address Telegram's servers fetched to show a link preview, in order.
        self.previews: list[str] = []
        self.chat_actions: list[dict[str, Any]] = []
        self.files: dict[str, FakeFile] = {}
        self.downloads: list[str] = []
        self.unknown_methods: list[str] = []
        self.api_calls: list[ApiCall] = []
        self.chats: dict[int, dict[str, Any]] = {}
        # Each group's administrators (user ids; getChatMember). Everyone else is a member.
        self.chat_admins: dict[int, set[int]] = {}
        self.user_messages: dict[tuple[int, int], dict[str, Any]] = {}
        # The users the bot has seen (senders of the messages it was sent), by id: the only
        # ones besides itself a text_mention (tg://user?id=) may name.
        self.users: dict[int, dict[str, Any]] = {}
        self._failures: list[_Failure] = []
        self._hang_ups: dict[str, int] = {}  # method -> calls to drop unanswered
        self._download_failures: list[int] = []  # statuses of the next downloads
        # Basic groups upgraded to supergroups: old chat id -> new one (see `migrate`).
        self.migrated: dict[int, int] = {}
        # flood_limit: (messages, seconds), and each group's window.
        self._flood: tuple[int, float] | None = None
        self._flood_windows: dict[int, SlidingWindow] = {}
        # Per method (lower case): how late every call is answered, and gates holding calls
        # until set. A slow Bot API, or PTB's rate limiter queueing requests, looks like this.
        self.delays: dict[str, float] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self._held: dict[str, int] = {}
        self._update_ids = itertools.count(1000)
        self._media_groups = itertools.count(13_000_000_000_000_000)
        self._file_ids = itertools.count(1)
        self._message_ids: dict[int, int] = {}
        self._acked_offset = 0
        self._methods: dict[str, Callable[[dict[str, Any]], Any]] = {
            "getme": self._get_me,
            "getupdates": self._get_updates,
            "setwebhook": self._set_webhook,
            "deletewebhook": self._delete_webhook,
            "getwebhookinfo": self._get_webhook_info,
            "setmycommands": self._set_my_commands,
            "getmycommands": self._get_my_commands,
            "deletemycommands": self._delete_my_commands,
            "sendmessage": self._send_message,
            "editmessagetext": self._edit_message_text,
            "sendmessagedraft": self._send_message_draft,
            "sendchataction": self._send_chat_action,
            "sendphoto": self._send_photo,
            "senddocument": self._send_document,
            "getfile": self._get_file,
            "getchatmember": self._get_chat_member,
            "deletemessage": self._delete_message,
        }

    # -- configuration for the client --------------------------------------------------
    @property
    def api_base_url(self) -> str:
        """python-telegram-bot's `base_url` (the token is appended to it)."""
        return self.url + "/bot"

    @property
    def file_base_url(self) -> str:
        """python-telegram-bot's `base_file_url` (the token is appended to it)."""
        return self.url + "/file/bot"

    # -- error injection ---------------------------------------------------------------
    def fail_next(
        self,
        method: str,
        *,
        error_code: int = 400,
        description: str = "Bad Request: the fake was told to fail this request",
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` calls of `method` with an error in Telegram's shape."""
        parameters = {"retry_after": retry_after} if retry_after is not None else None
        error = ApiError(error_code, description, parameters)
        self._failures.append(_Failure(method.lower(), error, times))

    def rate_limit_next(self, method: str, retry_after: int = 1, times: int = 1) -> None:
        """Answer the next calls of `method` with 429 Too Many Requests and `retry_after`."""
        self.fail_next(
            method,
            error_code=429,
            description=f"Too Many Requests: retry after {retry_after}",
            retry_after=retry_after,
            times=times,
        )

    def fail_downloads_next(self, status: int = 404, times: int = 1) -> None:
        """Answer the next `times` file downloads (/file/bot<token>/<path>) with `status`:
        404 as for a file Telegram no longer has, a 5xx as for a download server failing."""
        self._download_failures += [status] * times

    def flood_limit(self, messages: int, seconds: float) -> None:
        """Refuse, with 429 and `retry_after`, a send or edit into a group (negative chat
        id) that would make it more than `messages` in the last `seconds`.

        Telegram allows a bot about 20 messages a minute in one group, edits included
        (core.telegram.org/bots/faq; tdlib/td issues #2592, #3034); chat actions are free.
        """
        self._flood = (messages, seconds)

    def _flooded(self, method: str, params: dict[str, Any]) -> ApiError | None:
        if self._flood is None or method not in _FLOOD_COUNTED:
            return None
        try:
            chat_id = int(params.get("chat_id", 0))
        except (TypeError, ValueError):
            return None
        if chat_id >= 0:
            return None
        window = self._flood_windows.get(chat_id)
        if window is None:
            window = self._flood_windows[chat_id] = SlidingWindow(*self._flood)
        retry_after = window.admit()
        if retry_after is None:
            return None
        return ApiError(
            429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after}
        )

    def delay(self, method: str, seconds: float) -> None:
        """Answer every later call of `method` `seconds` late (0: at once again)."""
        if seconds > 0:
            self.delays[method.lower()] = seconds
        else:
            self.delays.pop(method.lower(), None)

    def hang_up_next(self, method: str, times: int = 1) -> None:
        """Close the connection of the next `times` calls of `method` before carrying them
        out, without an answer (a keep-alive connection the server or a proxy dropped)."""
        self._hang_ups[method.lower()] = times

    def hold(self, method: str) -> asyncio.Event:
        """Keep every later call of `method` waiting until the returned event is set.

        The call is in `api_calls` (and `wait_until` sees it) while it waits; its effect
        (a draft, a message) happens once it is let through.
        """
        gate = asyncio.Event()
        self.gates[method.lower()] = gate
        return gate

    def held(self, method: str) -> int:
        """How many calls of `method` are waiting at a gate now."""
        return self._held.get(method.lower(), 0)

    def migrate(self, old_chat_id: int, new_chat_id: int) -> None:
        """Upgrade a basic group to a supergroup: from now on every call naming the old chat
        is refused with 400 and `migrate_to_chat_id`, as Telegram does; the supergroup
        numbers its messages anew."""
        self.migrated[old_chat_id] = new_chat_id
        self._chat(new_chat_id, "supergroup")

    def _moved(self, params: dict[str, Any]) -> ApiError | None:
        chat_id = params.get("chat_id")
        new = self.migrated.get(chat_id) if isinstance(chat_id, int) else None
        if new is None:
            return None
        return ApiError(
            400,
            "Bad Request: group chat was upgraded to a supergroup chat",
            {"migrate_to_chat_id": new},
        )

    def _take_failure(self, method: str) -> ApiError | None:
        for failure in self._failures:
            if failure.method == method:
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.remove(failure)
                return failure.error
        return None

    # -- building and injecting updates ------------------------------------------------
    def user(
        self, user_id: int = 1001, first_name: str = "Ada", username: str | None = "ada"
    ) -> dict[str, Any]:
        """A Telegram User object for a person."""
        user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username:
            user["username"] = username
        return user

    def _chat(self, chat_id: int, chat_type: str | None, forum: bool = False) -> dict[str, Any]:
        if chat_type is None:  # the chat's type as first given, else the likeliest
            known_type = self.chats.get(chat_id, {}).get("type")
            chat_type = known_type or ("private" if chat_id > 0 else "supergroup")
        chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
        if chat_type == "private":
            chat["first_name"] = "Ada"
        else:
            chat["title"] = f"Group {chat_id}"
        if forum:
            chat["is_forum"] = True
        known = self.chats.get(chat_id)
        if known is not None and known.get("is_forum"):
            chat["is_forum"] = True
        self.chats[chat_id] = chat
        return chat

    def _next_message_id(self, chat_id: int) -> int:
        # A supergroup (or channel) numbers its own messages; private chats and basic groups
        # share one sequence per account, the bot's (core.telegram.org/api/channel): a
        # message in any of them, the bot's own included, takes the next id of all.
        known = self.chats.get(chat_id)
        kind = known["type"] if known else ("private" if chat_id > 0 else "supergroup")
        key = ACCOUNT_SEQUENCE if kind in ("private", "group") else chat_id
        self._message_ids[key] = self._message_ids.get(key, 0) + 1
        return self._message_ids[key]

    @staticmethod
    def auto_entities(text: str) -> list[dict[str, Any]]:
        """The entities Telegram finds in plain text: a leading /command and @mentions."""
        entities: list[dict[str, Any]] = []
        for m in _AUTO_ENTITY.finditer(text):
            if m.group(1) and m.start() != 0:
                continue
            kind = "bot_command" if m.group(1) else "mention"
            entities.append(
                {
                    "type": kind,
                    "offset": utf16_len(text[: m.start()]),
                    "length": utf16_len(m.group(0)),
                }
            )
        return entities

    def message(
        self,
        chat_id: int,
        *,
        chat_type: str | None = None,
        from_user: dict[str, Any] | None = None,
        reply_to: dict[str, Any] | SentMessage | None = None,
        message_thread_id: int | None = None,
        **content: Any,
    ) -> dict[str, Any]:
        """A Message object from a person, with a fresh message_id; `content` adds fields."""
        chat = self._chat(chat_id, chat_type, forum=message_thread_id is not None)
        if from_user is None:
            from_user = self.user(chat_id) if chat["type"] == "private" else self.user()
        message: dict[str, Any] = {
            "message_id": self._next_message_id(chat_id),
            "date": int(time.time()),
            "chat": chat,
            "from": from_user,
        }
        if message_thread_id is not None:
            message["message_thread_id"] = message_thread_id
            message["is_topic_message"] = True
        if reply_to is not None:
            message["reply_to_message"] = (
                self.message_dict(reply_to) if isinstance(reply_to, SentMessage) else reply_to
            )
        message.update({k: v for k, v in content.items() if v is not None})
        self.user_messages[(chat_id, message["message_id"])] = message
        if isinstance(from_user.get("id"), int):
            self.users[from_user["id"]] = from_user
        return message

    def update(self, message: dict[str, Any]) -> dict[str, Any]:
        """An Update carrying `message`, with a fresh update_id."""
        return {"update_id": next(self._update_ids), "message": message}

    def text_update(
        self,
        chat_id: int,
        text: str,
        *,
        chat_type: str | None = None,
        from_user: dict[str, Any] | None = None,
        reply_to: dict[str, Any] | SentMessage | None = None,
        message_thread_id: int | None = None,
        entities: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """An Update with a text message; entities default to what Telegram would detect."""
        message = self.message(
            chat_id,
            chat_type=chat_type,
            from_user=from_user,
            reply_to=reply_to,
            message_thread_id=message_thread_id,
            text=text,
        )
        found = self.auto_entities(text) if entities is None else entities
        if found:
            message["entities"] = found
        return self.update(message)

    def register_file(self, data: bytes, path: str, *, size: int | None = None) -> FakeFile:
        """Make `data` downloadable; `size` overrides the reported file_size."""
        n = next(self._file_ids)
        fake = FakeFile(
            file_id=f"FILE{n:06d}-{path.replace('/', '-')}",
            file_unique_id=f"U{n:06d}",
            file_path=path,
            data=data,
            file_size=len(data) if size is None else size,
        )
        self.files[fake.file_id] = fake
        return fake

    def _media_update(
        self,
        chat_id: int,
        field_name: str,
        media: Any,
        *,
        caption: str | None,
        chat_type: str | None,
        from_user: dict[str, Any] | None,
        reply_to: dict[str, Any] | SentMessage | None,
        message_thread_id: int | None,
    ) -> dict[str, Any]:
        content: dict[str, Any] = {field_name: media}
        if caption is not None:
            content["caption"] = caption
            found = self.auto_entities(caption)
            if found:
                content["caption_entities"] = found
        message = self.message(
            chat_id,
            chat_type=chat_type,
            from_user=from_user,
            reply_to=reply_to,
            message_thread_id=message_thread_id,
            **content,
        )
        return self.update(message)

    def voice_update(
        self,
        chat_id: int,
        data: bytes,
        *,
        duration: int = 2,
        file_size: int | None = None,
        mime_type: str = "audio/ogg",
        caption: str | None = None,
        chat_type: str | None = None,
        from_user: dict[str, Any] | None = None,
        reply_to: dict[str, Any] | SentMessage | None = None,
        message_thread_id: int | None = None,
    ) -> dict[str, Any]:
        """An Update with a voice note; the OGG bytes are served at voice/file_N.oga."""
        fake = self.register_file(data, f"voice/file_{len(self.files)}.oga", size=file_size)
        voice = {
            "file_id": fake.file_id,
            "file_unique_id": fake.file_unique_id,
            "duration": duration,
            "mime_type": mime_type,
            "file_size": fake.file_size,
        }
        return self._media_update(
            chat_id,
            "voice",
            voice,
            caption=caption,
            chat_type=chat_type,
            from_user=from_user,
            reply_to=reply_to,
            message_thread_id=message_thread_id,
        )

    def audio_update(
        self,
        chat_id: int,
        data: bytes,
        *,
        file_name: str | None = "clip.m4a",
        mime_type: str = "audio/mp4",
        duration: int = 2,
        file_size: int | None = None,
        caption: str | None = None,
        chat_type: str | None = None,
        from_user: dict[str, Any] | None = None,
        message_thread_id: int | None = None,
    ) -> dict[str, Any]:
        """An Update with an audio file (`file_name=None`: one Telegram knows no name of)."""
        ext = (file_name or "clip.m4a").rsplit(".", 1)[-1]
        fake = self.register_file(data, f"music/file_{len(self.files)}.{ext}", size=file_size)
        audio = {
            "file_id": fake.file_id,
            "file_unique_id": fake.file_unique_id,
            "duration": duration,
            "mime_type": mime_type,
            "file_size": fake.file_size,
        }
        if file_name is not None:
            audio["file_name"] = file_name
        return self._media_update(
            chat_id,
            "audio",
            audio,
            caption=caption,
            chat_type=chat_type,
            from_user=from_user,
            reply_to=None,
            message_thread_id=message_thread_id,
        )

    def document_update(
        self,
        chat_id: int,
        data: bytes,
        *,
        file_name: str,
        mime_type: str | None,
        caption: str | None = None,
        chat_type: str | None = None,
        from_user: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """An Update with a file sent as a document (a picture sent "as a file", a PDF);
        `mime_type=None`: one Telegram could not tell the type of."""
        ext = file_name.rsplit(".", 1)[-1]
        fake = self.register_file(data, f"documents/file_{len(self.files)}.{ext}")
        document = {
            "file_id": fake.file_id,
            "file_unique_id": fake.file_unique_id,
            "file_name": file_name,
            "file_size": fake.file_size,
        }
        if mime_type is not None:
            document["mime_type"] = mime_type
        return self._media_update(
            chat_id,
            "document",
            document,
            caption=caption,
            chat_type=chat_type,
            from_user=from_user,
            reply_to=None,
            message_thread_id=None,
        )

    def animation_update(
        self,
        chat_id: int,
        data: bytes,
        *,
        file_name: str = "funny.gif.mp4",
        caption: str | None = None,
        chat_type: str | None = None,
        from_user: dict[str, Any] | None = None,
        reply_to: dict[str, Any] | SentMessage | None = None,
    ) -> dict[str, Any]:
        """An Update with a GIF: as Telegram sends one, a silent MP4 in `animation`, and
        the same file in `document` for clients that know no animations."""
        fake = self.register_file(data, f"animations/file_{len(self.files)}.mp4")
        animation = {
            "file_id": fake.file_id,
            "file_unique_id": fake.file_unique_id,
            "width": 320,
            "height": 240,
            "duration": 3,
            "file_name": file_name,
            "mime_type": "video/mp4",
            "file_size": fake.file_size,
        }
        update = self._media_update(
            chat_id,
            "animation",
            animation,
            caption=caption,
            chat_type=chat_type,
            from_user=from_user,
            reply_to=reply_to,
            message_thread_id=None,
        )
        update["message"]["document"] = dict(animation)
        return update

    def video_update(
        self,
        chat_id: int,
        data: bytes,
        *,
        file_name: str = "clip.mp4",
        duration: int = 4,
        caption: str | None = None,
        chat_type: str | None = None,
        from_user: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """An Update with a video."""
        fake = self.register_file(data, f"videos/file_{len(self.files)}.mp4")
        video = {
            "file_id": fake.file_id,
            "file_unique_id": fake.file_unique_id,
            "width": 640,
            "height": 360,
            "duration": duration,
            "file_name": file_name,
            "mime_type": "video/mp4",
            "file_size": fake.file_size,
        }
        return self._media_update(
            chat_id,
            "video",
            video,
            caption=caption,
            chat_type=chat_type,
            from_user=from_user,
            reply_to=None,
            message_thread_id=None,
        )

    def sticker_update(
        self,
        chat_id: int,
        *,
        emoji: str = "😀",
        chat_type: str | None = None,
        from_user: dict[str, Any] | None = None,
        reply_to: dict[str, Any] | SentMessage | None = None,
    ) -> dict[str, Any]:
        """An Update with a (static, WebP) sticker."""
        fake = self.register_file(
            b"RIFF\x00\x00\x00\x00WEBP", f"stickers/file_{len(self.files)}.webp"
        )
        sticker = {
            "file_id": fake.file_id,
            "file_unique_id": fake.file_unique_id,
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
            "type": "regular",
            "emoji": emoji,
            "file_size": fake.file_size,
        }
        message = self.message(
            chat_id, chat_type=chat_type, from_user=from_user, reply_to=reply_to, sticker=sticker
        )
        return self.update(message)

    def photo_update(
        self,
        chat_id: int,
        data: bytes,
        *,
        width: int = 640,
        height: int = 480,
        caption: str | None = None,
        chat_type: str | None = None,
        from_user: dict[str, Any] | None = None,
        reply_to: dict[str, Any] | SentMessage | None = None,
        message_thread_id: int | None = None,
    ) -> dict[str, Any]:
        """An Update with a photo: a small thumbnail size and the full size (`data`)."""
        return self._media_update(
            chat_id,
            "photo",
            self._photo_sizes(data, width, height),
            caption=caption,
            chat_type=chat_type,
            from_user=from_user,
            reply_to=reply_to,
            message_thread_id=message_thread_id,
        )

    def album_updates(
        self,
        chat_id: int,
        pictures: list[bytes],
        *,
        caption: str | None = None,
        chat_type: str | None = None,
        from_user: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """The updates of an album (a media group) of photos, as Telegram sends one: a
        message per photo, all with the same media_group_id, the caption on the first."""
        group = str(next(self._media_groups))
        updates = []
        for n, data in enumerate(pictures):
            update = self.photo_update(
                chat_id,
                data,
                caption=caption if n == 0 else None,
                chat_type=chat_type,
                from_user=from_user,
            )
            update["message"]["media_group_id"] = group
            updates.append(update)
        return updates

    def _photo_sizes(self, data: bytes, width: int, height: int) -> list[dict[str, Any]]:
        thumb = self.register_file(b"thumbnail", f"photos/file_{len(self.files)}_s.jpg")
        full = self.register_file(data, f"photos/file_{len(self.files)}.jpg")
        scale = max(width, height) / 90 or 1
        return [
            {
                "file_id": thumb.file_id,
                "file_unique_id": thumb.file_unique_id,
                "width": max(1, int(width / scale)),
                "height": max(1, int(height / scale)),
                "file_size": thumb.file_size,
            },
            {
                "file_id": full.file_id,
                "file_unique_id": full.file_unique_id,
                "width": width,
                "height": height,
                "file_size": full.file_size,
            },
        ]

    async def push_update(self, update: dict[str, Any]) -> int:
        """Deliver an update: to the webhook when one is set, else queue it for getUpdates.

        Returns the update_id (a missing one is assigned).
        """
        if "update_id" not in update:
            update = {"update_id": next(self._update_ids), **update}
        update_id = int(update["update_id"])
        if self.webhook is not None:
            status = await self.deliver_webhook(update)
            self.webhook_deliveries.append((update_id, status))
            return update_id
        self.pending.append(update)
        self.pending.sort(key=lambda u: int(u["update_id"]))
        await self._notify()
        return update_id

    async def deliver_webhook(self, update: dict[str, Any], secret: str | None = None) -> int:
        """POST `update` to the webhook as Telegram does; returns the HTTP status."""
        assert self.webhook is not None, "no webhook set"
        url = self.webhook_delivery_url or self.webhook["url"]
        token = secret if secret is not None else self.webhook.get("secret_token")
        headers = {"X-Telegram-Bot-Api-Secret-Token": token} if token else {}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json=update, headers=headers) as resp,
        ):
            await resp.read()
            return resp.status

    async def wait_delivered(self, update_id: int, within: float = 10) -> None:
        """Wait until a poller confirmed `update_id` (asked for a higher offset)."""
        await self.wait_until(lambda: self._acked_offset > update_id, within)

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        within: float = 10,
    ) -> None:
        """Wait, without sleeping in steps, until `predicate()` holds after some request."""
        assert self._changed is not None
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(predicate)

    # -- what the chat shows -----------------------------------------------------------
    def chat_log(self, chat_id: int, thread_id: int | None = None) -> list[SentMessage]:
        """The bot's messages still visible in a chat (in a forum topic when given), in order."""
        return [
            m
            for m in self.log.get(chat_id, [])
            if not m.deleted and (thread_id is None or m.thread_id == thread_id)
        ]

    def texts(self, chat_id: int, thread_id: int | None = None) -> list[str]:
        """The visible texts (captions for media) of the bot's messages in a chat."""
        return [m.text for m in self.chat_log(chat_id, thread_id)]

    def message_dict(self, sent: SentMessage) -> dict[str, Any]:
        """The Message object Telegram returns for (and shows in replies to) a bot message."""
        message: dict[str, Any] = {
            "message_id": sent.message_id,
            "date": int(time.time()),
            "chat": self.chats.get(sent.chat_id) or self._chat(sent.chat_id, None),
            "from": self.bot_user,
        }
        if sent.thread_id is not None:
            message["message_thread_id"] = sent.thread_id
            message["is_topic_message"] = True
        if sent.edits:
            message["edit_date"] = int(time.time())
        text_key, entities_key = ("text", "entities")
        if sent.kind == "photo":
            text_key, entities_key = ("caption", "caption_entities")
            assert sent.file_id is not None
            fake = self.files[sent.file_id]
            dims = image_dimensions(fake.data) or (512, 512)
            message["photo"] = [
                {
                    "file_id": fake.file_id,
                    "file_unique_id": fake.file_unique_id,
                    "width": dims[0],
                    "height": dims[1],
                    "file_size": fake.file_size,
                }
            ]
        elif sent.kind == "document":
            text_key, entities_key = ("caption", "caption_entities")
            assert sent.file_id is not None
            fake = self.files[sent.file_id]
            message["document"] = {
                "file_id": fake.file_id,
                "file_unique_id": fake.file_unique_id,
                "file_name": sent.filename,
                "file_size": fake.file_size,
            }
        if sent.text:
            message[text_key] = sent.text
        if sent.entities:
            message[entities_key] = sent.entities
        return message

    # -- HTTP --------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        """Bot API methods and file downloads."""
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)

    def _params(self, request: web.Request) -> dict[str, Any]:
        rec = self.recorded(request)
        if isinstance(rec.json, dict):
            return dict(rec.json)
        raw: dict[str, Any] = dict(request.query)
        raw.update(rec.form)
        params: dict[str, Any] = {}
        for key, value in raw.items():
            if isinstance(value, str) and key not in _STRING_PARAMS:
                try:
                    params[key] = json.loads(value)
                except ValueError:
                    params[key] = value
            else:
                params[key] = value
        return params

    async def _api(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return ApiError(401, "Unauthorized").response()
        method = request.match_info["method"].lower()
        call = ApiCall(method, time.monotonic())
        self.api_calls.append(call)
        response = await self._answer(request, method, call)
        if call.error_code != 0:  # (0: hung up, unanswered)
            call.answered = time.monotonic()
        return response

    async def _answer(
        self, request: web.Request, method: str, call: ApiCall
    ) -> web.StreamResponse:
        await self._slow_down(method)
        if self._hang_ups.get(method, 0) > 0:
            self._hang_ups[method] -= 1
            call.error_code = 0
            assert request.transport is not None
            request.transport.close()  # no answer: the caller's connection just ends
            return web.Response()
        failure = self._take_failure(method)
        if failure is not None:
            call.error_code = failure.error_code
            return failure.response()
        handler = self._methods.get(method)
        if handler is None:
            log.info("fake Telegram: unknown method %s answered ok", method)
            self.unknown_methods.append(method)
            return web.json_response({"ok": True, "result": True})
        params = self._params(request)
        refused = self._moved(params) or self._flooded(method, params)
        if refused is not None:
            call.error_code = refused.error_code
            return refused.response()
        try:
            result = handler(params)
            if asyncio.iscoroutine(result):
                result = await result
        except ApiError as err:
            call.error_code = err.error_code
            return err.response()
        return web.json_response({"ok": True, "result": result})

    async def _slow_down(self, method: str) -> None:
        delay = self.delays.get(method, 0.0)
        gate = self.gates.get(method)
        if not delay and gate is None:
            return
        if gate is not None and not gate.is_set():
            self._held[method] = self._held.get(method, 0) + 1
            await self._notify()  # a waiting call is news for `wait_until`
            try:
                await gate.wait()
            finally:
                self._held[method] -= 1
        if delay:
            await asyncio.sleep(delay)

    async def _download(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.Response(status=401, text="Unauthorized")
        path = request.match_info["path"]
        if self._download_failures:
            status = self._download_failures.pop(0)
            return web.Response(status=status, text=f"injected failure {status}")
        fake = next((f for f in self.files.values() if f.file_path == path), None)
        if fake is None:
            return web.Response(status=404, text="Not Found")
        self.downloads.append(path)
        return web.Response(body=fake.data, content_type="application/octet-stream")

    # -- methods -----------------------------------------------------------------------
    def _get_me(self, params: dict[str, Any]) -> Any:
        return self.bot_user

    def _get_chat_member(self, params: dict[str, Any]) -> Any:
        chat_id, user_id = int(params["chat_id"]), int(params["user_id"])
        user = self.user(user_id)
        if user_id not in self.chat_admins.get(chat_id, set()):
            return {"status": "member", "user": user}
        rights = (
            "can_manage_chat can_delete_messages can_manage_video_chats can_restrict_members "
            "can_change_info can_invite_users can_post_stories can_edit_stories "
            "can_delete_stories can_pin_messages"
        )
        member: dict[str, Any] = {"status": "administrator", "user": user}
        member.update(dict.fromkeys(rights.split(), True))
        member.update(can_be_edited=False, is_anonymous=False, can_promote_members=False)
        return member

    async def _get_updates(self, params: dict[str, Any]) -> Any:
        if self.webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        timeout = float(params.get("timeout") or 0)
        if offset > 0:
            self._acked_offset = max(self._acked_offset, offset)
            self.pending = [u for u in self.pending if int(u["update_id"]) >= offset]
        wait = min(timeout, self.poll_wait)
        if not self.pending and wait > 0 and self._changed is not None:
            try:
                async with asyncio.timeout(wait), self._changed:
                    await self._changed.wait_for(lambda: bool(self.pending) or self.closing)
            except TimeoutError:
                pass
        return self.pending[:limit]

    def _set_webhook(self, params: dict[str, Any]) -> Any:
        url = params.get("url")
        if not url:
            return self._delete_webhook(params)
        secret = params.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(secret)):
            raise _bad_request("secret token contains unallowed characters")
        self.webhook = {
            "url": url,
            "secret_token": secret,
            "allowed_updates": params.get("allowed_updates"),
        }
        if params.get("drop_pending_updates"):
            self.pending.clear()
        return True

    def _delete_webhook(self, params: dict[str, Any]) -> Any:
        self.webhook = None
        if params.get("drop_pending_updates"):
            self.pending.clear()
        return True

    def _get_webhook_info(self, params: dict[str, Any]) -> Any:
        return {
            "url": self.webhook["url"] if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self.pending),
        }

    # -- command menus -------------------------------------------------------------------
    @property
    def commands(self) -> list[dict[str, Any]]:
        """The default scope's list (no language): what a chat no narrower list covers gets."""
        return self.command_list("default")

    def command_list(
        self,
        scope: str,
        chat_id: int | str | None = None,
        user_id: int | None = None,
        language_code: str = "",
    ) -> list[dict[str, Any]]:
        """The list set for exactly this scope and language (empty when none was)."""
        return list(
            self.command_lists.get(CommandScope(scope, chat_id, user_id, language_code), [])
        )

    def menu(
        self,
        chat_type: str,
        *,
        chat_id: int | None = None,
        user_id: int | None = None,
        admin: bool = False,
        language_code: str = "",
    ) -> list[str]:
        """The command names a person sees in a chat of `chat_type` ("private", "group",
        "supergroup"), as Telegram picks them: the first list set, narrowest scope first
        (Bot API, BotCommandScope: "Determining list of commands")."""
        order: list[tuple[str, int | None, int | None]]
        if chat_type == "private":
            order = [("chat", chat_id, None), ("all_private_chats", None, None)]
        else:
            order = [("chat_member", chat_id, user_id)]
            if admin:
                order.append(("chat_administrators", chat_id, None))
            order.append(("chat", chat_id, None))
            if admin:
                order.append(("all_chat_administrators", None, None))
            order.append(("all_group_chats", None, None))
        order.append(("default", None, None))
        for scope, chat, user in order:
            for language in ([language_code] if language_code else []) + [""]:
                found = self.command_lists.get(CommandScope(scope, chat, user, language))
                if found:
                    return [str(c["command"]) for c in found]
        return []

    @staticmethod
    def _command_scope(params: dict[str, Any]) -> CommandScope:
        scope = params.get("scope") or {"type": "default"}
        if not isinstance(scope, dict) or scope.get("type") not in _SCOPE_TYPES:
            raise _bad_request("can't parse BotCommandScope")
        kind = str(scope["type"])
        chat_id = scope.get("chat_id")
        user_id = scope.get("user_id")
        if kind.startswith("chat") and chat_id is None:
            raise _bad_request("chat not found")
        if kind == "chat_member" and not isinstance(user_id, int):
            raise _bad_request("user not found")
        language = str(params.get("language_code") or "")
        if language and not re.fullmatch(r"[a-z]{2}", language):
            raise _bad_request("invalid language code specified")
        return CommandScope(
            kind,
            chat_id if kind.startswith("chat") else None,
            user_id if kind == "chat_member" else None,
            language,
        )

    def _set_my_commands(self, params: dict[str, Any]) -> Any:
        commands = params.get("commands") or []
        if len(commands) > 100:
            raise _bad_request("too many commands")
        for command in commands:
            name = str(command.get("command", ""))
            if not re.fullmatch(r"[a-z0-9_]{1,32}", name):
                raise _bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise _bad_request("command description is empty or too long")
        scope = self._command_scope(params)
        if commands:
            self.command_lists[scope] = list(commands)
        else:  # an empty list is no list: a wider scope's applies
            self.command_lists.pop(scope, None)
        return True

    def _get_my_commands(self, params: dict[str, Any]) -> Any:
        return self.command_lists.get(self._command_scope(params), [])

    def _delete_my_commands(self, params: dict[str, Any]) -> Any:
        self.command_lists.pop(self._command_scope(params), None)
        return True

    def _chat_id(self, params: dict[str, Any]) -> int:
        chat_id = params.get("chat_id")
        if not isinstance(chat_id, int):
            raise _bad_request("chat not found")
        return chat_id

    def _parsed(
        self, text: str, parse_mode: str | None, entities: Any
    ) -> tuple[str, list[dict[str, Any]]]:
        if parse_mode and str(parse_mode).lower() == "html":
            visible, found = parse_html(text)
        else:
            visible, found = text, list(entities or [])
        return visible, [self._mention(entity) for entity in found]

    def _mention(self, entity: dict[str, Any]) -> dict[str, Any]:
        """A text_mention as Telegram returns it (with the whole User); one of a user the bot
        has never seen is refused, as Telegram does (PaulSonOfLars/tgbot#22)."""
        if entity.get("type") != "text_mention":
            return entity
        user = entity.get("user")
        user_id = user.get("id") if isinstance(user, dict) else None
        known = None
        if isinstance(user_id, int):
            known = self.bot_user if user_id == self.bot_id else self.users.get(user_id)
        if known is None:
            raise _bad_request("ENTITY_MENTION_USER_INVALID")
        return {**entity, "user": known}

    def _thread_of(self, chat_id: int, params: dict[str, Any]) -> int | None:
        thread = params.get("message_thread_id")
        if thread is None:
            return None
        if not self.chats.get(chat_id, {}).get("is_forum"):
            raise _bad_request("message thread not found")
        return int(thread)

    def _reply_to(self, chat_id: int, params: dict[str, Any]) -> int | None:
        reply = params.get("reply_parameters")
        target = reply.get("message_id") if isinstance(reply, dict) else None
        target = target if target is not None else params.get("reply_to_message_id")
        if target is None:
            return None
        exists = (chat_id, int(target)) in self.user_messages or any(
            m.message_id == int(target) and not m.deleted for m in self.log.get(chat_id, [])
        )
        allow = isinstance(reply, dict) and reply.get("allow_sending_without_reply")
        if not exists and not allow:
            raise _bad_request("message to be replied not found")
        return int(target)

    def _store(self, sent: SentMessage) -> dict[str, Any]:
        self.log.setdefault(sent.chat_id, []).append(sent)
        return self.message_dict(sent)

    def _checked_text(
        self, params: dict[str, Any], too_long: str
    ) -> tuple[str, Any, str, list[dict[str, Any]]]:
        """(source, parse_mode, visible text, entities), refused as Telegram would."""
        source = str(params.get("text") or "")
        parse_mode = params.get("parse_mode")
        visible, entities = self._parsed(source, parse_mode, params.get("entities"))
        if not visible.strip():
            raise _bad_request("message text is empty")
        if utf16_len(visible) > MAX_TEXT_UTF16:
            raise _bad_request(too_long)
        return source, parse_mode, visible, entities

    def _preview(
        self, params: dict[str, Any], visible: str, entities: list[dict[str, Any]]
    ) -> str | None:
        """Fetch the link a sent or edited text shows a preview of, as Telegram does at once
        (no one clicking): link_preview_options' url, else the text's first link; none
        where link_preview_options (or the older disable_web_page_preview) turn it off."""
        options = params.get("link_preview_options")
        options = options if isinstance(options, dict) else {}
        if options.get("is_disabled") is True or params.get("disable_web_page_preview") is True:
            return None
        links = [
            (entity["offset"], str(entity["url"]))
            for entity in entities
            if entity.get("type") == "text_link"
        ]
        links += [
            (utf16_len(visible[: m.start()]), m.group(0).rstrip(".,;:!?)'"))
            for m in _URL.finditer(visible)
        ]
        url = options.get("url") or (min(links)[1] if links else None)
        if not url:
            return None
        self.previews.append(str(url))
        return str(url)

    def _send_message(self, params: dict[str, Any]) -> Any:
        chat_id = self._chat_id(params)
        source, parse_mode, visible, entities = self._checked_text(params, "message is too long")
        thread = self._thread_of(chat_id, params)
        reply_to = self._reply_to(chat_id, params)
        preview = self._preview(params, visible, entities)
        sent = SentMessage(
            chat_id=chat_id,
            message_id=self._next_message_id(chat_id),
            kind="text",
            text=visible,
            source=source,
            parse_mode=parse_mode,
            entities=entities,
            thread_id=thread,
            reply_to=reply_to,
            link_preview=preview,
        )
        return self._store(sent)

    def _find(self, params: dict[str, Any], missing: str) -> SentMessage:
        chat_id = self._chat_id(params)
        message_id = params.get("message_id")
        for sent in self.log.get(chat_id, []):
            if sent.message_id == message_id and not sent.deleted:
                return sent
        raise _bad_request(missing)

    def _edit_message_text(self, params: dict[str, Any]) -> Any:
        sent = self._find(params, "message to edit not found")
        source, parse_mode, visible, entities = self._checked_text(params, "MESSAGE_TOO_LONG")
        if visible == sent.text and entities == sent.entities:
            raise ApiError(400, NOT_MODIFIED)
        sent.edits.append(sent.text)
        sent.text, sent.entities, sent.source, sent.parse_mode = (
            visible,
            entities,
            source,
            parse_mode,
        )
        sent.link_preview = self._preview(params, visible, entities)
        return self.message_dict(sent)

    def _send_message_draft(self, params: dict[str, Any]) -> Any:
        chat_id = self._chat_id(params)
        if chat_id <= 0:
            raise _bad_request("method is available only for private chats")
        draft_id = params.get("draft_id")
        if not isinstance(draft_id, int) or draft_id == 0:
            raise _bad_request("draft_id must be non-zero")
        source = str(params.get("text") or "")
        parse_mode = params.get("parse_mode")
        visible, _ = self._parsed(source, parse_mode, params.get("entities"))
        if utf16_len(visible) > MAX_TEXT_UTF16:
            raise _bad_request("message is too long")
        self.drafts.append(
            Draft(chat_id, draft_id, visible, parse_mode, params.get("message_thread_id"))
        )
        return True

    def _send_chat_action(self, params: dict[str, Any]) -> Any:
        self.chat_actions.append(
            {"chat_id": self._chat_id(params), "action": params.get("action"), **params}
        )
        return True

    def _upload(self, params: dict[str, Any], field_name: str, folder: str) -> FakeFile:
        value = params.get(field_name)
        if isinstance(value, dict) and "data" in value:
            data = bytes(value["data"])
            name = str(value.get("filename") or "file")
            return self.register_file(data, f"{folder}/file_{len(self.files)}_{name}")
        if isinstance(value, str) and value in self.files:
            return self.files[value]
        raise _bad_request(f"there is no {field_name} in the request")

    def _media_message(
        self, params: dict[str, Any], kind: str, fake: FakeFile, filename: str | None
    ) -> Any:
        chat_id = self._chat_id(params)
        source = str(params.get("caption") or "")
        parse_mode = params.get("parse_mode")
        visible, entities = self._parsed(source, parse_mode, params.get("caption_entities"))
        if utf16_len(visible) > MAX_CAPTION_UTF16:
            raise _bad_request("message caption is too long")
        sent = SentMessage(
            chat_id=chat_id,
            message_id=self._next_message_id(chat_id),
            kind=kind,
            text=visible,
            source=source,
            parse_mode=parse_mode,
            entities=entities,
            thread_id=self._thread_of(chat_id, params),
            reply_to=self._reply_to(chat_id, params),
            file=fake.data,
            filename=filename,
            file_id=fake.file_id,
        )
        return self._store(sent)

    def _send_photo(self, params: dict[str, Any]) -> Any:
        fake = self._upload(params, "photo", "photos")
        if len(fake.data) > MAX_PHOTO_BYTES:
            raise _bad_request("PHOTO_SAVE_FILE_INVALID")
        dims = image_dimensions(fake.data)
        if dims is None:
            raise _bad_request("IMAGE_PROCESS_FAILED")
        width, height = dims
        if width + height > 10000 or max(width, height) > 20 * min(width, height):
            raise _bad_request("PHOTO_INVALID_DIMENSIONS")
        return self._media_message(params, "photo", fake, None)

    def _send_document(self, params: dict[str, Any]) -> Any:
        fake = self._upload(params, "document", "documents")
        value = params.get("document")
        filename = str(value.get("filename")) if isinstance(value, dict) else None
        return self._media_message(params, "document", fake, filename)

    def _get_file(self, params: dict[str, Any]) -> Any:
        fake = self.files.get(str(params.get("file_id")))
        if fake is None:
            raise _bad_request("invalid file_id")
        if fake.file_size > MAX_DOWNLOAD_BYTES:
            raise _bad_request("file is too big")
        return {
            "file_id": fake.file_id,
            "file_unique_id": fake.file_unique_id,
            "file_size": fake.file_size,
            "file_path": fake.file_path,
        }

    def _delete_message(self, params: dict[str, Any]) -> Any:
        sent = self._find(params, "message to delete not found")
        sent.deleted = True
        return True
