"""Calling the Bot API the way Telegram wants: 429 back-off and error classification."""

from __future__ import annotations

import asyncio
import datetime as dtm
import logging
import warnings
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import httpx
from telegram.error import BadRequest, NetworkError, RetryAfter, TimedOut

from core.media import image_dimensions

log = logging.getLogger("relaybot.telegram")

T = TypeVar("T")

MAX_PHOTO_BYTES = 10 * 1024 * 1024
# A 429 asking for longer than this is not waited out inside one answer.
MAX_RETRY_WAIT = 60.0


def retry_seconds(err: RetryAfter) -> float:
    """How long Telegram asked us to wait, in seconds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # int-valued retry_after is deprecated in PTB 22
        value = err.retry_after
    if isinstance(value, dtm.timedelta):
        return value.total_seconds()
    return float(value)


# First wait after a Telegram 5xx or network error; doubled on each retry.
SERVER_ERROR_BACKOFF = 0.5


def never_sent(err: TimedOut) -> bool:
    """True when a timed-out request was not (or most likely not) carried out by Telegram,
    so sending it again shows nothing twice.

    python-telegram-bot raises TimedOut from any httpx timeout (HTTPXRequest.do_request):
    a PoolTimeout (no free connection) or a ConnectTimeout means nothing was sent; a
    ReadTimeout or WriteTimeout means Telegram may have received, and carried out, the
    request. Through our aiohttp transport (httpx-aiohttp) every aiohttp connection error
    becomes a ConnectTimeout: a connection that could not be made, or one that ended with
    no answer (a keep-alive connection the server or a proxy had dropped: the usual case,
    nothing carried out), is sent again; only a wait for the answer that ran out is not.
    """
    cause = err.__cause__
    if not isinstance(cause, httpx.ConnectTimeout | httpx.PoolTimeout):
        return False
    origin = cause.__cause__
    if isinstance(origin, aiohttp.ServerTimeoutError):
        return False  # the answer was waited for: the request may have been carried out
    return origin is None or isinstance(origin, aiohttp.ClientConnectionError)


def may_have_arrived(err: Exception) -> bool:
    """True for a timeout after which Telegram may have carried out the request."""
    return isinstance(err, TimedOut) and not never_sent(err)


async def with_retry(
    call: Callable[[], Awaitable[T]], attempts: int = 4, *, repeatable: bool = True
) -> T:
    """Run `call`: sleep out Telegram's `retry_after` on 429, back off on 5xx and network
    errors (a few times at most). The answer is already written: only the send repeats.

    A call that is not `repeatable` (a send: twice is two messages) is not made again after
    a timeout that Telegram may have seen it through (`may_have_arrived`): that TimedOut is
    raised at once.
    """
    for attempt in range(attempts):
        try:
            return await call()
        except RetryAfter as err:
            wait = retry_seconds(err)
            if attempt == attempts - 1 or wait > MAX_RETRY_WAIT:
                raise
            log.info("Telegram asked to retry after %.1f s", wait)
            await asyncio.sleep(wait)
        except BadRequest:
            raise  # our request is wrong: sending it again will not help
        except NetworkError as err:
            # Telegram's 5xx and lost connections (BadRequest is a NetworkError too).
            if attempt == attempts - 1 or (not repeatable and may_have_arrived(err)):
                raise
            wait = SERVER_ERROR_BACKOFF * 2**attempt
            log.info("Telegram send failed (%s); retrying in %.1f s", type(err).__name__, wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")


# What Telegram says (lower-cased) when it refuses a text's formatting: the same text sent
# plain goes through. Only refusals of entities: a 400 about the chat or the message
# ("chat not found", "message to edit not found") would fail plain just the same.
_FORMATTING_REFUSALS = (
    "parse entities",  # "can't parse entities: Unsupported start tag ..."
    "can't parse",  # "can't parse MessageEntity: ..."
    "entities_too_long",  # about 9500 characters of entities in all: tdlib/telegram-bot-api#165
    "text is empty",  # formatting that leaves nothing visible
    # A text_mention (tg://user?id=) of a user the bot has never seen: PaulSonOfLars/tgbot#22,
    # TelegramBotAPI/errors#2; newer servers say "user not found" (tdlib/td#2018). Neither
    # sendMessage, editMessageText nor sendMessageDraft names a user otherwise.
    "entity_mention_user_invalid",
    "user not found",
    "entity_bounds_invalid",  # an entity's offset or length outside the text
    "entity url",  # "entity URL '...' is invalid: Wrong HTTP URL" (or "URL host is empty")
    "wrong message entity",  # the same, from older servers ("Wrong URL host")
    "entity beginning at",  # "... ends after the end of the text"
    "entity with incorrect offset",
)


def is_parse_error(err: BadRequest) -> bool:
    """True when Telegram refused the formatting (entities) of a text, so that the same text
    sent plain goes through (`_FORMATTING_REFUSALS`, matched case-insensitively)."""
    message = err.message.lower()
    return any(refusal in message for refusal in _FORMATTING_REFUSALS)


def is_not_modified(err: BadRequest) -> bool:
    """True for "message is not modified": the edit was a no-op, which is success."""
    return "message is not modified" in err.message.lower()


def is_gone(err: BadRequest) -> bool:
    """True when the message to edit no longer exists or may no longer be edited."""
    message = err.message.lower()
    return "message to edit not found" in message or "message can't be edited" in message


def fits_photo_limits(data: bytes) -> bool:
    """Whether Telegram accepts `data` as a photo (else it must go as a document)."""
    if len(data) > MAX_PHOTO_BYTES:
        return False
    dims = image_dimensions(data)
    if dims is None:
        return False
    width, height = dims
    return width + height <= 10000 and max(width, height) <= 20 * max(1, min(width, height))
