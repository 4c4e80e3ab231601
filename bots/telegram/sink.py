"""The reply sink for one Telegram message: formatted sends, streamed drafts and edits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from telegram import LinkPreviewOptions, Message, ReplyParameters
from telegram.constants import ChatAction, ChatMemberStatus, ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.ext import ExtBot

from bots.answer_messages import AnswerMessages
from bots.courier import Courier
from bots.telegram.delivery import (
    fits_photo_limits,
    is_gone,
    is_not_modified,
    is_parse_error,
    may_have_arrived,
    retry_seconds,
    with_retry,
)
from bots.telegram.formatting import (
    MAX_CAPTION_UTF16,
    MAX_MESSAGE_UTF16,
    SEGMENT_UTF16,
    markdown_to_html,
    split_markdown,
    split_once,
    utf16_len,
    visible_text,
)
from bots.telegram.limits import PREVIEW, PreviewDeferred
from core.errors import NotDelivered
from core.policy import AdminCheckFailed
from core.types import EVERY_VOICE_NOTE, Reply, ReplyKind

log = logging.getLogger("relaybot.telegram")

T = TypeVar("T")

# Every text goes without a link preview. Telegram's servers fetch a message's first link
# for one at once, no one clicking: a link the model was led to write (by a page pasted in,
# a voice note) would hand the chat's words to whoever runs its address.
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)

# The longest a visible message waits for a "typing…" call still in flight. Telegram shows
# the action for about 5 s from when it arrives, even under a message sent before it: so
# none may arrive after the answer's first message. One slower than this is given up.
TYPING_WAIT = 2.0


@dataclass(frozen=True, slots=True)
class Pacing:
    """How often a streamed answer is pushed to Telegram.

    Drafts in private chats are cheap previews; edits in groups count against the
    ~20 messages per minute a bot may send to one group (previews use only what finished
    messages leave spare: `bots.telegram.limits`). An interval counts from the end of the
    previous preview, and only one is ever in flight.
    """

    draft_interval: float = 0.5
    edit_interval: float = 3.0
    typing_refresh: float = 4.5
    typing_max: float = 120.0


def _html_or_none(markdown: str) -> str | None:
    """Telegram HTML for `markdown`, or None when it would not fit one message."""
    for pad_tables in (True, False):  # a table's aligned columns may not fit: then unaligned
        rendered = markdown_to_html(markdown, pad_tables=pad_tables)
        visible = visible_text(rendered)
        if not visible.strip():
            return None  # formatting that shows nothing (Telegram: "message text is empty")
        if utf16_len(visible) <= MAX_MESSAGE_UTF16:
            return rendered
    return None


# Said when a group asks for every voice note while the bot's privacy mode is on.
PRIVACY_MODE_NOTE = (
    "\n\nBut this bot's privacy mode is on, so Telegram sends it only the voice notes that "
    "mention it or reply to it. Its owner can turn that off in @BotFather: /setprivacy, "
    "then Disable."
)


def not_delivered(err: TelegramError, *, shown_all: bool = False) -> NotDelivered:
    """What the core is told when Telegram did not take (all of) an answer (`shown_all`:
    the person sees all of it all the same, only its last edit failed)."""
    return NotDelivered(
        f"Telegram did not take the answer: {type(err).__name__}: {err}",
        shown_all=shown_all,
        user_message="Telegram did not take the whole answer. Send /retry in a minute to get "
        "it again.",
    )


@contextlib.contextmanager
def unconfirmed() -> Iterator[None]:
    """Around a finished message's send: a timeout after which it may have arrived is
    logged, not raised. Sending it again could show it twice, and an error notice would
    tell the person it failed when it is likely there."""
    try:
        yield
    except TimedOut as err:
        if not may_have_arrived(err):
            raise
        log.warning(
            "Telegram did not confirm a message (%s); it may have arrived, so it is not "
            "sent again",
            type(err.__cause__ or err).__name__,
        )


class TelegramSink:
    """Answers one incoming message: in its chat and forum topic, replying to it.

    `on_messages` is told, whenever they change, the ids of the messages a streamed answer
    consists of, in order (so a successor can continue in them should this process die
    before the answer is stored). `continue_in` are such messages, left by an earlier run
    of this same answer: the streamed answer then edits them in order instead of sending new
    ones (no drafts, even in private chats), rolling over from one into the next, and
    deletes those it does not need. A message Telegram no longer lets us edit is replaced
    by a new one; the remembered messages after it would then stand above the answer's
    rest, out of order, so they are deleted. A failed deletion is logged and left.
    """

    def __init__(
        self,
        bot: ExtBot[Any],
        chat_id: int,
        *,
        private: bool,
        thread_id: int | None = None,
        reply_to: int | None = None,
        pacing: Pacing | None = None,
        on_messages: Callable[[tuple[int, ...]], None] | None = None,
        continue_in: tuple[int, ...] = (),
        hears_all: bool = True,
    ) -> None:
        self.bot = bot
        self.hears_all = hears_all
        self.chat_id = chat_id
        self.private = private
        self.thread_id = thread_id
        self.reply_to = reply_to
        self.pacing = pacing or Pacing()
        self.on_messages = on_messages
        self.continue_in = continue_in
        self._replied = False
        self._typing_task: asyncio.Task[None] | None = None  # the refresher
        self._chat_action_task: asyncio.Task[None] | None = None  # its call in flight
        # The bot may no longer write here (kicked from the group, blocked by the person):
        # nothing more is sent, and the answer counts as delivered to nobody.
        self.gone = False

    def chat_gone(self, err: Forbidden) -> None:
        """Telegram refused us the chat: note it (once), send nothing more to it."""
        if not self.gone:
            self.gone = True
            log.warning("cannot write to Telegram chat %s any more: %s", self.chat_id, err.message)

    def _migrated(self, err: ChatMigrated) -> None:
        """The group became a supergroup (a new chat id): answer there from now on. The
        supergroup's messages are numbered anew, so the person's message is not quoted."""
        log.info("Telegram chat %s is now supergroup %s", self.chat_id, err.new_chat_id)
        self.chat_id = int(err.new_chat_id)
        self.reply_to = None

    async def _call(
        self, call: Callable[[], Awaitable[T]], attempts: int = 4, *, repeatable: bool = True
    ) -> T:
        """`with_retry`, following the chat once should Telegram say it moved. `call` must
        read the chat (and what else the move changes) from the sink when it runs."""
        try:
            return await with_retry(call, attempts, repeatable=repeatable)
        except ChatMigrated as err:
            self._migrated(err)
            return await with_retry(call, attempts, repeatable=repeatable)

    # -- low-level sends -------------------------------------------------------------------
    def _where(self) -> dict[str, Any]:
        where: dict[str, Any] = {"chat_id": self.chat_id}
        if self.thread_id is not None:
            where["message_thread_id"] = self.thread_id
        return where

    def _reply_parameters(self) -> ReplyParameters | None:
        """Quote the person's message on the first message of a reply only."""
        if self.reply_to is None or self._replied:
            return None
        return ReplyParameters(message_id=self.reply_to, allow_sending_without_reply=True)

    async def send_text(
        self, html_text: str | None, plain: str, *, attempts: int = 4, limit: str | None = None
    ) -> Message:
        """Send one message: HTML when given, resent once as plain text if Telegram refuses it.

        A 429 is waited out up to `attempts` times (1: raise RetryAfter at once). `limit` goes
        to the rate limiter (`PREVIEW`: a preview, sent only when the budget has room).
        """
        message, _ = await self.send_shown(html_text, plain, attempts=attempts, limit=limit)
        return message

    async def send_shown(
        self, html_text: str | None, plain: str, *, attempts: int = 4, limit: str | None = None
    ) -> tuple[Message, str]:
        """`send_text`, and the text the message shows as a person reads it (no formatting)."""
        if html_text is not None:
            try:
                message = await self._call(
                    lambda: self.bot.send_message(
                        text=html_text,
                        parse_mode=ParseMode.HTML,
                        link_preview_options=NO_PREVIEW,
                        reply_parameters=self._reply_parameters(),
                        rate_limit_args=limit,
                        **self._where(),
                    ),
                    attempts,
                    repeatable=False,
                )
            except BadRequest as err:
                if not is_parse_error(err):
                    raise
                log.warning("Telegram refused our HTML (%s); resending as plain text", err)
            else:
                self._replied = True
                return message, visible_text(html_text)
        message = await self._call(
            lambda: self.bot.send_message(
                text=plain,
                link_preview_options=NO_PREVIEW,
                reply_parameters=self._reply_parameters(),
                rate_limit_args=limit,
                **self._where(),
            ),
            attempts,
            repeatable=False,
        )
        self._replied = True
        return message, plain

    async def edit_text(
        self,
        message_id: int,
        html_text: str | None,
        plain: str,
        *,
        attempts: int = 4,
        limit: str | None = None,
    ) -> str:
        """Replace a message's text; "message is not modified" counts as done. `attempts` and
        `limit` as for `send_text`. Returns the text the message now shows, as a person
        reads it (no formatting)."""
        shown = plain
        try:
            if html_text is not None:
                shown = visible_text(html_text)
                try:
                    await self._call(
                        lambda: self.bot.edit_message_text(
                            text=html_text,
                            chat_id=self.chat_id,
                            message_id=message_id,
                            parse_mode=ParseMode.HTML,
                            link_preview_options=NO_PREVIEW,
                            rate_limit_args=limit,
                        ),
                        attempts,
                    )
                    return shown
                except BadRequest as err:
                    if not is_parse_error(err):
                        raise
                    log.warning("Telegram refused our HTML (%s); editing as plain text", err)
                shown = plain
            await self._call(
                lambda: self.bot.edit_message_text(
                    text=plain,
                    chat_id=self.chat_id,
                    message_id=message_id,
                    link_preview_options=NO_PREVIEW,
                    rate_limit_args=limit,
                ),
                attempts,
            )
        except BadRequest as err:
            if not is_not_modified(err):
                raise
        return shown  # (not modified: it shows that already)

    async def delete(self, message_id: int) -> None:
        """Delete one of our messages (best effort)."""
        if self.gone:
            return
        try:
            await self.bot.delete_message(chat_id=self.chat_id, message_id=message_id)
        except TelegramError as err:
            log.warning("could not delete a message: %s", err)

    # -- ReplySink -------------------------------------------------------------------------
    async def send(self, reply: Reply) -> None:
        """Deliver a complete reply: Markdown answers as HTML, notices as plain text."""
        await self.typing_settled()
        if self.gone:
            return
        try:
            if reply.image is not None:
                await self._send_image(reply)
                return
            markdown = reply.kind is ReplyKind.ANSWER
            text = reply.text
            if EVERY_VOICE_NOTE in reply.extras and not (self.hears_all or self.private):
                text += PRIVACY_MODE_NOTE
            for part in split_markdown(text, SEGMENT_UTF16):
                with unconfirmed():
                    await self.send_text(_html_or_none(part) if markdown else None, part)
        except Forbidden as err:
            self.chat_gone(err)

    async def _send_image(self, reply: Reply) -> None:
        assert reply.image is not None
        image = reply.image
        caption: str | None = reply.text or None
        overflow = None
        if caption is not None and utf16_len(caption) > MAX_CAPTION_UTF16:
            caption, overflow = None, reply.text
        sent = False
        with unconfirmed():
            if fits_photo_limits(image):
                try:
                    await self._call(
                        lambda: self.bot.send_photo(
                            photo=image,
                            filename=reply.image_name,
                            caption=caption,
                            reply_parameters=self._reply_parameters(),
                            **self._where(),
                        ),
                        repeatable=False,
                    )
                    sent = True
                except BadRequest as err:
                    log.warning("Telegram refused the image as a photo (%s); sending a file", err)
            if not sent:
                await self._call(
                    lambda: self.bot.send_document(
                        document=image,
                        filename=reply.image_name,
                        caption=caption,
                        reply_parameters=self._reply_parameters(),
                        **self._where(),
                    ),
                    repeatable=False,
                )
        self._replied = True
        if overflow:
            for part in split_markdown(overflow, SEGMENT_UTF16):
                with unconfirmed():
                    await self.send_text(None, part)

    @asynccontextmanager
    async def stream(self) -> AsyncIterator[TelegramStream]:
        """A streamed answer: drafts in private chats, a throttled edited message elsewhere."""
        stream = TelegramStream(self)
        try:
            yield stream
        except asyncio.CancelledError:
            # Shutting down: the core hands the message to the next process, which answers
            # it in full; sending our partial text now would only duplicate it.
            self.stop_typing()
            stream.abandon()
            raise
        except BaseException:
            self.stop_refreshing()
            try:
                await stream.finish(failed=True)
            except Exception as err:
                # What went wrong first is what the person is told.
                log.warning("the rest of a failed answer was not sent: %s", err)
            raise
        self.stop_refreshing()
        try:
            await stream.finish(failed=False)
        except TelegramError as err:
            raise not_delivered(err, shown_all=stream.shown_whole()) from err

    async def chat_admin(self, sender_id: str) -> bool | None:
        """Whether the group's creator or one of its administrators wrote (getChatMember).

        Telegram always knows: when asking it fails, the group-wide change is refused
        (`AdminCheckFailed`: try again) rather than let through for any member."""
        if sender_id == str(self.chat_id):
            return True  # an anonymous admin writes as the group itself
        if not sender_id.isdigit():
            return False  # a channel writing in its discussion group
        try:
            member = await with_retry(
                lambda: self.bot.get_chat_member(self.chat_id, int(sender_id))
            )
        except TelegramError as err:
            log.warning("cannot tell whether %s administers the chat: %s", sender_id, err)
            raise AdminCheckFailed(f"getChatMember failed: {err}") from err
        return member.status in (ChatMemberStatus.OWNER, ChatMemberStatus.ADMINISTRATOR)

    async def typing(self) -> None:
        """Show "typing…" and keep it up while the model works (it fades after ~5 s), in
        the background: a slow Bot API does not keep the model waiting. Whatever is sent
        next waits for it first (`typing_settled`), or it could show under the answer."""
        if self._typing_task is None or self._typing_task.done():
            self._typing_task = asyncio.create_task(self._keep_typing())

    async def _chat_action(self) -> None:
        if self.gone:
            return
        try:
            await self.bot.send_chat_action(action=ChatAction.TYPING, **self._where())
        except Forbidden as err:
            self.chat_gone(err)
        except TelegramError as err:
            log.info("typing indicator failed: %s", err)

    async def _keep_typing(self) -> None:
        deadline = time.monotonic() + self.pacing.typing_max
        while True:
            # Its own task: stopping the refresher leaves a call in flight to end (or to
            # `typing_settled`), since Telegram may carry it out even once we hang up.
            action = self._chat_action_task = asyncio.create_task(self._chat_action())
            await asyncio.shield(action)
            if time.monotonic() >= deadline or self.gone:
                return
            await asyncio.sleep(self.pacing.typing_refresh)

    def stop_refreshing(self) -> None:
        """Send no more "typing…" (a call of it in flight goes on: see `typing_settled`)."""
        if self._typing_task is not None:
            self._typing_task.cancel()
            self._typing_task = None

    async def typing_settled(self) -> None:
        """Before a message the person sees: stop "typing…", and wait for its call in
        flight to end, at most TYPING_WAIT (then it is given up). A sendChatAction that
        reached Telegram after the message would show "typing…" under the answer."""
        self.stop_refreshing()
        action = self._chat_action_task
        if action is None or action.done():
            return
        await asyncio.wait({action}, timeout=TYPING_WAIT)
        if not action.done():
            log.info("Telegram did not answer sendChatAction in %.0f s; not waiting", TYPING_WAIT)
            action.cancel()

    def stop_typing(self) -> None:
        """Stop "typing…" at once: the refresher and a call of it in flight."""
        self.stop_refreshing()
        if self._chat_action_task is not None:
            self._chat_action_task.cancel()
            self._chat_action_task = None

    async def close(self) -> None:
        """Stop background work (the typing refresher)."""
        tasks = [t for t in (self._typing_task, self._chat_action_task) if t is not None]
        self.stop_typing()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class TelegramStream:
    """One streamed answer; rolls over into further messages before Telegram's limit.

    `append` only records the text: previews (drafts or edits) are sent by a background
    worker, one request at a time, each showing the newest text. The model is never kept
    waiting for Telegram (or for the rate limiter in front of it); a slow request only means
    fewer previews. The finished message(s) are sent, and awaited, when the stream closes.
    """

    def __init__(self, sink: TelegramSink) -> None:
        self._sink = sink
        self._incoming = ""  # appended, not yet taken in by the worker
        self._pending = ""  # Markdown of the message being written
        self._parts: list[str] = []  # rolled-over messages not yet sent for good, in order
        self._shown = ""  # what the preview currently shows of it
        # What the message being written (edited, not a draft) was last confirmed to show,
        # as a person reads it; None when no message of it is known to show anything.
        self._confirmed: str | None = None
        # The last message's last send failed, but it already showed all of the answer.
        self._shown_whole = False
        self._message_id: int | None = None  # the edited message (not in private chats)
        self._messages = AnswerMessages(sink.continue_in, sink.on_messages)
        self._draft_id = self._new_draft_id()
        self._last_preview = float("-inf")  # when the last preview request finished
        self._not_before = 0.0  # Telegram asked us to pause (a 429)
        self._previews_from = 0.0  # the flood budget has no room for previews until then
        self._plain_preview = False
        # A send of the message being written timed out and may have arrived, unseen by us:
        # no more previews for it (each would be a new message); its final text is sent once.
        self._unconfirmed = False
        # Continuing in an earlier run's messages: those are edited, never drafted over.
        self._drafts = sink.private and not self._messages.earlier
        self._retracted = False
        self._closing = False
        # A finished part failed to send: nothing after it is (the answer would have a hole).
        self._broken = False
        self._courier = Courier(self._work, "relaybot:telegram-preview")

    @staticmethod
    def _new_draft_id() -> int:
        return secrets.randbelow(2**31 - 2) + 1

    @property
    def _interval(self) -> float:
        pacing = self._sink.pacing
        return pacing.draft_interval if self._drafts else pacing.edit_interval

    async def append(self, delta: str) -> None:
        """Add text; the worker previews it when the throttle allows (never awaited here)."""
        self._raise_failure()
        if self._retracted or self._sink.gone or self._broken or not delta:
            return
        self._sink.stop_refreshing()
        self._incoming += delta
        self._courier.start()

    def _raise_failure(self) -> None:
        error = self._courier.take_error()
        if isinstance(error, TelegramError):
            raise not_delivered(error) from error
        if error is not None:
            raise error

    def _take_in(self) -> None:
        """Move appended text into the message being written; split off full messages."""
        if self._incoming:
            self._pending += self._incoming
            self._incoming = ""
        while utf16_len(self._pending) > SEGMENT_UTF16:
            head, self._pending = split_once(self._pending, SEGMENT_UTF16)
            self._parts.append(head)

    async def _work(self) -> None:
        """Send finished parts, then previews of the newest text, until nothing is due."""
        try:
            await self._carry()
        except Forbidden as err:
            self._sink.chat_gone(err)
        except Exception:
            self._broken = True
            raise

    async def _carry(self) -> None:
        while not self._retracted and not self._sink.gone:
            self._take_in()
            if self._parts:
                await self._complete(self._parts.pop(0))
                continue
            if (
                self._closing
                or self._unconfirmed
                or not self._pending.strip()
                or self._pending == self._shown
            ):
                return
            # Counted from the end of the last preview: a slow Telegram (or a queue in
            # the rate limiter) slows previews down instead of always having one waiting.
            due = max(self._not_before, self._previews_from, self._last_preview + self._interval)
            wait = due - time.monotonic()
            if wait > 0:
                await self._courier.pause(wait)
                continue
            await self._preview()

    def abandon(self) -> None:
        """Stop previewing at once (the answer is left to another process)."""
        self._retracted = True
        self._courier.cancel()

    async def _preview(self) -> None:
        sink = self._sink
        await sink.typing_settled()
        text = self._pending
        rendered = None if self._plain_preview else _html_or_none(text)
        try:
            if self._drafts:
                # (sendMessageDraft takes no link_preview_options, unlike sendMessage.)
                await sink.bot.send_message_draft(
                    chat_id=sink.chat_id,
                    draft_id=self._draft_id,
                    text=rendered if rendered is not None else text,
                    parse_mode=ParseMode.HTML if rendered is not None else None,
                    message_thread_id=sink.thread_id,
                    rate_limit_args=PREVIEW,
                )
            else:
                await self._write(rendered, text, attempts=1, limit=PREVIEW)
        except PreviewDeferred as err:
            # Our own limiter keeps the budget for finished messages: only previews wait.
            self._previews_from = time.monotonic() + retry_seconds(err)
            return
        except RetryAfter as err:
            # A preview is optional: skip it and wait as long as Telegram asked.
            self._not_before = time.monotonic() + retry_seconds(err)
            return
        except TimedOut as err:
            if self._unconfirmed:
                log.warning(
                    "a preview's send timed out and may have arrived; no more previews "
                    "for that message"
                )
            else:
                log.warning("preview failed: %s", err)
            return
        except BadRequest as err:
            if is_parse_error(err):
                self._plain_preview = True
            elif self._drafts:
                log.warning("drafts unavailable (%s); streaming by editing a message", err)
                self._drafts = False
            else:
                log.warning("preview failed: %s", err)
            return
        except Forbidden as err:
            self._sink.chat_gone(err)
            return
        except TelegramError as err:
            log.warning("preview failed: %s", err)
            return
        finally:
            self._last_preview = time.monotonic()
        self._shown = text

    async def _complete(self, markdown: str) -> None:
        """Make `markdown` a finished message and start a fresh one for what follows."""
        if markdown.strip():
            wait = self._not_before - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # Telegram asked for a pause after a preview
            with unconfirmed():
                await self._write(_html_or_none(markdown), markdown)
        self._message_id = None
        self._confirmed = None
        self._unconfirmed = False
        self._shown = ""
        self._draft_id = self._new_draft_id()
        self._last_preview = float("-inf")

    async def _write(
        self, rendered: str | None, text: str, *, attempts: int = 4, limit: str | None = None
    ) -> None:
        """Show `text` in the message being written: edit it, or, when there is none yet,
        edit the next message an earlier run left, or else send a new one.

        A message Telegram no longer lets us edit (deleted, or left by an earlier run and
        too old) is replaced by a new one.
        """
        sink = self._sink
        await sink.typing_settled()
        if self._message_id is None:
            self._message_id = self._messages.next_earlier()
        if self._message_id is not None:
            try:
                self._confirmed = await sink.edit_text(
                    self._message_id, rendered, text, attempts=attempts, limit=limit
                )
                return
            except BadRequest as err:
                if not is_gone(err):
                    raise
                log.warning("cannot edit the answer's message (%s); sending a new one", err)
                await self._replace(self._message_id)
        try:
            message, shown = await sink.send_shown(rendered, text, attempts=attempts, limit=limit)
        except TimedOut as err:
            self._unconfirmed = may_have_arrived(err)
            raise
        self._message_id = message.message_id
        self._confirmed = shown
        self._messages.created(message.message_id)

    def _shows(self, markdown: str) -> bool:
        """Whether the message being written, as last confirmed, already shows the text
        `markdown` would (formatting aside: what a person reads)."""
        if self._confirmed is None or self._message_id is None or self._unconfirmed:
            return False
        rendered = _html_or_none(markdown)
        whole = visible_text(rendered) if rendered is not None else markdown
        return self._confirmed.strip() == whole.strip()

    def shown_whole(self) -> bool:
        """Whether the person sees the whole answer although its last send failed: the
        last message already showed all its text (only formatting would have changed)."""
        return self._shown_whole

    async def _replace(self, message_id: int) -> None:
        """A message of this answer cannot be edited: a new one takes its place."""
        self._message_id = None
        self._confirmed = None
        await self._delete(self._messages.lost(message_id))

    async def _delete(self, message_ids: list[int]) -> None:
        """Delete messages of this answer (an earlier run's it no longer needs)."""
        for message_id in message_ids:
            await self._sink.delete(message_id)
        self._messages.report()

    async def retract(self, notice: str) -> None:
        """Withdraw the streamed answer and show `notice` in its place."""
        self._retracted = True
        await self._courier.settle()
        self._courier.take_error()
        self._incoming = self._pending = ""
        self._parts.clear()
        if self._sink.gone:
            return
        if self._message_id is None:
            # The notice goes into the first message an earlier run left.
            self._message_id = self._messages.next_earlier()
        await self._delete(self._messages.keep_only(self._message_id))
        try:
            with unconfirmed():
                await self._write(None, notice)
        except Forbidden as err:
            self._sink.chat_gone(err)

    async def finish(self, *, failed: bool) -> None:
        """Send what was streamed as final message(s); after a failure only what was shown.

        Messages an earlier run left that the answer did not need are deleted.
        """
        if self._retracted:
            return
        self._closing = True
        try:
            await self._finish(failed)
        except Forbidden as err:
            self._sink.chat_gone(err)

    async def _finish(self, failed: bool) -> None:
        await self._courier.settle()
        self._take_in()
        error = self._courier.take_error()
        parts = [*self._parts, self._pending]
        self._parts.clear()
        self._pending = ""
        try:
            for i, part in enumerate(parts):
                if self._sink.gone:
                    return
                if self._broken:
                    break
                if part.strip() or not failed:
                    try:
                        await self._complete(part)
                    except TelegramError:
                        # Its last message showed all of it already: the person has it.
                        last = not any(rest.strip() for rest in parts[i + 1 :])
                        self._shown_whole = last and error is None and self._shows(part)
                        raise
        finally:
            if self._messages.earlier:
                await self._delete(self._messages.unused())
        if error is not None:
            # A rolled-over part could not be sent, nor anything after it.
            if not failed:
                raise error
            log.warning("part of a streamed answer was not sent: %s", error)
