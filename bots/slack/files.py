"""Downloading private Slack files with the bot token, safely."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from bots.slack.events import attachment_kind
from core.errors import BadInput, UpstreamDown
from core.service import MAX_IMAGE_BYTES, picture_too_large
from core.types import AttachmentKind

log = logging.getLogger("relaybot.slack.files")

MAX_REDIRECTS = 5
__all__ = ["MAX_IMAGE_BYTES", "download", "fetcher", "looks_like_html", "missing_scope"]


def slack_down(detail: str, doing: str = "get") -> UpstreamDown:
    """Slack (its API or its file server) busy or down: a file it could not give for now,
    not one it refuses (`doing`: what could not be done with it, as the person reads it)."""
    return UpstreamDown(
        detail,
        user_message=f"Slack is not answering right now, so I couldn't {doing} that file. "
        "Please try again later.",
    )


def missing_scope() -> BadInput:
    """The error for Slack's login page in place of a file."""
    return BadInput(
        "slack answered a login page instead of the file",
        user_message=(
            "I couldn't download that file: Slack sent a login page instead. The app probably "
            "lacks the files:read scope; ask a workspace admin to add it and reinstall the app."
        ),
    )


FileInfo = Callable[[str], Awaitable[Mapping[str, Any]]]


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def looks_like_html(content_type: str, head: bytes) -> bool:
    """True for a web page (Slack's sign-in page) rather than the file itself."""
    if content_type.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
        return True
    start = head.lstrip()[:15].lower()
    return start.startswith((b"<!doctype html", b"<html"))


async def download(
    http: httpx.AsyncClient,
    url: str,
    token: str,
    *,
    max_bytes: int | None = None,
    too_large: BadInput | None = None,
) -> bytes:
    """GET a url_private with the bot token.

    Redirects are followed by hand, and only to the same scheme, host and port: the token is
    never sent anywhere else. Where a redirect leaves the origin it is followed without the
    token (Slack's CDN URLs are pre-signed). An HTML page instead of the file means Slack did
    not accept the token (usually a missing files:read scope): BadInput, never the page.
    Past `max_bytes` the download stops and `too_large` is raised (a generic BadInput
    without one).
    """
    origin = _origin(url)
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        same_origin = _origin(current) == origin
        headers = {"Authorization": f"Bearer {token}"} if same_origin else {}
        try:
            async with http.stream(
                "GET", current, headers=headers, follow_redirects=False
            ) as response:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    if not location:
                        break
                    current = urljoin(current, location)
                    continue
                if response.status_code == 429 or response.status_code >= 500:
                    # Slack's file server is busy or down: for now, not for this file.
                    raise slack_down(
                        f"slack file download answered HTTP {response.status_code}", "download"
                    )
                if response.status_code != 200:
                    raise BadInput(
                        f"slack file download answered HTTP {response.status_code}",
                        user_message="I couldn't download that file from Slack.",
                    )
                data = await _read(response, max_bytes, too_large)
        except httpx.HTTPError as exc:
            raise UpstreamDown(
                f"slack file download failed: {type(exc).__name__}",
                user_message="I couldn't download that file from Slack. Please try again.",
            ) from exc
        if looks_like_html(response.headers.get("content-type", ""), data[:64]):
            log.warning("slack file download returned an HTML page (files:read scope missing?)")
            raise missing_scope()
        return data
    raise BadInput("too many redirects", user_message="I couldn't download that file from Slack.")


async def _read(
    response: httpx.Response, max_bytes: int | None, too_large: BadInput | None
) -> bytes:
    """The body, read no further than `max_bytes` (BadInput past it)."""
    refused = too_large or BadInput(
        "slack file too large", user_message="That file is too large for me to use."
    )
    declared = response.headers.get("content-length", "")
    if max_bytes is not None and declared.isdigit() and int(declared) > max_bytes:
        raise refused
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        if max_bytes is not None and received > max_bytes:
            raise refused
        chunks.append(chunk)
    return b"".join(chunks)


def fetcher(
    http: httpx.AsyncClient, token: str, file_info: FileInfo
) -> Callable[[Mapping[str, Any]], Callable[[], Awaitable[bytes]]]:
    """A factory turning a Slack file object into a `fetch` callable for an Attachment.

    A picture is fetched only up to MAX_IMAGE_BYTES (the most OpenAI takes per image):
    one Slack says is larger is not downloaded at all, and a download that grows past it
    stops (`picture_too_large`).
    """

    def for_file(file: Mapping[str, Any]) -> Callable[[], Awaitable[bytes]]:
        async def fetch() -> bytes:
            info: Mapping[str, Any] = file
            # Files from shared channels may arrive without URLs ("check_file_info").
            if not info.get("url_private") or info.get("file_access") == "check_file_info":
                info = await file_info(str(file.get("id", "")))
            url = info.get("url_private_download") or info.get("url_private")
            if not url:
                raise BadInput("file without url", user_message="I couldn't find that file.")
            if attachment_kind(info) is not AttachmentKind.IMAGE:
                return await download(http, str(url), token)
            size = info.get("size")
            if isinstance(size, int) and size > MAX_IMAGE_BYTES:
                raise picture_too_large(size)
            return await download(
                http, str(url), token, max_bytes=MAX_IMAGE_BYTES, too_large=picture_too_large()
            )

        return fetch

    return for_file
