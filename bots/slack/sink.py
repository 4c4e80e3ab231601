"""Reply sink for Slack: posts, native streams or throttled edits, uploads, assistant status."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiolimiter import AsyncLimiter
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bots.answer_messages import AnswerMessages
from bots.budget import preview_wait
from bots.courier import Courier
from bots.slack.events import command_words
from bots.slack.mrkdwn import (
    ZERO_WIDTH_SPACE,
    defuse_pings,
    escape,
    to_mrkdwn,
    unfinished_ping,
    without_hidden_links,
)
from bots.textcut import cut_point
from core.config import FIRST_TOKEN_TIMEOUT
from core.errors import BadInput, NotDelivered
from core.types import Reply, ReplyKind

log = logging.getLogger("relaybot.slack.sink")

# Every post goes without link previews (unfurls). Slack fetches the links of a bot's
# message for one at once, no one clicking (media links by default): a link the model was
# led to write (by a page pasted in, a voice note) would hand the chat's words to whoever
# runs its address. Only chat.postMessage takes these (not chat.update nor the streams).
NO_UNFURLS: dict[str, Any] = {"unfurl_links": False, "unfurl_media": False}
# Errors meaning "this workspace/channel cannot stream natively": fall back to edits.
NO_NATIVE_STREAMING = frozenset(
    {
        "unknown_method",
        "method_deprecated",
        "not_allowed_token_type",
        "missing_scope",
        "feature_not_enabled",
        "method_not_supported_for_channel_type",
    }
)
THINKING = "is thinking..."
# The longest the "is thinking..." call may take (the first reply waits for it to end).
STATUS_WAIT = 2.0
# Slack removes the status two minutes after it was set if no message was sent: while a
# model thinks (up to RELAYBOT_FIRST_TOKEN_TIMEOUT) it is set again this often.
STATUS_REFRESH = 100.0
# chat.update errors meaning the message can no longer be edited: post a new one instead
# (streaming_state_conflict: a native stream still open even after we tried to stop it).
MESSAGE_GONE = frozenset({"message_not_found", "cant_update_message", "streaming_state_conflict"})
# A message of the answer this run wrote is no longer there (someone deleted it mid-answer):
# nothing more of the answer is shown (see `SlackStream.append`).
DELETED = "message_not_found"
# What Slack answers about native streams (see `SlackSink`): chat.update or chat.delete on a
# message still streaming, and chat.appendStream or chat.stopStream on one no longer streaming.
STREAMING_STATE_CONFLICT = "streaming_state_conflict"
CANT_DELETE = "cant_delete_message"
NOT_STREAMING = "message_not_in_streaming_state"
# The message metadata event type tagging every message of an answer, with the inbound
# event's key as payload: a resumed answer finds its messages by it.
ANSWER_EVENT_TYPE = "relaybot_answer"
# Every other text relaybot posts for an event (notices, errors, transcripts) is tagged too,
# as such: the only untagged text messages of ours in a thread are then native streams a
# killed process started (chat.startStream takes no metadata), and a successor adopts them.
NOTICE_EVENT_TYPE = "relaybot_notice"
# A transcript of a voice clip is such a notice too, of its own type: a channel's
# `voicemode transcript` has the bot post one under clips nobody addressed to it, and such
# a thread does not become the bot's (see `SlackAdapter._bot_in_thread`).
TRANSCRIPT_EVENT_TYPE = "relaybot_transcript"
# What posting answers where the bot may not post: a channel it is not a member of, a DM or
# group DM it is not part of (a slash command can be typed in any of them).
CANNOT_POST = frozenset({"not_in_channel", "channel_not_found"})
RESPONSE_URL_TIMEOUT = 5  # seconds for a message sent back through a slash command's URL
# A Markdown code fence line: up to three spaces, then ``` or ~~~ (or longer), info string.
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def answer_metadata(event_key: str, event_type: str = ANSWER_EVENT_TYPE) -> dict[str, Any]:
    """Slack message metadata marking a message as part of the answer to `event_key` (or,
    with NOTICE_EVENT_TYPE or TRANSCRIPT_EVENT_TYPE, as a notice about it)."""
    return {"event_type": event_type, "event_payload": {"event": event_key}}


@dataclass(slots=True)
class SinkOptions:
    """Limits and pacing; the defaults follow Slack's documented limits and rate tiers."""

    # chat.postMessage/update: Slack truncates past 40k chars; 4k keeps messages readable.
    message_limit: int = 3_900
    # chat.update refuses a `text` over about 4,000 bytes (msg_too_long; postMessage takes
    # 40k): an update's mrkdwn text (a preview, or a markdown block's fallback) is cut to fit.
    update_text_bytes: int = 3_900
    # A markdown block and each markdown_text piece hold at most 12,000 characters.
    stream_limit: int = 11_000
    # chat.update is Tier 3 (~50/min per workspace, shared by every answer streamed by
    # edits): one edit per second per answer at most, and `UpdateBudget` keeps the total.
    update_interval: float = 1.0
    updates_per_minute: int = 50  # 0: not counted ahead (Slack's 429s still pace us)
    # The share of that budget previews leave to finished messages.
    preview_reserve: float = 0.25
    # Native streams buffer this many characters (or this long) before appendStream.
    stream_buffer: int = 256
    stream_interval: float = 0.5
    max_attempts: int = 4
    max_retry_wait: float = 60.0
    server_error_backoff: float = 0.5


class UpdateBudget:
    """Shared per adapter: chat.update calls per workspace, counted ahead of Slack's limit.

    A preview edit goes only while `preview_reserve` of the budget stays free, else the
    stream shows a later one. A finished message (or a full one rolling over) is counted
    but never held back: Slack's Tier 3 is "50+" a minute, so this count is a floor, and
    when Slack does refuse, its 429 paces the call. So in a busy workspace answers are not
    held up by each other's previews, and previews no longer bring on the 429s that would
    hold every answer.
    """

    def __init__(self, options: SinkOptions) -> None:
        self._per_minute = options.updates_per_minute
        self._reserve = options.preview_reserve
        self._teams: dict[str, AsyncLimiter] = {}

    def _limiter(self, team: str) -> AsyncLimiter | None:
        if self._per_minute <= 0:
            return None
        limiter = self._teams.get(team)
        if limiter is None:
            limiter = self._teams[team] = AsyncLimiter(self._per_minute, 60.0)
        return limiter

    async def preview(self, team: str) -> float:
        """0 when a preview edit may go now (it is counted), else seconds to wait first."""
        limiter = self._limiter(team)
        if limiter is None:
            return 0.0
        wait = preview_wait(limiter, self._reserve)
        if wait == 0:
            await limiter.acquire()
        return wait

    async def final(self, team: str) -> None:
        """Count an edit that must go (a finished message); it never waits here."""
        limiter = self._limiter(team)
        if limiter is not None and limiter.has_capacity():
            await limiter.acquire()  # room: counted at once


# How long what Slack said about a person or a conversation (`ChannelAdmins`) is believed.
ADMIN_LOOKUP_TTL = 60.0
ADMIN_LOOKUP_TIMEOUT = 5.0  # seconds for each look-up of `ChannelAdmins`
EVERYONE = "*"  # (`ChannelAdmins`) a conversation without a creator above its members
_ADMIN_CACHE_SIZE = 10_000


class ChannelAdmins:
    """Shared per adapter: who may change a channel's conversation for everyone, as far as
    Slack tells a bot (a channel has no admins of its own in Slack's API).

    A workspace admin, owner or primary owner (users.info: `is_admin`, `is_owner`,
    `is_primary_owner`; needs users:read) and the channel's creator (conversations.info:
    `creator`; needs channels:read, groups:read for a private channel, mpim:read for a group
    DM) count; its other members do not. A DM or group DM has no one above the others:
    everyone is trusted alike (None). A look-up that fails (a missing scope, an error, no
    answer in time) says nothing either (None: members are trusted alike, as before), is
    logged at debug level once per kind, and is asked again next time; what Slack answered
    is kept a minute.
    """

    def __init__(self, ttl: float = ADMIN_LOOKUP_TTL) -> None:
        self._ttl = ttl
        self._people: dict[str, tuple[bool, float]] = {}  # user -> (workspace admin, when)
        self._channels: dict[str, tuple[str | None, float]] = {}  # -> (creator or None, when)
        self._logged: set[str] = set()

    def saw_user(self, user: Any) -> None:
        """Keep what a users.info answer (the user object) says of a workspace admin."""
        if isinstance(user, dict) and user.get("id"):
            self._keep(self._people, str(user["id"]), _workspace_admin(user))

    async def administers(self, client: AsyncWebClient, channel: str, user: str) -> bool | None:
        """Whether `user` may change the conversation of `channel` for everyone (None: Slack
        did not say, or there everyone may)."""
        if channel.startswith("D"):
            return None  # a DM
        creator = await self._creator(client, channel)
        if creator == EVERYONE:
            return None
        if creator == user:
            return True
        admin = await self._admin(client, user)
        if admin:
            return True
        if creator is None or admin is None:
            return None  # Slack did not say
        return False

    async def _creator(self, client: AsyncWebClient, channel: str) -> str | None:
        """The creator of a channel, EVERYONE for a DM or group DM, None when Slack did not
        say (only an answer is remembered)."""
        known = self._channels.get(channel)
        if known is not None and self._fresh(known):
            return known[0]
        response = await self._ask(
            "conversations.info", client.conversations_info, channel=channel
        )
        if response is None:
            return None
        info = response.get("channel")
        if not isinstance(info, dict):
            return None
        creator = info.get("creator")
        found = EVERYONE if info.get("is_im") or info.get("is_mpim") else str(creator or "")
        self._keep(self._channels, channel, found or None)
        return found or None

    async def _admin(self, client: AsyncWebClient, user: str) -> bool | None:
        known = self._people.get(user)
        if known is not None and self._fresh(known):
            return known[0]
        response = await self._ask("users.info", client.users_info, user=user)
        if response is None:
            return None
        found = _workspace_admin(response.get("user"))
        self._keep(self._people, user, found)
        return found

    async def _ask(
        self, method: str, call: Callable[..., Awaitable[AsyncSlackResponse]], **kwargs: Any
    ) -> AsyncSlackResponse | None:
        try:
            async with asyncio.timeout(ADMIN_LOOKUP_TIMEOUT):
                return await call(**kwargs)
        except SlackApiError as err:
            reason = error_name(err) or f"HTTP {err.response.status_code}"
        except (aiohttp.ClientError, TimeoutError) as err:
            reason = type(err).__name__
        key = f"{method}: {reason}"
        if key not in self._logged:
            self._logged.add(key)
            # A missing scope (an app installed before it was asked for) lasts until the app
            # is reinstalled: the operator is told; a passing failure is only for debugging.
            level = logging.WARNING if reason == "missing_scope" else logging.DEBUG
            log.log(
                level,
                "cannot tell who administers a channel (%s); its members are trusted alike%s",
                key,
                " (reinstall the Slack app: its manifest asks for users:read, channels:read, "
                "groups:read and mpim:read)"
                if reason == "missing_scope"
                else "",
            )
        return None

    def _fresh(self, known: tuple[Any, float]) -> bool:
        return time.monotonic() - known[1] <= self._ttl

    @staticmethod
    def _keep(cache: dict[str, tuple[Any, float]], key: str, value: Any) -> None:
        if len(cache) >= _ADMIN_CACHE_SIZE:
            cache.clear()
        cache[key] = (value, time.monotonic())


def _workspace_admin(user: Any) -> bool:
    """Whether a users.info user object is a workspace admin, owner or primary owner."""
    if not isinstance(user, dict):
        return False
    return any(bool(user.get(flag)) for flag in ("is_admin", "is_owner", "is_primary_owner"))


@dataclass(slots=True)
class StreamingSupport:
    """Shared per adapter: whether chat.startStream works in this workspace."""

    native: bool = True


def retry_after(err: SlackApiError) -> float | None:
    """Seconds Slack asked us to wait (HTTP 429 Retry-After), or None for other errors."""
    response = err.response
    if response is None or response.status_code != 429:
        return None
    headers: Any = response.headers or {}
    for key in headers:
        if str(key).lower() == "retry-after":
            value = headers[key]
            if isinstance(value, list | tuple):
                value = value[0] if value else None
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return 1.0
    return 1.0


def error_name(err: SlackApiError) -> str:
    """Slack's error string from an API error."""
    response = err.response
    data = getattr(response, "data", None)
    if isinstance(data, dict):
        return str(data.get("error", ""))
    return ""


def open_fence(markdown: str) -> tuple[str, str] | None:
    """(the opening line, the closing marker) of a code block `markdown` leaves open."""
    opened: tuple[str, str] | None = None
    for line in markdown.split("\n"):
        found = _FENCE.match(line)
        if found is None:
            continue
        marker, info = found.groups()
        if opened is None:
            if not (marker[0] == "`" and "`" in info):  # a backtick fence's info has none
                opened = (line.strip(), marker)
        elif marker[0] == opened[1][0] and len(marker) >= len(opened[1]) and not info.strip():
            opened = None
    return opened


def split_text(
    text: str, limit: int, *, may_defer: bool = False, before: str = ""
) -> tuple[str, str]:
    """(head, rest) with head ≤ limit, cut at a paragraph, line or word break when possible,
    never inside a character, nor (where it can be helped) inside bold, a link or code.

    `may_defer`: the head tops up a message that already holds text (`before`), so rather
    than cut a word in two it may be shorter, or empty (everything then starts the next
    message). A cut inside a code block (its fence opened in `before` or the head) closes
    it at the end of the head and opens it again, with the same fence line (language and
    all), at the start of the rest: each message then renders on its own.
    """
    if len(text) <= limit:
        return text, ""
    head, rest = _split(text, limit, may_defer, before)
    fence = open_fence(before + head)
    if fence is None:
        return head, rest
    closing = "\n" + fence[1]
    if len(closing) < limit:
        # Room for the closing fence; the shorter head may no longer be inside the block.
        head, rest = _split(text, limit - len(closing), may_defer, before)
        fence = open_fence(before + head)
        if fence is None:
            return head, rest
    opening, marker = fence
    rest = opening + "\n" + rest.lstrip("\n")
    above, _, last = head.rpartition("\n")
    if last.strip() == opening and (above.strip() or may_defer) and not open_fence(before + above):
        return above.rstrip(), rest  # cut just after the opening line: it goes with the code
    return f"{head}\n{marker}", rest


def _split(text: str, limit: int, may_defer: bool, before: str) -> tuple[str, str]:
    """(head, rest) cut where `cut_point` says: at a break, outside bold, links and code
    (read with `before`, what the message shows already), never inside a character."""
    if len(text) <= limit:
        return text, ""
    cut = cut_point(before + text, len(before) + limit, start=len(before), defer=may_defer)
    cut -= len(before)
    return text[:cut].rstrip(), text[cut:]


class Caller:
    """Calls the Web API, honouring 429 Retry-After by waiting and trying again."""

    def __init__(self, options: SinkOptions) -> None:
        self.options = options

    async def __call__(
        self, method: Callable[..., Awaitable[AsyncSlackResponse]], **kwargs: Any
    ) -> AsyncSlackResponse:
        for attempt in range(1, self.options.max_attempts + 1):
            try:
                return await method(**kwargs)
            except SlackApiError as err:
                delay = retry_after(err)
                status = err.response.status_code if err.response is not None else 0
                if delay is None and status >= 500:
                    # Slack's own trouble: back off and send the same text again.
                    delay = self.options.server_error_backoff * 2 ** (attempt - 1)
                if delay is None or attempt == self.options.max_attempts:
                    raise
                delay = min(delay, self.options.max_retry_wait)
                log.info("slack call failed (%s); retrying in %.1fs", status, delay)
                await asyncio.sleep(delay)
            except aiohttp.ClientError as err:
                if attempt == self.options.max_attempts:
                    raise
                delay = self.options.server_error_backoff * 2 ** (attempt - 1)
                log.info("slack call failed (%s); retrying in %.1fs", type(err).__name__, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


def _fallback_text(markdown: str) -> str:
    """mrkdwn for `markdown`; never empty (a lone "1." parses as an empty list item).

    mrkdwn escapes every "<" of the text, and links only to web and mail addresses: a ping
    defused in a stream's text (`defuse_pings`) needs no zero-width space here."""
    markdown = markdown.replace("<" + ZERO_WIDTH_SPACE, "<")
    return to_mrkdwn(markdown).strip() or escape(markdown.strip()) or "…"


def _fallback_within(markdown: str, limit: int) -> tuple[str, bool]:
    """(`_fallback_text(markdown)`, True), or, where that is over `limit` bytes (UTF-8),
    (that of a head of it, cut at a break (a code block closed), with "…" after it, False).

    The mrkdwn is longer than the markdown where Slack's & < > are escaped, and its bytes
    more than its characters in most languages but English."""
    text = _fallback_text(markdown)
    size = len(text.encode())
    chars = len(markdown)
    whole = True
    while size > limit:
        whole = False
        chars = min(chars - 1, int(chars * limit / size * 0.95))
        if chars <= 0:
            return "…", False
        head, _ = split_text(markdown, chars)
        text = _fallback_text(head) + " …"
        size = len(text.encode())
    return text, whole


def _markdown_payload(markdown: str, text_prefix: str = "") -> dict[str, Any]:
    """A post/update body: mrkdwn text (notifications, old clients) plus a markdown block.

    Slack formats a markdown block itself and does not document that it leaves `<!channel>`
    or `<@U123>` alone: they are defused (`defuse_pings`), as in a stream's markdown_text;
    nor may a link in it hide (`without_hidden_links`).
    """
    payload: dict[str, Any] = {"text": text_prefix + _fallback_text(markdown)}
    if markdown.strip():
        text = without_hidden_links(defuse_pings(markdown))
        payload["blocks"] = [{"type": "markdown", "text": text}]
    return payload


class SlackStream:
    """One streamed answer: native chat.*Stream where possible, else post + throttled edits.

    `append` only records the text: a background worker sends it, one Web API call at a
    time, each carrying everything buffered so far. The model is never kept waiting for
    Slack; a slow call only means fewer, bigger pieces. `finish` sends the rest and waits.
    """

    def __init__(self, sink: SlackSink) -> None:
        self._sink = sink
        self._opts = sink.options
        self._native = sink.can_stream_natively()
        self._messages = AnswerMessages(sink.continue_in, sink.on_messages)
        if self._messages.earlier:
            # They are continued by chat.update (a native stream cannot be picked up again).
            self._native = False
        self._current_ts: str | None = None
        self._current = ""  # update mode: the markdown the current message should show
        self._streamed = ""  # native mode: the markdown already streamed into the message
        self._incoming = ""  # appended, not yet taken in by the worker
        self._pending = ""
        self._dirty = False
        self._not_before = 0.0  # Slack asked us to wait (429) or failed (5xx)
        self._previews_from = 0.0  # the update budget has no room for previews until then
        self._last_flush = 0.0  # when the last flush finished
        self._retracted = False
        self._closing = False
        self._mine: set[str] = set()  # the messages this run created (not an earlier run's)
        self._stopped = False  # a message of the answer was deleted: nothing more is shown
        self._preview_cut = False  # the current message's preview shows only a head of it
        self._courier = Courier(self._work, "relaybot:slack-stream")

    async def append(self, delta: str) -> None:
        """Add text; flushed to Slack by the worker on the pacing the mode allows.

        Slack refusing a call of the worker's for good (not a 429 or 5xx, which only hold
        the flushes) fails the answer with NotDelivered: the model is paid for what it
        wrote, so the core keeps and bills it as partial, and the person is told how to get
        it. Where someone deleted the answer's message, nothing more of it is shown."""
        error = self._courier.take_error()
        if error is not None:
            failure = await self._broken_off(error)
            if failure is error:
                raise error
            raise failure from error
        if self._retracted or self._stopped or not delta:
            return
        self._incoming += delta
        if not self._courier.start() and self._urgent():
            self._courier.wake()

    def _urgent(self) -> bool:
        """Whether buffered text should go out before the pause between flushes is over."""
        if time.monotonic() < self._not_before:
            return False
        if self._native:
            return len(self._pending) + len(self._incoming) >= self._opts.stream_buffer
        return len(self._current) + len(self._incoming) > self._opts.message_limit

    def _take_in(self, *, whole: bool = False) -> None:
        """Move appended text into the buffer of the current mode.

        A native stream's pieces go to Slack as they are, and are not sent again: each is
        defused first, and made to hide no link with what its message shows before it (see
        `_markdown_payload`); unless `whole` (the answer is complete) an end that may yet
        become a ping ("<", "<@", "<!chan") waits for the text after it. Edits send the
        whole message each time, defused then."""
        if not self._incoming:
            return
        if not self._native:
            self._current += self._incoming
            self._dirty = True
            self._incoming = ""
            return
        held = 0 if whole else unfinished_ping(self._incoming)
        text = self._incoming[: len(self._incoming) - held]
        self._incoming = self._incoming[len(text) :]
        before = self._streamed + self._pending
        shown = without_hidden_links(before + defuse_pings(text), len(before))
        self._pending += shown[len(before) :]

    def _due_in(self) -> float | None:
        """Seconds until the next flush (0 or less: now), or None when nothing waits."""
        now = time.monotonic()
        if self._native:
            if not self._pending:
                return None
            full = len(self._pending) >= self._opts.stream_buffer
            due = now if full else self._last_flush + self._opts.stream_interval
        else:
            if not (self._dirty and self._current.strip()):
                return None
            full = len(self._current) > self._opts.message_limit
            due = (
                now
                if full
                else max(self._last_flush + self._opts.update_interval, self._previews_from)
            )
        return max(due, self._not_before) - now

    async def _broken_off(self, error: Exception) -> Exception:
        """What the answer fails with after the worker's call failed with `error`."""
        if not isinstance(error, SlackApiError):
            return error  # not Slack's answer (a bug): as it is
        if error_name(error) == DELETED:
            self._stopped = True
            log.info("a message of the answer was deleted; showing no more of it")
        refused = await self._sink._refused(error)  # the bot is not in the conversation
        return refused if refused is not None else _not_delivered(error, shown_whole=False)

    async def _work(self) -> None:
        """Flush buffered text on the mode's pacing until nothing is due."""
        while not (self._retracted or self._closing or self._stopped):
            self._take_in()
            wait = self._due_in()
            if wait is None:
                return
            if wait > 0:
                await self._courier.pause(wait)
                continue
            await self._flush(final=False)

    async def retract(self, notice: str) -> None:
        """Remove what was shown and leave only `notice`."""
        self._retracted = True
        await self._courier.settle()
        self._courier.take_error()
        self._incoming = ""
        if self._native and self._current_ts is not None and not self._stopped:
            await self._stop_native("", retry=True)
        await self._delete_all(self._messages.keep_only(None))
        await self._sink.post_markdown(command_words(notice))

    async def finish(self) -> None:
        """Flush what is left and end the message(s); delete those an earlier run left that
        the answer did not need. (Not where its message was deleted: nothing more is shown.)"""
        if self._retracted or self._stopped:
            return
        self._closing = True
        await self._courier.settle()
        self._take_in(whole=True)
        error = self._courier.take_error()
        if error is not None:
            # Nothing was dropped: the final flush sends what the failed call did not.
            log.warning("streaming to Slack failed (%s); sending the rest", error)
        wait = self._not_before - time.monotonic()
        if wait > 0:
            await asyncio.sleep(min(wait, self._opts.max_retry_wait))
        try:
            await self._flush(final=True)
        finally:
            if self._messages.earlier:
                await self._delete_all(self._messages.unused())

    def shown_whole(self) -> bool:
        """Whether the person sees all the text appended (its last call may have failed all
        the same: a native stream's chat.stopStream carrying no text, or the final update of
        a message whose preview already showed all of it)."""
        if self._incoming or self._stopped:
            return False
        return not self._pending if self._native else not (self._dirty or self._preview_cut)

    # -- flushing --------------------------------------------------------------------------
    async def _flush(self, *, final: bool) -> None:
        try:
            if self._native:
                await self._flush_native(final)
            if not self._native:
                await self._flush_updates(final)
        except SlackApiError as err:
            delay = retry_after(err)
            status = err.response.status_code if err.response is not None else 0
            if delay is None and status >= 500:
                delay = self._opts.server_error_backoff
            if delay is None or final:
                raise
            # Honour Retry-After (or Slack's 5xx): keep buffering, flush later; the final
            # flush retries.
            self._not_before = time.monotonic() + delay
            log.info("slack call failed (%s); holding edits for %.1fs", status, delay)
        except aiohttp.ClientError:
            if final:
                raise
            self._not_before = time.monotonic() + self._opts.server_error_backoff
        finally:
            self._last_flush = time.monotonic()

    async def _flush_native(self, final: bool) -> None:
        # A streamed message holds stream_limit characters; past that, end it and start anew.
        while self._native and len(self._pending) + len(self._streamed) > self._opts.stream_limit:
            room = max(self._opts.stream_limit - len(self._streamed), 1)
            head, rest = split_text(
                self._pending, room, may_defer=bool(self._streamed), before=self._streamed
            )
            if head and not await self._send_native(head, retry=final):
                return
            await self._stop_native("", retry=True)
            self._pending = rest.lstrip("\n")
        if not self._native:
            return
        if final:
            started = self._current_ts is not None or not self._pending
            if not started and not await self._send_native(self._pending, retry=True):
                return
            await self._stop_native(self._pending, retry=True)
            self._pending = ""
        elif self._pending:
            await self._send_native(self._pending, retry=False)

    async def _send_native(self, piece: str, *, retry: bool) -> bool:
        """Start the stream (first call) or append `piece`; False when we fell back to edits."""
        sink = self._sink
        call = sink.call if retry else _once
        if self._current_ts is None:
            await sink.status_settled()
            try:
                # chat.startStream takes no metadata: the message is tagged when it stops.
                response = await call(
                    sink.client.chat_startStream,
                    channel=sink.channel,
                    thread_ts=sink.thread_ts,
                    recipient_team_id=sink.team_id,
                    recipient_user_id=sink.user_id,
                    markdown_text=piece or None,
                )
            except SlackApiError as err:
                if retry_after(err) is not None:
                    raise
                self._fall_back(err)
                return False
            self._created(str(response["ts"]))
        elif piece:
            try:
                await call(
                    sink.client.chat_appendStream,
                    channel=sink.channel,
                    ts=self._current_ts,
                    markdown_text=piece,
                )
            except SlackApiError as err:
                if error_name(err) != NOT_STREAMING:
                    raise
                self._stream_closed()
                return False
        self._streamed += piece
        self._pending = self._pending[len(piece) :]
        return True

    async def _stop_native(self, piece: str, *, retry: bool) -> None:
        sink = self._sink
        ts = self._current_ts
        if ts is None:
            return
        call = sink.call if retry else _once
        try:
            await call(
                sink.client.chat_stopStream,
                channel=sink.channel,
                ts=ts,
                markdown_text=piece or None,
                metadata=sink.metadata,
            )
        except SlackApiError as err:
            if error_name(err) != NOT_STREAMING:
                raise
            # Slack ended the stream itself and shows the message as broken: chat.update
            # is the way to finish it.
            log.info("slack had ended an answer's stream; finishing it by chat.update")
            await self._update(ts, self._streamed + piece, call, finished=True)
        self._current_ts = None
        self._streamed = ""

    def _stream_closed(self) -> None:
        """Slack ended the current stream before we did: go on in that message by updates."""
        log.info("slack had ended an answer's stream; going on with message edits")
        self._native = False
        self._current = self._streamed + self._pending
        self._streamed = self._pending = ""
        self._dirty = bool(self._current)

    def _fall_back(self, err: SlackApiError) -> None:
        name = error_name(err)
        log.info("native streaming unavailable (%s); using message edits", name or "error")
        if name in NO_NATIVE_STREAMING:
            self._sink.support.native = False
        self._native = False
        self._current = self._pending
        self._pending = ""
        self._dirty = bool(self._current)

    async def _flush_updates(self, final: bool) -> None:
        while len(self._current) > self._opts.message_limit:
            head, rest = split_text(self._current, self._opts.message_limit)
            await self._write_current(head, finished=True, retry=True)
            self._current_ts = None
            self._current = rest.lstrip("\n")
            self._dirty = bool(self._current)
        if self._dirty and self._current.strip():
            await self._write_current(self._current, finished=final, retry=final)
        elif final and self._current_ts is not None and self._current.strip():
            await self._write_current(self._current, finished=True, retry=True)

    async def _write_current(self, markdown: str, *, finished: bool, retry: bool) -> None:
        """Show `markdown` in the message being written: update it, or, when there is none
        yet, the next message an earlier run left, or else post a new one."""
        sink = self._sink
        call = sink.call if retry else _once
        if self._current_ts is None:
            self._current_ts = self._messages.next_earlier()
        if self._current_ts is not None:
            team = sink.team_id or ""
            if retry:  # a message that must show this text
                await sink.budget.final(team)
            else:  # a preview: only from the budget finished messages leave spare
                wait = await sink.budget.preview(team)
                if wait > 0:
                    self._previews_from = time.monotonic() + wait
                    return
            try:
                whole = await self._update(self._current_ts, markdown, call, finished=finished)
                self._dirty = False
                self._preview_cut = not whole
                return
            except SlackApiError as err:
                name = error_name(err)
                if name not in MESSAGE_GONE or (
                    name == DELETED and self._current_ts in self._mine
                ):
                    raise  # (deleted, and this run posted it: see `append`)
                # An earlier run's, deleted or no longer editable: post anew.
                log.warning("cannot update the answer's message (%s); posting a new one", err)
                await self._replace(self._current_ts)
        await sink.status_settled()
        # While streaming, plain mrkdwn text; the finished message gets the markdown block too.
        payload = _markdown_payload(markdown) if finished else {"text": _fallback_text(markdown)}
        response = await call(
            sink.client.chat_postMessage,
            channel=sink.channel,
            thread_ts=sink.thread_ts,
            metadata=sink.metadata,
            **NO_UNFURLS,
            **payload,
        )
        self._created(str(response["ts"]))
        self._dirty = False
        self._preview_cut = False

    async def _update(
        self, ts: str, markdown: str, call: Caller | _Call, *, finished: bool
    ) -> bool:
        """chat.update one of the answer's messages (tagged, as a post is) to show
        `markdown`: while streaming as mrkdwn text, `finished` with the markdown block too.
        The text is cut to what chat.update takes (`_fallback_within`): a preview then shows
        less until its message is finished (False: it does not show all); a markdown
        block's fallback is only for notifications.

        An earlier run's native stream that was never stopped refuses updates: it is
        stopped first (see `SlackSink`).
        """
        sink = self._sink
        payload = _markdown_payload(markdown) if finished else {}
        payload["text"], whole = _fallback_within(markdown, self._opts.update_text_bytes)
        try:
            await call(
                sink.client.chat_update,
                channel=sink.channel,
                ts=ts,
                metadata=sink.metadata,
                **payload,
            )
            return whole or finished
        except SlackApiError as err:
            if error_name(err) != STREAMING_STATE_CONFLICT:
                raise
        log.info("an earlier run left an answer's stream open; stopping it to update it")
        await self._end_stream(ts)
        await call(
            sink.client.chat_update, channel=sink.channel, ts=ts, metadata=sink.metadata, **payload
        )
        return whole or finished

    async def _end_stream(self, ts: str) -> bool:
        """Stop a native stream an earlier run left open; False when there was none to stop
        (message_not_in_streaming_state: not a stream, or Slack ended it) or stopping failed."""
        sink = self._sink
        try:
            await sink.call(sink.client.chat_stopStream, channel=sink.channel, ts=ts)
        except SlackApiError as err:
            if error_name(err) != NOT_STREAMING:
                log.info("could not stop an earlier run's stream: %s", error_name(err))
            return False
        return True

    async def _delete(self, ts: str) -> None:
        """Delete one of the answer's messages (best effort: failures are logged)."""
        sink = self._sink
        for attempt in (1, 2):
            try:
                await sink.call(sink.client.chat_delete, channel=sink.channel, ts=ts)
                return
            except SlackApiError as err:
                name = error_name(err)
                # An open native stream refuses deletion (cant_delete_message) until stopped.
                if attempt == 1 and name == CANT_DELETE and await self._end_stream(ts):
                    continue
                log.warning("could not delete a message of an answer: %s", name or err)
                return
            except aiohttp.ClientError as err:
                log.warning("could not delete a message of an answer: %s", type(err).__name__)
                return

    async def _replace(self, ts: str) -> None:
        """A message of this answer cannot be updated: a new one takes its place."""
        self._current_ts = None
        await self._delete_all(self._messages.lost(ts))

    async def _delete_all(self, messages: list[str]) -> None:
        """Delete messages of this answer (an earlier run's it no longer needs)."""
        for ts in messages:
            await self._delete(ts)
        self._messages.report()

    def _created(self, ts: str) -> None:
        """A message of this answer now exists."""
        self._current_ts = ts
        self._mine.add(ts)
        self._messages.created(ts)


_Call = Callable[..., Awaitable[AsyncSlackResponse]]


def _not_delivered(err: Exception, shown_whole: bool) -> NotDelivered:
    """What the core is told when Slack did not take (all of) an answer (mid-way, the core
    puts "The answer was cut short: " before the person's line)."""
    detail = error_name(err) if isinstance(err, SlackApiError) else ""
    if detail == DELETED:
        told = "Someone deleted the answer's message in Slack. Send /retry to get it again."
    else:
        told = "Slack did not take the whole answer. Send /retry in a minute to get it again."
    return NotDelivered(
        f"Slack did not take the answer: {detail or type(err).__name__}",
        shown_all=shown_whole,
        user_message=told,
    )


async def _once(
    method: Callable[..., Awaitable[AsyncSlackResponse]], **kwargs: Any
) -> AsyncSlackResponse:
    return await method(**kwargs)


class SlackSink:
    """Where the answers to one Slack message go: a channel thread, a DM, or a DM thread.

    `on_messages` is told, whenever they change, the ts of the messages a streamed answer
    consists of, in order (so a successor can continue in them should this process die
    before the answer is stored). `continue_in` are such messages, left by an earlier run of
    this same answer: the streamed answer then updates them in order (chat.update, never a
    native stream), rolling over from one into the next, and deletes those it does not
    need. A message Slack no longer lets us update is replaced by a new post; the
    remembered messages after it would then stand above the answer's rest, out of order, so
    they are deleted. A failed deletion is logged and left.

    `tag` (the inbound event's key) goes into every answer message as Slack message
    metadata (event type `relaybot_answer`), so a successor can find the messages even when
    the note of them never reached the database: `find_earlier` does that look-up, once,
    when a resumed answer knows no messages. chat.postMessage, chat.update and
    chat.stopStream take `metadata`; chat.startStream does not (its documented arguments:
    channel, thread_ts, recipient_*, markdown_text, chunks, task_display_mode, icon_*,
    username; docs.slack.dev/reference/methods/chat.startStream and .../chat.stopStream).
    A native stream is therefore tagged only when it stops. Every other text message a sink
    posts carries metadata too (notices as `relaybot_notice`), so the look-up takes an
    untagged text message of the bot's, after the person's message in the thread, for a
    stream a killed process started for this answer (only one answer of a thread is in
    progress at a time).

    Native streams a killed process left open (Slack documents none of this; public reports):
    Slack ends a stream by itself within about 5 minutes (reports differ on idle or total
    time); after that chat.appendStream and chat.stopStream answer
    `message_not_in_streaming_state` and the message shows as broken until chat.update
    rewrites it (python-slack-sdk issue #1859 and PR #1880: "the only recovery path is
    chat.update"; node-slack-sdk issue #2702; vercel/chat issues #607, #637). While it is
    still open, chat.update answers `streaming_state_conflict` and chat.delete
    `cant_delete_message` (from third-party code built on recorded Slack responses, not from
    Slack's docs). So: an update or deletion that meets an open stream stops it
    (chat.stopStream, same bot token) and tries again once; a stream of our own that Slack
    ended is finished, and continued, by chat.update.

    `response_url` (a slash command's): where Slack refuses our posts because the bot is not
    in the conversation (`CANNOT_POST`: a channel it was not invited to, other people's DMs
    and group DMs, where slash commands work all the same), the person is told there, only
    them, how to bring the bot in (`bot_user_id` names it); the answer then fails as a
    BadInput carrying that advice, and the sink's other replies go nowhere.
    """

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        channel: str,
        thread_ts: str | None,
        team_id: str | None = None,
        user_id: str | None = None,
        assistant_thread: bool = False,
        options: SinkOptions | None = None,
        support: StreamingSupport | None = None,
        budget: UpdateBudget | None = None,
        on_messages: Callable[[tuple[str, ...]], None] | None = None,
        continue_in: tuple[str, ...] = (),
        tag: str | None = None,
        find_earlier: Callable[[], Awaitable[tuple[str, ...]]] | None = None,
        response_url: str | None = None,
        bot_user_id: str | None = None,
        admins: ChannelAdmins | None = None,
        status_for: float = FIRST_TOKEN_TIMEOUT,
    ) -> None:
        self.client = client
        self.channel = channel
        self.thread_ts = thread_ts
        self.team_id = team_id
        self.user_id = user_id
        self.assistant_thread = assistant_thread
        self.options = options or SinkOptions()
        self.support = support or StreamingSupport()
        self.budget = budget or UpdateBudget(self.options)
        self.call = Caller(self.options)
        self.on_messages = on_messages
        self.continue_in = continue_in
        self.metadata = answer_metadata(tag) if tag is not None else None
        self.notice_metadata = answer_metadata(tag, NOTICE_EVENT_TYPE) if tag is not None else None
        self.transcript_metadata = (
            answer_metadata(tag, TRANSCRIPT_EVENT_TYPE) if tag is not None else None
        )
        self.find_earlier = find_earlier
        self.response_url = response_url
        self.bot_user_id = bot_user_id
        self.admins = admins
        self._shut_out: BadInput | None = None  # Slack refused our posts; the person knows
        self._status_task: asyncio.Task[None] | None = None  # "is thinking..." being kept up
        self._status_for = status_for
        self._status_stop = asyncio.Event()  # a reply is posted (or the run ended): stop it

    def can_stream_natively(self) -> bool:
        """Native streams are replies in a thread, for a known person."""
        return bool(self.support.native and self.thread_ts and self.user_id and self.team_id)

    async def send(self, reply: Reply) -> None:
        """Post a complete reply; an image is uploaded into the thread with the text as comment."""
        if self._shut_out is not None:
            if reply.kind in (ReplyKind.ERROR, ReplyKind.NOTICE):
                return  # the person was told why nothing can be posted
            raise self._shut_out
        await self.status_settled()
        try:
            await self._send(reply)
        except SlackApiError as err:
            refused = await self._refused(err)
            if refused is None:
                raise
            raise refused from err

    async def _refused(self, err: SlackApiError) -> BadInput | None:
        """Where Slack refused a post because the bot is not in the conversation and the
        person can be told through the slash command's response_url: tell them (once) and
        return the error the answer fails with. None for every other error."""
        if self.response_url is None or error_name(err) not in CANNOT_POST:
            return None
        if self._shut_out is None:
            bot = f"<@{self.bot_user_id}>" if self.bot_user_id else "the bot"
            advice = (
                f"I can't post in this conversation: I'm not a member of it. Invite me to "
                f"the channel (/invite {bot}) and try again, or talk to me in a DM."
            )
            self._shut_out = BadInput(
                f"slack refused the post: {error_name(err)}", user_message=advice
            )
            await self._tell_privately(advice)
        return self._shut_out

    async def _tell_privately(self, text: str) -> None:
        """Send `text` to the person who typed the slash command, seen by them only."""
        assert self.response_url is not None
        webhook = AsyncWebhookClient(
            self.response_url, timeout=RESPONSE_URL_TIMEOUT, session=self.client.session
        )
        try:
            response = await webhook.send(text=text, response_type="ephemeral")
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("could not answer through the response_url: %s", type(err).__name__)
            return
        if response.status_code != 200:
            log.warning("the response_url answered HTTP %s", response.status_code)

    async def _send(self, reply: Reply) -> None:
        if reply.image is not None:
            await self.call(
                self.client.files_upload_v2,
                channel=self.channel,
                thread_ts=self.thread_ts,
                file=reply.image,
                filename=reply.image_name,
                title=reply.text[:250] or reply.image_name,
                # mrkdwn, where a prompt's "<!channel>" would ping the channel: escaped.
                initial_comment=escape(reply.text[:3_000]) or None,
            )
            return
        if reply.kind is ReplyKind.ERROR:
            await self.post_text(f":warning: {escape(command_words(reply.text))}")
        elif reply.kind is ReplyKind.TRANSCRIPT:
            await self.post_text(
                f"*Transcript:* {escape(reply.text)}", metadata=self.transcript_metadata
            )
        elif reply.kind is ReplyKind.NOTICE:
            await self.post_markdown(command_words(reply.text))
        else:
            await self.post_markdown(reply.text)

    async def post_text(self, mrkdwn: str, *, metadata: dict[str, Any] | None = None) -> None:
        """Post ready-made mrkdwn text, split to Slack's limits (tagged as a notice, or with
        `metadata`)."""
        rest = mrkdwn
        while rest:
            head, rest = split_text(rest, self.options.message_limit)
            await self.call(
                self.client.chat_postMessage,
                channel=self.channel,
                thread_ts=self.thread_ts,
                text=head,
                metadata=metadata or self.notice_metadata,
                **NO_UNFURLS,
            )

    async def post_markdown(self, markdown: str) -> None:
        """Post Markdown as one or more messages (markdown block + mrkdwn fallback)."""
        rest = markdown
        while rest.strip():
            head, rest = split_text(rest, self.options.message_limit)
            await self.call(
                self.client.chat_postMessage,
                channel=self.channel,
                thread_ts=self.thread_ts,
                metadata=self.notice_metadata,
                **NO_UNFURLS,
                **_markdown_payload(head),
            )

    @asynccontextmanager
    async def stream(self) -> AsyncIterator[SlackStream]:
        """A streamed answer; leaving the block finishes the message(s)."""
        if not self.continue_in and self.find_earlier is not None:
            find, self.find_earlier = self.find_earlier, None
            self.continue_in = await find()
        stream = SlackStream(self)
        try:
            try:
                yield stream
            except BaseException:
                try:
                    await stream.finish()
                except SlackApiError as err:
                    # What went wrong first is what the person is told (where the bot may
                    # not post, _refused sends them the advice privately).
                    if await self._refused(err) is None:
                        log.warning("the rest of a failed answer was not posted: %s", err)
                except aiohttp.ClientError as err:
                    log.warning("the rest of a failed answer was not posted: %r", err)
                raise
            try:
                await stream.finish()
            except SlackApiError as err:
                if await self._refused(err) is not None:
                    raise  # (the person was told why, below)
                raise _not_delivered(err, stream.shown_whole()) from err
            except aiohttp.ClientError as err:
                raise _not_delivered(err, stream.shown_whole()) from err
        except SlackApiError as err:
            refused = await self._refused(err)
            if refused is None:
                raise
            raise refused from err

    async def chat_admin(self, sender_id: str) -> bool | None:
        """Whether `sender_id` may change this channel's conversation for everyone: its
        creator and the workspace's admins and owners may (`ChannelAdmins`); None in a DM,
        a group DM, or where Slack would not say (members are then trusted alike).
        RELAYBOT_ADMINS still applies."""
        if self.admins is None:
            return None
        return await self.admins.administers(self.client, self.channel, sender_id)

    async def typing(self) -> None:
        """In an assistant thread, show "is thinking..." (Slack clears it when we reply), in
        the background: the model is asked meanwhile, not after a slow Slack answered. The
        first reply waits for it (`status_settled`), or the status would outlast it. Slack
        drops the status after two minutes without a message, so while no reply is posted it
        is set again every STATUS_REFRESH, for at most `status_for` (the wait for a model's
        first words), and no longer once the run that asked for it has ended."""
        if not (self.assistant_thread and self.thread_ts):
            return
        if self._status_task is None:
            self._status_task = asyncio.create_task(self._keep_status())
            run = asyncio.current_task()
            if run is not None:
                run.add_done_callback(lambda _: self._status_stop.set())

    async def _keep_status(self) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + self._status_for
        while True:
            await self._set_status()
            pause = STATUS_REFRESH
            if self._status_stop.is_set() or loop.time() + pause >= until:
                return
            try:
                async with asyncio.timeout(pause):
                    await self._status_stop.wait()
                return  # a reply is being posted: Slack clears the status itself
            except TimeoutError:
                if self._status_stop.is_set():
                    return

    async def _set_status(self) -> None:
        thread_ts = self.thread_ts or ""  # (typing() starts this only in a thread)
        try:
            async with asyncio.timeout(STATUS_WAIT):
                await self.client.assistant_threads_setStatus(
                    channel_id=self.channel, thread_ts=thread_ts, status=THINKING
                )
        except SlackApiError as err:
            log.debug("assistant status not set: %s", error_name(err))
        except Exception as err:
            # A dropped connection, a slow Slack, a client closing: the status is
            # decoration, the answer is what the person asked for.
            log.info("assistant status not set: %s", type(err).__name__)

    async def status_settled(self) -> None:
        """Stop refreshing "is thinking..." and wait for a call in flight to end (at most
        STATUS_WAIT after it began): none lands after the reply."""
        task = self._status_task
        if task is None:
            return
        self._status_stop.set()
        if not task.done():
            await asyncio.shield(task)
