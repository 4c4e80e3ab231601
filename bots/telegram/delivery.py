"""Calling the Bot API the way Telegram wants: 429 back-off and error classification."""

from __future__ import annotations

import asyncio
import datetime as dtm
import logging
import struct
import warnings
from collections.abc import Awaitable, Callable
from typing import TypeVar

from telegram.error import BadRequest, RetryAfter

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


async def with_retry(call: Callable[[], Awaitable[T]], attempts: int = 4) -> T:
    """Run `call`, sleeping out Telegram's `retry_after` on 429 (a few times at most)."""
    for attempt in range(attempts):
        try:
            return await call()
        except RetryAfter as err:
            wait = retry_seconds(err)
            if attempt == attempts - 1 or wait > MAX_RETRY_WAIT:
                raise
            log.info("Telegram asked to retry after %.1f s", wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")


def is_parse_error(err: BadRequest) -> bool:
    """True when Telegram refused the formatting (entities) of a text."""
    message = err.message.lower()
    return "parse entities" in message or "can't parse" in message


def is_not_modified(err: BadRequest) -> bool:
    """True for "message is not modified": the edit was a no-op, which is success."""
    return "message is not modified" in err.message.lower()


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG or JPEG image, or None for other formats."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return int(width), int(height)
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            i += 2 + length
    return None


def fits_photo_limits(data: bytes) -> bool:
    """Whether Telegram accepts `data` as a photo (else it must go as a document)."""
    if len(data) > MAX_PHOTO_BYTES:
        return False
    dims = image_dimensions(data)
    if dims is None:
        return False
    width, height = dims
    return width + height <= 10000 and max(width, height) <= 20 * max(1, min(width, height))
