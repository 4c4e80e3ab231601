"""Downloading private Slack files with the bot token, safely."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urljoin

import httpx

from bots.slack.events import attachment_kind
from core.config import Settings
from core.errors import BadInput, UpstreamDown
from core.service import MAX_IMAGE_BYTES, audio_too_large, picture_too_large
from core.types import AttachmentKind

log = logging.getLogger("relaybot.slack.files")

MAX_REDIRECTS = 5
# Slack's own domains (commercial and GovSlack): its file hosts (files.slack.com) are on them.
SLACK_DOMAINS = ("slack.com", "slack-gov.com")
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


def stored_outside(name: str) -> BadInput:
    """The error for a file kept outside Slack (a remote file an app added, say from Google
    Drive): its url_private is the external URL, on any host, never fetched."""
    return BadInput(
        "slack file stored outside slack",
        user_message=f"I can't open {name or 'that file'}: it is stored outside Slack. "
        "Please download it and upload the file itself.",
    )


FileInfo = Callable[[str], Awaitable[Mapping[str, Any]]]


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port as httpx (which fetches the URL) reads them."""
    try:
        parts = httpx.URL(url)
    except httpx.InvalidURL:
        return "", "", None
    return parts.scheme, parts.host.lower(), parts.port


def on_slack(url: str, api_url: str) -> bool:
    """Whether `url` is on Slack's own hosts, which may see the bot token: https on Slack's
    domains or their subdomains (files.slack.com), or the origin of SLACK_API_URL (a fake
    Slack in tests, a proxy). A remote file's url_private may point anywhere."""
    scheme, host, port = _origin(url)
    if host and (scheme, host, port) == _origin(api_url):
        return True
    slack = any(host == domain or host.endswith("." + domain) for domain in SLACK_DOMAINS)
    return slack and scheme == "https" and port in (None, 443)


def _is_remote(file: Mapping[str, Any]) -> bool:
    """A remote file (files.remote.add, an external service's): its url_private is the
    external URL, on the service's host."""
    return (
        file.get("is_external") is True
        or file.get("mode") == "external"
        or str(file.get("mimetype") or "").lower() == "application/vnd.slack-remote"
    )


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
    api_url: str,
    outside: BadInput,
    max_bytes: int,
    too_large: BadInput,
) -> bytes:
    """GET a url_private with the bot token.

    Only a URL on Slack's own hosts (`on_slack`) is fetched; any other raises `outside`
    before a request is made (without the token it would still be a request from this
    machine to wherever someone pointed it). Redirects are followed by hand; the token goes
    only to the first URL's scheme, host and port. Where a redirect leaves the origin it is
    followed without the token (Slack's CDN URLs are pre-signed). An HTML page instead of
    the file means Slack did not accept the token (usually a missing files:read scope):
    BadInput, never the page. Past `max_bytes` the download stops and `too_large` is raised.
    """
    if not on_slack(url, api_url):
        log.warning("slack file URL on %s, not a Slack host: not fetched", _origin(url)[1])
        raise outside
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


async def _read(response: httpx.Response, max_bytes: int, too_large: BadInput) -> bytes:
    """The body, read no further than `max_bytes` (`too_large` past it)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        if received > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _limit(kind: AttachmentKind, name: str, settings: Settings) -> tuple[int, BadInput]:
    """The most bytes of a file of `kind` worth downloading (what the core takes of it), and
    the error saying so (in the core's words)."""
    if kind is AttachmentKind.IMAGE:
        return MAX_IMAGE_BYTES, picture_too_large()
    if kind is AttachmentKind.AUDIO:
        return settings.max_audio_bytes, audio_too_large(settings.max_audio_bytes)
    # Any other file the core reads as text, up to max_input_chars characters (4 bytes at
    # most each in UTF-8).
    chars = settings.max_input_chars
    return 4 * chars, BadInput(
        "slack text file too large",
        user_message=f"{name or 'That file'} is too long for me: I read up to {chars:,} "
        "characters. Please send the part that matters.",
    )


def fetcher(
    http: httpx.AsyncClient, token: str, file_info: FileInfo, settings: Settings
) -> Callable[[Mapping[str, Any]], Callable[[], Awaitable[bytes]]]:
    """A factory turning a Slack file object into a `fetch` callable for an Attachment.

    A remote file (`_is_remote`) is refused before anything is fetched (`stored_outside`).
    A file is fetched only up to what the core takes of its kind (`_limit`: a picture up
    to MAX_IMAGE_BYTES, audio up to RELAYBOT_MAX_AUDIO_BYTES, text up to what
    RELAYBOT_MAX_INPUT_CHARS allows): one Slack says is larger is not downloaded at all,
    and a download that grows past it stops.
    """

    def for_file(file: Mapping[str, Any]) -> Callable[[], Awaitable[bytes]]:
        async def fetch() -> bytes:
            info: Mapping[str, Any] = file
            # Files from shared channels may arrive without URLs ("check_file_info").
            no_urls = not file.get("url_private") or file.get("file_access") == "check_file_info"
            if no_urls and not _is_remote(file):
                info = await file_info(str(file.get("id", "")))
            name = str(info.get("name") or info.get("title") or "")
            if _is_remote(info):
                raise stored_outside(name)
            url = info.get("url_private_download") or info.get("url_private")
            if not url:
                raise BadInput("file without url", user_message="I couldn't find that file.")
            limit, too_large = _limit(attachment_kind(info), name, settings)
            size = info.get("size")
            if isinstance(size, int) and size > limit:
                raise too_large
            return await download(
                http,
                str(url),
                token,
                api_url=settings.slack_api_url,
                outside=stored_outside(name),
                max_bytes=limit,
                too_large=too_large,
            )

        return fetch

    return for_file
