"""Reply sink for Slack: posts, native streams or throttled edits, uploads, assistant status."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bots.courier import Courier
from bots.slack.mrkdwn import escape, to_mrkdwn
from core.types import Reply, ReplyKind

log = logging.getLogger("relaybot.slack.sink")

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
# chat.update errors meaning the message can no longer be edited: post a new one instead.
MESSAGE_GONE = frozenset({"message_not_found", "cant_update_message"})


@dataclass(slots=True)
class SinkOptions:
    """Limits and pacing; the defaults follow Slack's documented limits and rate tiers."""

    # chat.postMessage/update: Slack truncates past 40k chars; 4k keeps messages readable.
    message_limit: int = 3_900
    # A markdown block and each markdown_text piece hold at most 12,000 characters.
    stream_limit: int = 11_000
    # chat.update is Tier 3 (~50/min): one edit per second per answer leaves headroom.
    update_interval: float = 1.0
    # Native streams buffer this many characters (or this long) before appendStream.
    stream_buffer: int = 256
    stream_interval: float = 0.5
    max_attempts: int = 4
    max_retry_wait: float = 60.0
    server_error_backoff: float = 0.5


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


def split_text(text: str, limit: int, *, may_defer: bool = False) -> tuple[str, str]:
    """(head, rest) with head ≤ limit, cut at a paragraph, line or word break when possible.

    `may_defer`: the head tops up a message that already holds text, so rather than cut a
    word in two it may be shorter, or empty (everything then starts the next message).
    """
    if len(text) <= limit:
        return text, ""
    window = text[:limit]
    for sep in ("\n\n", "\n", " "):
        cut = window.rfind(sep)
        if cut > limit // 2:
            return text[:cut].rstrip(), text[cut + len(sep) :]
    if may_defer:
        cut = max(window.rfind(" "), window.rfind("\n"))
        return (text[:cut].rstrip(), text[cut + 1 :]) if cut > 0 else ("", text)
    return window, text[limit:]


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
    """mrkdwn for `markdown`; never empty (a lone "1." parses as an empty list item)."""
    return to_mrkdwn(markdown).strip() or escape(markdown.strip()) or "…"


def _markdown_payload(markdown: str, text_prefix: str = "") -> dict[str, Any]:
    """A post/update body: mrkdwn text (notifications, old clients) plus a markdown block."""
    payload: dict[str, Any] = {"text": text_prefix + _fallback_text(markdown)}
    if markdown.strip():
        payload["blocks"] = [{"type": "markdown", "text": markdown}]
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
        self._posted: list[str] = []  # ts of every message this answer created
        self._current_ts: str | None = None
        self._first: str | None = None  # ts of the first of them (told to the sink)
        if sink.continue_in is not None:
            # An earlier run of this answer left this message: write the answer into it by
            # chat.update (a native stream cannot be picked up again).
            self._native = False
            self._current_ts = self._first = sink.continue_in
            self._posted.append(sink.continue_in)
        self._current = ""  # update mode: the markdown the current message should show
        self._current_len = 0  # native mode: characters already streamed into the message
        self._incoming = ""  # appended, not yet taken in by the worker
        self._pending = ""
        self._dirty = False
        self._not_before = 0.0
        self._last_flush = 0.0  # when the last flush finished
        self._retracted = False
        self._closing = False
        self._courier = Courier(self._work, "relaybot:slack-stream")

    async def append(self, delta: str) -> None:
        """Add text; flushed to Slack by the worker on the pacing the mode allows."""
        error = self._courier.take_error()
        if error is not None:
            raise error
        if self._retracted or not delta:
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

    def _take_in(self) -> None:
        """Move appended text into the buffer of the current mode."""
        if not self._incoming:
            return
        if self._native:
            self._pending += self._incoming
        else:
            self._current += self._incoming
            self._dirty = True
        self._incoming = ""

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
            due = now if full else self._last_flush + self._opts.update_interval
        return max(due, self._not_before) - now

    async def _work(self) -> None:
        """Flush buffered text on the mode's pacing until nothing is due."""
        while not (self._retracted or self._closing):
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
        if self._native and self._current_ts is not None:
            await self._stop_native("", retry=True)
        for ts in self._posted:
            try:
                await self._sink.call(
                    self._sink.client.chat_delete, channel=self._sink.channel, ts=ts
                )
            except SlackApiError as err:
                log.warning("could not delete a retracted message: %s", error_name(err))
        self._posted.clear()
        await self._sink.post_markdown(notice)

    async def finish(self) -> None:
        """Flush what is left and end the message(s)."""
        if self._retracted:
            return
        self._closing = True
        await self._courier.settle()
        self._take_in()
        error = self._courier.take_error()
        if error is not None:
            # Nothing was dropped: the final flush sends what the failed call did not.
            log.warning("streaming to Slack failed (%s); sending the rest", error)
        wait = self._not_before - time.monotonic()
        if wait > 0:
            await asyncio.sleep(min(wait, self._opts.max_retry_wait))
        await self._flush(final=True)

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
        while self._native and len(self._pending) + self._current_len > self._opts.stream_limit:
            room = max(self._opts.stream_limit - self._current_len, 1)
            head, rest = split_text(self._pending, room, may_defer=self._current_len > 0)
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
            try:
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
            await call(
                sink.client.chat_appendStream,
                channel=sink.channel,
                ts=self._current_ts,
                markdown_text=piece,
            )
        self._current_len += len(piece)
        self._pending = self._pending[len(piece) :]
        return True

    async def _stop_native(self, piece: str, *, retry: bool) -> None:
        sink = self._sink
        ts = self._current_ts
        if ts is None:
            return
        call = sink.call if retry else _once
        await call(
            sink.client.chat_stopStream,
            channel=sink.channel,
            ts=ts,
            markdown_text=piece or None,
        )
        self._current_ts = None
        self._current_len = 0

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
        sink = self._sink
        call = sink.call if retry else _once
        # While streaming, plain mrkdwn text; the finished message gets the markdown block too.
        payload = _markdown_payload(markdown) if finished else {"text": _fallback_text(markdown)}
        if self._current_ts is not None:
            try:
                await call(
                    sink.client.chat_update, channel=sink.channel, ts=self._current_ts, **payload
                )
                self._dirty = False
                return
            except SlackApiError as err:
                if error_name(err) not in MESSAGE_GONE:
                    raise
                # Deleted, or left by an earlier run and no longer editable: post anew.
                log.warning("cannot update the answer's message (%s); posting a new one", err)
                self._forget(self._current_ts)
        response = await call(
            sink.client.chat_postMessage,
            channel=sink.channel,
            thread_ts=sink.thread_ts,
            **payload,
        )
        self._created(str(response["ts"]))
        self._dirty = False

    def _created(self, ts: str) -> None:
        """A message of this answer now exists; the first one is told to the sink."""
        self._current_ts = ts
        self._posted.append(ts)
        if self._first is None:
            self._first = ts
            self._sink.first_message_created(ts)

    def _forget(self, ts: str) -> None:
        """A message of this answer is gone: a new one takes its place (and, if it was the
        first, is reported as the first)."""
        self._current_ts = None
        if ts in self._posted:
            self._posted.remove(ts)
        if self._first == ts:
            self._first = None


async def _once(
    method: Callable[..., Awaitable[AsyncSlackResponse]], **kwargs: Any
) -> AsyncSlackResponse:
    return await method(**kwargs)


class SlackSink:
    """Where the answers to one Slack message go: a channel thread, a DM, or a DM thread.

    `on_first_message` is told the ts of the first message a streamed answer creates (so a
    successor can continue in it should this process die before the answer is stored).
    `continue_in` is such a message, left by an earlier run of this same answer: the
    streamed answer then updates it (chat.update, never a native stream) instead of
    posting a new one; if Slack no longer lets us update it, a new message is posted after
    all. Only the first message is known: should the earlier run have rolled over into
    more, those stay as they are.
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
        on_first_message: Callable[[str], None] | None = None,
        continue_in: str | None = None,
    ) -> None:
        self.client = client
        self.channel = channel
        self.thread_ts = thread_ts
        self.team_id = team_id
        self.user_id = user_id
        self.assistant_thread = assistant_thread
        self.options = options or SinkOptions()
        self.support = support or StreamingSupport()
        self.call = Caller(self.options)
        self.on_first_message = on_first_message
        self.continue_in = continue_in

    def first_message_created(self, ts: str) -> None:
        """A streamed answer created its first message: tell whoever asked."""
        if self.on_first_message is None:
            return
        try:
            self.on_first_message(ts)
        except Exception:
            log.warning("could not note the message showing an answer", exc_info=True)

    def can_stream_natively(self) -> bool:
        """Native streams are replies in a thread, for a known person."""
        return bool(self.support.native and self.thread_ts and self.user_id and self.team_id)

    async def send(self, reply: Reply) -> None:
        """Post a complete reply; an image is uploaded into the thread with the text as comment."""
        if reply.image is not None:
            await self.call(
                self.client.files_upload_v2,
                channel=self.channel,
                thread_ts=self.thread_ts,
                file=reply.image,
                filename=reply.image_name,
                title=reply.text[:250] or reply.image_name,
                initial_comment=reply.text[:3_000] or None,
            )
            return
        if reply.kind is ReplyKind.ERROR:
            await self.post_text(f":warning: {escape(reply.text)}")
        elif reply.kind is ReplyKind.TRANSCRIPT:
            await self.post_text(f"*Transcript:* {escape(reply.text)}")
        else:
            await self.post_markdown(reply.text)

    async def post_text(self, mrkdwn: str) -> None:
        """Post ready-made mrkdwn text, split to Slack's limits."""
        rest = mrkdwn
        while rest:
            head, rest = split_text(rest, self.options.message_limit)
            await self.call(
                self.client.chat_postMessage,
                channel=self.channel,
                thread_ts=self.thread_ts,
                text=head,
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
                **_markdown_payload(head),
            )

    @asynccontextmanager
    async def stream(self) -> AsyncIterator[SlackStream]:
        """A streamed answer; leaving the block finishes the message(s)."""
        stream = SlackStream(self)
        try:
            yield stream
        finally:
            await stream.finish()

    async def typing(self) -> None:
        """In an assistant thread, show "is thinking..." (Slack clears it when we reply)."""
        if not (self.assistant_thread and self.thread_ts):
            return
        try:
            await self.client.assistant_threads_setStatus(
                channel_id=self.channel, thread_ts=self.thread_ts, status=THINKING
            )
        except SlackApiError as err:
            log.debug("assistant status not set: %s", error_name(err))
