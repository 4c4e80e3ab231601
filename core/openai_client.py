"""A thin typed client for OpenAI-compatible REST endpoints, over the app's one httpx client.

Every failure leaves this module as one of `core.errors`; transient ones (429 without
`insufficient_quota`, 5xx, connect errors, timeouts) are retried first, except a billed
image or transcription request that was sent but not answered (NotAnswered). The API key is
sent only to URLs under `base_url` and never appears in exception text or logs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import contextlib
import dataclasses
import email.utils
import functools
import json
import logging
import random
import re
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, NamedTuple, cast
from urllib.parse import urlsplit

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport
from httpx_sse import EventSource

from core.config import FIRST_TOKEN_TIMEOUT, Settings
from core.errors import (
    AuthFailed,
    BadInput,
    ConfigError,
    ContentRefused,
    ContextTooLong,
    EndpointMissing,
    ModelUnavailable,
    QuotaExhausted,
    RateLimited,
    RelaybotError,
    UpstreamDown,
)

log = logging.getLogger(__name__)

_CONTEXT_MESSAGE = re.compile(
    r"context[ _]length|maximum context|context window|context size|too many tokens"
    r"|input tokens exceed",
    re.I,
)
_TPM_TOO_LARGE = re.compile(r"request too large", re.I)
_CONTENT_LIMIT = re.compile(r"content size limit \((\d+)\)", re.I)
# OpenRouter: "No endpoints found for <model>." (no provider serves it).
_NO_MODEL = re.compile(r"\bmodel\b.*\b(not found|does not exist)|no endpoints found for", re.I)
_INVALID_MODEL = re.compile(r"\binvalid model\b", re.I)
# Error codes and types that name the model itself as what was refused.
_MODEL_REFUSALS = frozenset(
    {"invalid_model", "model_not_found", "unsupported_model", "model_not_supported"}
)
_IMAGE_SETTINGS = ("size", "quality")  # sent from RELAYBOT_IMAGE_SIZE and _QUALITY
_REFUSAL_TAGS = ("content_policy", "moderation_blocked", "content_filter", "safety")
_SECRET_PATTERNS = (
    re.compile(r"sk-[A-Za-z0-9_\-*]{4,}"),
    re.compile(r"(?i)bearer\s+\S+"),
    re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+@"),  # user:password@ in URLs
)
_AUDIO_MIME = {
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "mp4": "audio/mp4",
    "mpeg": "audio/mpeg",
    "mpga": "audio/mpeg",
    "m4a": "audio/mp4",
    "ogg": "audio/ogg",
    "wav": "audio/wav",
    "webm": "audio/webm",
}
# Names platforms give audio whose format the endpoint knows under another extension.
_AUDIO_ALIASES = {"oga": "ogg", "opus": "ogg", "wave": "wav", "mp4a": "m4a"}


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a request consumed, as the endpoint reported them."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A complete (non-streamed) chat answer."""

    text: str
    usage: Usage | None
    finish_reason: str | None
    model: str


@dataclass(frozen=True, slots=True)
class Picture:
    """A made or edited image, and what the endpoint says it made (None where it does not):
    GPT Image reports its tokens (`usage`: the prompt's text and input images in, the image
    made out), of which `image_tokens` were input images (an edit's picture)."""

    data: bytes
    quality: str | None = None
    size: str | None = None
    usage: Usage | None = None
    image_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Transcript:
    """Text heard in audio, and what the endpoint billed for it: the audio's `seconds`
    (whisper-1) or tokens (the gpt-4o transcribe models: `usage`, of which `audio_tokens`
    were audio). Servers that report neither leave them empty."""

    text: str
    usage: Usage | None = None
    audio_tokens: int = 0
    seconds: float | None = None


class ChatDelta(NamedTuple):
    """One piece of a streamed answer; the last one carries usage and no text.

    A named tuple, not a frozen dataclass: one is made per streamed chunk, and a frozen
    dataclass sets each field through `object.__setattr__` (three times the cost).
    """

    text: str
    usage: Usage | None = None
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ModerationResult:
    """The verdict on one moderated input: flagged, and the names of the categories hit."""

    flagged: bool
    categories: tuple[str, ...]


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON, as request bodies are sent.

    The standard library's, not orjson's (which decodes the streamed chunks): encodings are
    kept with the chat windows held in memory, and each orjson result holds a 4 KB buffer
    whatever its length (measured: peak RSS of 5,000 chats in flight 237 → 272 MB).
    """
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class EncodedMessage(dict[str, Any]):
    """A chat message that carries its JSON encoding, made once.

    A long chat re-sends the same history turns with every request; encoding them once
    keeps the cost of building a request from growing with the window.
    """

    __slots__ = ("encoded",)

    def __init__(self, message: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.encoded = encode_json(message)


class EncodedMessages(list[dict[str, Any]]):
    """Request messages with their JSON made already: the items, comma-separated, in parts
    (joined once, into the request body)."""

    __slots__ = ("encoded",)

    def __init__(self, messages: list[dict[str, Any]], encoded: list[bytes]) -> None:
        super().__init__(messages)
        self.encoded = encoded


def encode_body(body: Mapping[str, Any]) -> bytes:
    """The JSON request body; `messages` reuse the encoding they carry, if any."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return encode_json(body)
    if isinstance(messages, EncodedMessages):
        inner = messages.encoded
    else:
        inner = [
            b",".join(
                m.encoded if isinstance(m, EncodedMessage) else encode_json(m) for m in messages
            )
        ]
    rest = {k: v for k, v in body.items() if k != "messages"}
    head = encode_json(rest)[:-1] + (b"," if rest else b"")
    return b"".join((head, b'"messages":[', *inner, b"]}"))


JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
KEEPALIVE_SECONDS = 15.0  # an idle connection to the model is closed after this


def build_http_client(settings: Settings) -> HTTPClient:
    """The app's shared httpx client, with timeouts, pool size and proxy from `settings`.

    Requests go out through aiohttp's connection pool and C-accelerated HTTP parser
    (httpx-aiohttp's transport; the `openai` package offers the same pairing for speed),
    still behind httpx's API, requests, responses and exceptions. With httpx's default
    transport (httpcore, h11, anyio) the HTTP exchange was half of relaybot's own CPU per
    message: its pool walks and polls every connection on each request, and every streamed
    chunk passes several layers. Measured on the throughput benchmark: CPU per message
    5.5 → 2.7 ms, messages per second ×1.9 (bench/README.md). A proxy, when configured,
    goes through httpx's own transport.
    """
    timeout = httpx.Timeout(settings.request_timeout, connect=min(10.0, settings.request_timeout))
    # Every connection may stay open between answers: with more answers streaming at once
    # than connections kept, each answer beyond them paid a new connection (a TLS handshake
    # against a real provider); idle ones still close after the keep-alive expiry.
    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=settings.max_connections,
        keepalive_expiry=KEEPALIVE_SECONDS,
    )
    transport: httpx.AsyncBaseTransport
    if settings.http_proxy:
        transport = httpx.AsyncHTTPTransport(
            proxy=settings.http_proxy, limits=limits, verify=tls_context()
        )
    else:
        transport = pooled_transport(settings.max_connections)
    return HTTPClient(timeout=timeout, transport=transport)


class HTTPClient(httpx.AsyncClient):
    """The app's httpx client, which keeps the transport it sends through (`transport`).

    The chat stream, the one request every message makes, hands its prepared request to
    that transport itself: the client's layer around it (merging URLs and headers, the
    cookie jar, the auth and redirect flows) was a third of the HTTP exchange's CPU in the
    throughput benchmark, and none of it applies to an API call with a bearer token.
    Everything else goes through the client as usual.
    """

    def __init__(self, *, transport: httpx.AsyncBaseTransport, **kwargs: Any) -> None:
        super().__init__(transport=transport, **kwargs)
        self._sent_through = transport

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        return self._sent_through

    @transport.setter
    def transport(self, transport: httpx.AsyncBaseTransport) -> None:
        """From now on everything, the chat stream included, goes through `transport` (the
        benchmark wraps the transport to time the model)."""
        self._sent_through = self._transport = transport


class _PooledTransport(AiohttpTransport):
    """httpx-aiohttp's transport; its aiohttp session is made on first use (inside the
    event loop) and made again if the transport is used after it was closed."""

    def __init__(self, session: Callable[[], aiohttp.ClientSession]) -> None:
        # Its own context goes unused (the session's connector has one) but cost ~20 ms.
        super().__init__(client=session, verify=tls_context())
        self._session = session

    async def aclose(self) -> None:
        await super().aclose()
        self.client = self._session


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The one TLS context of the process's HTTP clients (the model's, the Bot API's).

    Making one reads and parses the whole CA bundle (~20 ms of CPU); each client made its
    own, three for a Telegram bot. A context is safe to share between clients and event
    loops (httpx's documentation suggests reusing one): nothing changes it once made."""
    return httpx.create_ssl_context()


def pooled_transport(max_connections: int) -> httpx.AsyncBaseTransport:
    """An httpx transport over aiohttp's connection pool and C HTTP parser (see
    `build_http_client`), up to `max_connections` connections, each kept alive between
    requests for KEEPALIVE_SECONDS. Also what python-telegram-bot's requests go through."""
    tls = tls_context()

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=max_connections, keepalive_timeout=KEEPALIVE_SECONDS, ssl=tls
        )
        return aiohttp.ClientSession(connector=connector)

    return _PooledTransport(session)


class _IdleWatch:
    """Cuts a stream that sends nothing for `seconds`, with one timer per stream; its first
    wait (until the first `got`) may last `first` seconds instead (`starting` says whether
    the stream is still in it).

    An `asyncio.timeout` around each wait for the next event armed and cancelled a timer
    per streamed chunk. Here the stream marks its waits (`waiting`, `got`); the timer, when
    it fires, looks at the wait in progress: lasted its time, the task is cancelled (and
    `expired` says so); begun later, the timer is set again for when that wait runs out.
    Time the consumer spends between events never counts, and its own awaits are never
    cancelled: between `got` and the next `waiting` nothing is watched. A `waiting` while
    a wait is in progress goes on with that wait.
    """

    __slots__ = (
        "_cancelling",
        "_fired",
        "_handle",
        "_limit",
        "_loop",
        "_seconds",
        "_since",
        "_task",
        "starting",
    )

    def __init__(self, seconds: float, first: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._seconds = seconds
        self._limit = seconds if first is None else first  # the wait in progress may last
        self.starting = True
        self._task = asyncio.current_task()
        self._cancelling = self._task.cancelling() if self._task is not None else 0
        self._since: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False

    def waiting(self) -> None:
        if self._since is None:
            self._since = self._loop.time()
        if self._handle is None:
            self._handle = self._loop.call_at(self._since + self._limit, self._check)

    def got(self) -> None:
        self._since = None
        if self.starting:
            # The first wait is over: from now on each lasts `seconds`, and the timer set
            # for the first one (maybe far later) is set again by the next wait.
            self.starting = False
            self._limit = self._seconds
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None

    def _check(self) -> None:
        self._handle = None
        if self._since is None or self._task is None:
            return  # not waiting: the next wait sets the timer again
        due = self._since + self._limit
        if due - self._loop.time() > 0.001:
            self._handle = self._loop.call_at(due, self._check)
            return
        self._fired = True
        self._task.cancel()

    def expired(self) -> bool:
        """On a CancelledError (call once): whether the timer cancelled the task and nothing
        else did too. The timer's cancellation is taken back, as `asyncio.timeout` does."""
        if not self._fired or self._task is None:
            return False
        return self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _EventText:
    """What `EventSource` reads of a response: its headers, and its body as text.

    Event streams are always UTF-8 (WHATWG, "Parsing an event stream"). An uncompressed
    body, as event streams are sent, is decoded straight from the transport's byte stream:
    httpx's `aiter_text` reads it through three more async generators (raw, decoded and
    text, each with its chunker) for every streamed chunk. A compressed one goes through
    httpx, which undoes the Content-Encoding.

    `head` reads the body's first non-blank bytes (kept, and read again first) so the
    caller can tell an event stream from a whole JSON answer whatever the Content-Type
    says; `headers` always say event stream (httpx-sse checks them).
    """

    __slots__ = ("_bytes", "_held", "_response")

    headers = httpx.Headers({"content-type": "text/event-stream"})

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        encoding = response.headers.get("content-encoding", "identity")
        if encoding.strip().lower() in ("", "identity"):
            self._bytes = aiter(cast(httpx.AsyncByteStream, response.stream))
        else:
            self._bytes = aiter(response.aiter_bytes())
        self._held: list[bytes] = []
        response.encoding = "utf-8"

    def __getattr__(self, name: str) -> Any:
        # Anything else an httpx-sse release may read is the response's own.
        return getattr(self._response, name)

    async def head(self) -> bytes:
        """The body's first non-blank bytes (b"" for an empty body)."""
        async for chunk in self._bytes:
            self._held.append(chunk)
            start = chunk.lstrip()
            if start:
                return start[:16]
        return b""

    async def rest(self) -> bytes:
        """The whole body (what `head` read included)."""
        return b"".join([*self._held, *[chunk async for chunk in self._bytes]])

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        for chunk in self._held:
            yield chunk
        self._held = []
        async for chunk in self._bytes:
            yield chunk

    async def aiter_text(self) -> AsyncIterator[str]:
        decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        for chunk in self._held:
            yield decode(chunk)
        self._held = []
        async for chunk in self._bytes:
            yield decode(chunk)
        tail = decode(b"", True)
        if tail:
            yield tail


class EndpointRedirects(ConfigError):
    """The endpoint answered with a redirect: http -> https, a moved server, a proxy's login
    page. Redirects are not followed (the key would go along to wherever they point), so no
    request can work until OPENAI_BASE_URL is where the API answers; `fix` says what to set."""

    def __init__(self, detail: str, *, location: str, fix: str) -> None:
        super().__init__(detail)
        self.location = location
        self.fix = fix

    @property
    def advice(self) -> str:
        """`redirects to LOCATION: FIX`, for a line that names the endpoint before it."""
        return f"redirects to {self.location}: {self.fix}"


class FirstTokenTimeout(RelaybotError):
    """A streamed answer sent none of its words (only its head or framing, or nothing) within
    RELAYBOT_FIRST_TOKEN_TIMEOUT. Not retried: the model may still be thinking (a reasoning
    model), and each request is billed for its input again."""

    user_message = (
        "The model took too long to start answering. Please try again, or ask something shorter."
    )


class NotAnswered(UpstreamDown):
    """A billed request (an image, a transcription) the endpoint got but did not answer: it
    outlasted its wait, or the connection broke after it was sent. Not sent again: the
    endpoint may have done the work, and bills it, all the same."""


class ModelsUnreadable(UpstreamDown):
    """/models answered, but not with a list of models this client can read: the endpoint
    is reachable (chatting may work), it just cannot say what it serves."""


class _Sent:
    """Whether a streamed request reached the model (sent, and not refused with an error
    status): from then on it is billed, whether its answer comes or not."""

    __slots__ = ("reached",)

    def __init__(self) -> None:
        self.reached = False


class _UnsupportedMaxTokens(BadInput):
    """The model wants `max_completion_tokens` instead of `max_tokens` (or the reverse)."""


class _UnsupportedStreamOptions(BadInput):
    """The server refuses `stream_options` (Azure's older API versions, Mistral, others)."""


_THINK, _THINK_END = "<think>", "</think>"


class _ThinkFilter:
    """Takes reasoning out of a streamed answer's text: models served without a reasoning
    parser (Ollama, vLLM, llama.cpp) write it into `content` as a leading
    <think>...</think> block. What follows it streams as usual.

    The first non-blank text decides: an answer that does not open with <think> passes
    through untouched (`passing`: the caller stops feeding the filter), whatever it says
    later (an answer about the tags is an answer). A reasoning block that never ends
    leaves no answer (the empty-answer case).
    """

    __slots__ = ("_buf", "_seen", "_state", "passing")

    def __init__(self) -> None:
        self._buf = ""
        self._seen = 0
        self._state = "start"
        self.passing = False

    def feed(self, text: str) -> str:
        """The part of `text` to show (may be empty)."""
        if self._state == "after":
            return self._after(text)
        self._buf += text
        if self._state == "block":
            return self._until_end()
        start = self._buf.lstrip()
        if not start:
            return ""
        if start.startswith(_THINK):
            self._state, self._buf = "block", start[len(_THINK) :]
            return self._until_end()
        if _THINK.startswith(start):
            return ""  # maybe a tag split across chunks
        text, self._buf = self._buf, ""
        self.passing = True
        return text

    def close(self) -> str:
        """At the answer's end: what is held that is answer (reasoning never ended: none)."""
        return self._buf if self._state == "start" else ""

    def _until_end(self) -> str:
        buf = self._buf
        at = buf.find(_THINK_END, max(0, self._seen - len(_THINK_END)))
        if at < 0:
            self._buf = buf[-len(_THINK_END) :]
            self._seen = len(self._buf)
            return ""
        self._buf = ""
        self._state = "after"
        return self._after(buf[at + len(_THINK_END) :])

    def _after(self, text: str) -> str:
        start = text.lstrip()
        if start:
            self.passing = True
        return start


def _without_thinking(text: str) -> str:
    """A whole answer without a leading reasoning block (see `_ThinkFilter`)."""
    start = text.lstrip()
    if not start.startswith(_THINK):
        return text
    at = start.find(_THINK_END)
    return "" if at < 0 else start[at + len(_THINK_END) :].lstrip()


class OpenAIClient:
    """Chat, transcription, images, moderation and model listing against one endpoint."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str | None,
        max_retries: int = 2,
        stream_idle_timeout: float = 60.0,
        first_token_timeout: float = FIRST_TOKEN_TIMEOUT,
        max_retry_wait: float = 30.0,
        retry_base_delay: float = 0.5,
    ) -> None:
        """`stream_idle_timeout`: how long a stream may go quiet between its chunks;
        `first_token_timeout`: how long it may go without its first words."""
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        self._max_retries = max(0, max_retries)
        self._idle_timeout = stream_idle_timeout
        self._first_token_timeout = first_token_timeout
        self._max_retry_wait = max_retry_wait
        self._retry_base_delay = retry_base_delay
        self._stream_url = httpx.URL(self._url("/chat/completions"))
        self._stream_headers = httpx.Headers(http.headers)
        self._stream_headers.update(
            {**self._headers(), **JSON_HEADERS, **SSE_HEADERS}  # the key: our endpoint
        )
        # The stream's waits are its own (`_IdleWatch`): httpx's read timeout, kept as a
        # backstop, must not cut the first one (a reasoning model's silence) short, nor a
        # later one.
        self._stream_timeout = http.timeout.as_dict()
        read = self._stream_timeout.get("read")
        if read is not None:
            waits = max(self._first_token_timeout, self._idle_timeout) + 1.0
            self._stream_timeout["read"] = max(read, waits)
        # A billed request (an image, a transcription) is answered only once the work is
        # done (GPT Image: up to two minutes), and is not sent again once sent: it may wait
        # for its answer as long as a stream for its first words.
        billed = http.timeout.as_dict()
        if read is not None:
            billed["read"] = max(read, self._first_token_timeout)
        self._billed_timeout = httpx.Timeout(**billed)
        host = urlsplit(self._base_url).hostname or ""
        # OpenAI's reasoning models reject `max_tokens`; other servers may only know it.
        self._token_param = (
            "max_completion_tokens" if host.endswith("openai.com") else "max_tokens"
        )
        # Streams ask for the usage at their end unless the server refused to be asked
        # (the service then counts the tokens itself).
        self._stream_usage = True

    def __repr__(self) -> str:
        return f"OpenAIClient(base_url={self._base_url!r})"

    # -- public API --------------------------------------------------------------------
    async def chat(
        self, *, model: str, messages: list[dict[str, Any]], max_tokens: int | None = None
    ) -> ChatResult:
        """One chat completion, waited for in full."""
        body = self._chat_body(model, messages, max_tokens)
        try:
            payload = await self._request_json("POST", "/chat/completions", json_body=body)
        except _UnsupportedMaxTokens:
            self._swap_token_param()
            body = self._chat_body(model, messages, max_tokens)
            payload = await self._request_json("POST", "/chat/completions", json_body=body)
        return self._chat_result(payload, model, "/chat/completions")

    async def chat_stream(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        max_tokens: int | None = None,
        abandoned: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncGenerator[ChatDelta, None]:
        """Stream a chat completion: text deltas, then one delta carrying the usage.

        `abandoned` is awaited for each request that reached the model but failed before any
        of its answer came (whether it is then made again or not): the model read its
        prompt, maybe thought too, and that is billed with no usage to tell.
        """
        attempt = 0
        swapped = False
        while True:
            body = self._chat_body(model, messages, max_tokens)
            body["stream"] = True
            if self._stream_usage:
                body["stream_options"] = {"include_usage": True}
            yielded = False
            sent = _Sent()
            try:
                try:
                    # aclosing: if our consumer stops early, the HTTP response is closed at once.
                    async with aclosing(self._stream_once(body, sent)) as deltas:
                        async for delta in deltas:
                            yielded = True
                            yield delta
                    return
                except RelaybotError:
                    if sent.reached and not yielded and abandoned is not None:
                        await abandoned()
                    raise
            except _UnsupportedMaxTokens:
                if swapped:
                    raise
                swapped = True
                self._swap_token_param()
            except _UnsupportedStreamOptions:
                if not self._stream_usage:
                    raise
                self._stream_usage = False
                log.warning(
                    "the model endpoint refuses stream_options: answers stream without "
                    "the usage, which relaybot counts with its tokenizer instead"
                )
            except (RateLimited, UpstreamDown) as err:
                # Once text reached the person a retry would repeat it: fail instead.
                delay = None if yielded else self._retry_delay(attempt, err)
                if delay is None:
                    raise
                attempt += 1
                self._log_retry("chat stream", err, attempt, delay)
                await asyncio.sleep(delay)

    async def transcribe(
        self,
        *,
        model: str,
        audio: bytes,
        filename: str,
        translate: bool = False,
        language: str | None = None,
    ) -> Transcript:
        """Speech to text; with `translate`, to English text."""
        if not audio:
            raise BadInput("empty audio", user_message="That audio message is empty.")
        name, mime = _audio_upload(filename, audio)
        data = {"model": model, "response_format": "json"}
        if language and not translate:
            data["language"] = language
        path = "/audio/translations" if translate else "/audio/transcriptions"
        payload = await self._request_json(
            "POST", path, data=data, files={"file": (name, audio, mime)}, billed=True
        )
        text = payload.get("text") if isinstance(payload, dict) else None
        if not isinstance(text, str):
            raise UpstreamDown(f"{path}: no text in the response")
        return _transcript(text.strip(), payload.get("usage"))

    async def generate_image(
        self, *, model: str, prompt: str, size: str = "1024x1024", quality: str = "auto"
    ) -> Picture:
        """Create an image from a prompt. `quality` "auto" is not sent (the API's default;
        servers other than OpenAI's may not know the field)."""
        body: dict[str, Any] = {"model": model, "prompt": prompt, "size": size, "n": 1}
        if quality != "auto":
            body["quality"] = quality
        payload = await self._request_json(
            "POST", "/images/generations", json_body=body, billed=True
        )
        return await self._picture(payload, "/images/generations")

    async def edit_image(
        self,
        *,
        model: str,
        image: bytes,
        filename: str,
        prompt: str,
        size: str = "1024x1024",
        quality: str = "auto",
    ) -> Picture:
        """Change an image as the prompt says."""
        if not image:
            raise BadInput("empty image", user_message="That image is empty.")
        name, mime = _image_upload(filename, image)
        data = {"model": model, "prompt": prompt, "size": size, "n": "1"}
        if quality != "auto":
            data["quality"] = quality
        payload = await self._request_json(
            "POST", "/images/edits", data=data, files={"image": (name, image, mime)}, billed=True
        )
        return await self._picture(payload, "/images/edits")

    async def moderate(self, *, model: str, inputs: list[str]) -> list[ModerationResult]:
        """Classify texts; one result per input, in order."""
        if not inputs:
            return []
        body = {"model": model, "input": inputs}
        payload = await self._request_json("POST", "/moderations", json_body=body)
        results = payload.get("results") if isinstance(payload, dict) else None
        if not isinstance(results, list) or len(results) != len(inputs):
            raise UpstreamDown("/moderations: malformed response")
        return [_moderation_result(item) for item in results]

    async def moderate_parts(self, *, model: str, parts: list[dict[str, Any]]) -> ModerationResult:
        """Classify one multi-modal input: text and image_url parts, as the omni-moderation
        models take them (a picture as a data URL)."""
        body = {"model": model, "input": parts}
        payload = await self._request_json("POST", "/moderations", json_body=body)
        results = payload.get("results") if isinstance(payload, dict) else None
        if not isinstance(results, list) or len(results) != 1:
            raise UpstreamDown("/moderations: malformed response")
        return _moderation_result(results[0])

    async def list_models(self) -> list[str]:
        """The model ids the endpoint offers, sorted."""
        payload = await self._request_json("GET", "/models")
        data = _model_entries(payload)
        if data is None:
            raise ModelsUnreadable("/models: malformed response (no list of models)")
        return sorted(
            str(m["id"]) for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)
        )

    async def v1_base_url(self) -> str | None:
        """After /models answered 404: this base URL with `/v1` added when the models are
        listed there (OPENAI_BASE_URL lacks its /v1: every request would 404), else None (a
        server that has no /models, which may still chat)."""
        if urlsplit(self._base_url).path.endswith("/v1"):
            return None
        candidate = self._base_url + "/v1"
        try:
            response = await self._send("GET", candidate + "/models", where="/v1/models")
            payload = response.json()
        except (RelaybotError, ValueError):
            return None
        return candidate if _model_entries(payload) is not None else None

    # -- requests and retries ----------------------------------------------------------
    def _url(self, path: str) -> str:
        return self._base_url + path

    def _headers(self, url: str | None = None) -> dict[str, str]:
        # The key goes only to our endpoint, never to e.g. an image URL on a CDN.
        if self._api_key is None or (url is not None and not self._under_base(url)):
            return {}
        return {"Authorization": f"Bearer {self._api_key}"}

    def _under_base(self, url: str) -> bool:
        return url == self._base_url or url.startswith(self._base_url + "/")

    def _chat_body(
        self, model: str, messages: list[dict[str, Any]], max_tokens: int | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": messages}
        if max_tokens is not None:
            body[self._token_param] = max_tokens
        return body

    def _swap_token_param(self) -> None:
        self._token_param = (
            "max_tokens"
            if self._token_param == "max_completion_tokens"
            else "max_completion_tokens"
        )

    async def _request_json(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: Mapping[str, str] | None = None,
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
        billed: bool = False,
    ) -> Any:
        response = await self._send(
            method,
            self._url(path),
            where=path,
            json_body=json_body,
            data=data,
            files=files,
            billed=billed,
        )
        try:
            return response.json()
        except ValueError:
            raise UpstreamDown(f"{path}: the response is not JSON") from None

    async def _send(
        self,
        method: str,
        url: str,
        *,
        where: str,
        json_body: Any = None,
        data: Mapping[str, str] | None = None,
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
        follow_redirects: bool = False,
        billed: bool = False,
    ) -> httpx.Response:
        """`billed`: a request the endpoint bills when it does the work (an image, a
        transcription). It waits longer for its answer, and once sent it is not sent again
        (NotAnswered): a refusal (429, 5xx) or a connection never made is still retried."""
        attempt = 0
        timeout = self._billed_timeout if billed else httpx.USE_CLIENT_DEFAULT
        while True:
            err: RelaybotError
            try:
                headers = self._headers(url)
                content = None
                if json_body is not None:
                    content = encode_body(json_body)
                    headers = {**headers, **JSON_HEADERS}
                response = await self._http.request(
                    method,
                    url,
                    content=content,
                    data=data,
                    files=files,
                    headers=headers,
                    follow_redirects=follow_redirects,
                    timeout=timeout,
                )
            except httpx.TransportError as exc:
                if billed and not _never_sent(exc):
                    raise self._not_answered(where, exc) from None
                if isinstance(exc, httpx.TimeoutException):
                    err = UpstreamDown(f"{where}: timed out ({type(exc).__name__})")
                else:
                    err = UpstreamDown(f"{where}: {type(exc).__name__}: {self._scrub(str(exc))}")
            else:
                if response.is_success:
                    return response
                err = self._error_from_response(response, where)
            delay = self._retry_delay(attempt, err)
            if delay is None:
                raise err
            attempt += 1
            self._log_retry(where, err, attempt, delay)
            await asyncio.sleep(delay)

    def _not_answered(self, where: str, exc: httpx.TransportError) -> NotAnswered:
        """The error for a billed request sent but not answered, in the person's words."""
        service = "image" if where.startswith("/images/") else "transcription"
        cause = exc.__cause__ if isinstance(exc.__cause__, aiohttp.ClientError) else exc
        if isinstance(cause, TimeoutError | httpx.TimeoutException):
            happened = f"timed out ({type(exc).__name__})"
            told = f"The {service} service took too long to answer."
        else:
            happened = f"connection lost ({type(cause).__name__})"
            told = f"The connection to the {service} service broke before it answered."
        return NotAnswered(
            f"{where}: {happened}; not sent again (the endpoint may have done the work, and "
            "bills it)",
            user_message=f"{told} Please try again in a minute.",
        )

    def _retry_delay(self, attempt: int, err: RelaybotError) -> float | None:
        """Seconds to wait before retrying after `err`, or None to give up."""
        if not isinstance(err, (RateLimited, UpstreamDown)) or attempt >= self._max_retries:
            return None
        hint = err.retry_after if isinstance(err, RateLimited) else None
        if hint is not None:
            # Waiting longer than this keeps the person staring at nothing: fail and say so.
            return None if hint > self._max_retry_wait else max(0.0, hint)
        backoff = self._retry_base_delay * (2.0**attempt)
        return min(self._max_retry_wait, backoff * random.uniform(0.5, 1.0))

    @staticmethod
    def _log_retry(where: str, err: RelaybotError, attempt: int, delay: float) -> None:
        log.info("%s failed (%s); retry %d in %.2f s", where, type(err).__name__, attempt, delay)

    def _chat_result(self, payload: Any, model: str, where: str) -> ChatResult:
        """A whole chat answer; an error object in a 200 answer (OpenRouter) is raised as
        the error it says, and leading reasoning is taken out of the text."""
        if isinstance(payload, dict) and payload.get("error"):
            error = _error_object(payload)
            code = error.get("code")
            # OpenRouter puts the HTTP status the error stands for in `code`.
            status = code if isinstance(code, int) and 400 <= code < 600 else None
            raise self._error_from_payload(
                status, payload, where, None, label=f"HTTP 200 error {code or ''}".rstrip()
            )
        result = _parse_chat(payload, model)
        if _THINK in result.text:
            result = dataclasses.replace(result, text=_without_thinking(result.text))
        return result

    async def _picture(self, payload: Any, where: str) -> Picture:
        image = await self._image_bytes(payload, where)
        # GPT Image says what it made (the quality "auto" chose, the size): that is billed.
        quality = payload.get("quality")
        size = payload.get("size")
        usage, image_tokens = _picture_usage(payload.get("usage"))
        return Picture(
            image,
            quality=quality if isinstance(quality, str) else None,
            size=size if isinstance(size, str) else None,
            usage=usage,
            image_tokens=image_tokens,
        )

    async def _image_bytes(self, payload: Any, where: str) -> bytes:
        data = payload.get("data") if isinstance(payload, dict) else None
        item = data[0] if isinstance(data, list) and data else None
        if not isinstance(item, dict):
            raise UpstreamDown(f"{where}: no image in the response")
        if isinstance(item.get("b64_json"), str):
            try:
                return base64.b64decode(item["b64_json"], validate=True)
            except (binascii.Error, ValueError):
                raise UpstreamDown(f"{where}: the image is not valid base64") from None
        if isinstance(item.get("url"), str):
            response = await self._send(
                "GET", item["url"], where=f"{where} (download)", follow_redirects=True
            )
            return response.content
        raise UpstreamDown(f"{where}: no image in the response")

    # -- streaming ---------------------------------------------------------------------
    async def _open_stream(self, body: dict[str, Any]) -> httpx.Response:
        """POST the chat request and return the response once its head has arrived."""
        request = httpx.Request(
            "POST",
            self._stream_url,
            headers=self._stream_headers,
            content=encode_body(body),
            extensions={"timeout": self._stream_timeout},
        )
        if isinstance(self._http, HTTPClient):
            response = await self._http.transport.handle_async_request(request)
            response.request = request
            return response
        return await self._http.send(request, stream=True)

    async def _stream_once(
        self, body: dict[str, Any], sent: _Sent
    ) -> AsyncGenerator[ChatDelta, None]:
        """One streamed request; `sent` is marked once it reached the model."""
        where = "/chat/completions (stream)"
        model = str(body["model"])
        done = False
        finished = False  # a finish_reason came: a clean end of the body is the end
        # Reasoning written into `content` as <think>...</think> is taken out as it streams;
        # None once the answer is known to be past it (then nothing more is looked at).
        think: _ThinkFilter | None = _ThinkFilter()
        # The first wait (for the response's head, then its first words: `_begins_answer`)
        # may last first_token_timeout: a reasoning model sends nothing while it thinks. Each
        # later wait for an event lasts stream_idle_timeout.
        watch = _IdleWatch(self._idle_timeout, self._first_token_timeout)
        try:
            try:
                watch.waiting()
                response = await self._open_stream(body)
            except BaseException as exc:
                watch.close()
                if isinstance(exc, asyncio.CancelledError) and watch.expired():
                    sent.reached = True  # the model may be thinking still
                    raise self._stalled(watch, where) from None
                sent.reached = isinstance(exc, httpx.TransportError) and not _never_sent(exc)
                raise
            sent.reached = response.is_success  # an error status: refused, not billed
            try:
                if not response.is_success:
                    watch.close()
                    await response.aread()
                    raise self._error_from_response(response, where)
                body_text = _EventText(response)
                try:
                    head = await body_text.head()
                except BaseException as exc:
                    watch.close()
                    if isinstance(exc, asyncio.CancelledError) and watch.expired():
                        raise self._stalled(watch, where) from None
                    raise
                if head[:1] in (b"{", b"["):
                    # A whole JSON answer (servers that ignore `stream`), whatever its label.
                    watch.close()
                    try:
                        payload = orjson.loads(await body_text.rest())
                    except ValueError:
                        raise UpstreamDown(f"{where}: the response is not JSON") from None
                    result = self._chat_result(payload, model, where)
                    yield ChatDelta(result.text, result.usage, result.finish_reason)
                    return
                sse = not head or head.startswith((b"data", b"event", b":", b"id", b"retry"))
                if not sse and "text/event-stream" not in response.headers.get("content-type", ""):
                    watch.close()
                    raise UpstreamDown(f"{where}: the response is not JSON")
                events = EventSource(cast(httpx.Response, body_text)).aiter_sse()
                try:
                    while True:
                        watch.waiting()
                        try:
                            event = await anext(events)
                        except StopAsyncIteration:
                            break
                        if not watch.starting:
                            watch.got()
                        if not event.data:
                            continue
                        if event.data.strip() == "[DONE]":
                            done = True
                            # Read to the end of the body so the connection goes back to
                            # the pool (otherwise every answer opens a new connection).
                            with contextlib.suppress(TimeoutError):
                                async with asyncio.timeout(1.0):
                                    async for _ in events:
                                        pass
                            break
                        try:
                            chunk = orjson.loads(event.data)
                        except ValueError:
                            if event.event == "error":  # an error said in plain text
                                chunk = {"error": {"message": event.data}}
                            else:
                                raise UpstreamDown(f"{where}: malformed data line") from None
                        if not isinstance(chunk, dict):
                            raise UpstreamDown(f"{where}: malformed data line")
                        # Some servers send `"error": null` in every chunk (Foundry Local).
                        if chunk.get("error") or event.event == "error":
                            raise self._error_from_payload(None, chunk, where, None)
                        if watch.starting and _begins_answer(chunk):
                            watch.got()
                        delta = _parse_chunk(chunk)
                        if delta is None:
                            continue
                        if delta.finish_reason is not None:
                            finished = True
                        if think is not None:
                            if delta.text:
                                text = think.feed(delta.text)
                                if think.passing:
                                    think = None
                                if text:
                                    delta = delta._replace(text=text)
                                elif delta.usage is None and delta.finish_reason is None:
                                    continue
                                else:
                                    delta = delta._replace(text="")
                            if finished and think is not None:
                                # The model is done: what the filter holds is answer or not.
                                held = think.close()
                                think = None
                                if held:
                                    delta = delta._replace(text=delta.text + held)
                        yield delta
                except asyncio.CancelledError:
                    if watch.expired():
                        raise self._stalled(watch, where) from None
                    raise
                finally:
                    watch.close()
                    await events.aclose()
            finally:
                watch.close()
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise UpstreamDown(f"{where}: timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            detail = self._scrub(str(exc))
            raise UpstreamDown(f"{where}: stream cut ({type(exc).__name__}: {detail})") from None
        if not done and not finished:
            # ik_llama.cpp and older TGI end the body after the finish_reason, without [DONE].
            raise UpstreamDown(f"{where}: stream cut (ended without [DONE])")
        if think is not None:
            held = think.close()
            if held:
                yield ChatDelta(held)

    def _stalled(self, watch: _IdleWatch, where: str) -> RelaybotError:
        """The error for a stream its watch cut: none of its words within the first wait,
        or a silence after them."""
        if not watch.starting:
            return UpstreamDown(f"{where}: no data for {self._idle_timeout:g} s")
        return FirstTokenTimeout(
            f"{where}: the model sent nothing for {self._first_token_timeout:g} s after the "
            "request; not sent again (the model may still be thinking, and each request is "
            "billed). Reasoning models can think longer before their first token: raise "
            "RELAYBOT_FIRST_TOKEN_TIMEOUT"
        )

    # -- error mapping -----------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        for pattern in _SECRET_PATTERNS:
            text = pattern.sub("***", text)
        return text[:500]

    def _error_from_response(self, response: httpx.Response, where: str) -> RelaybotError:
        if 300 <= response.status_code < 400:
            return self._redirect_error(response, where)
        try:
            payload: Any = response.json()
        except ValueError:
            payload = None
        if payload is None:
            payload = {"message": response.text[:300] or response.reason_phrase}
        return self._error_from_payload(
            response.status_code, payload, where, _retry_after(response.headers)
        )

    def _redirect_error(self, response: httpx.Response, where: str) -> EndpointRedirects:
        """A 3xx: what the person sees is "not configured correctly" (ConfigError), what the
        operator reads names where it redirects and, when it can tell, the base URL to set."""
        raw = response.headers.get("location", "")
        path = where.split(" ", 1)[0]  # "/chat/completions (stream)" -> "/chat/completions"
        try:
            location = str(httpx.URL(self._url(path)).join(raw)) if raw else ""
        except Exception:  # a Location header that is not a URL
            location = raw
        location = self._scrub(location)
        parts = urlsplit(location)
        base = location.rstrip("/")[: -len(path)] if location.rstrip("/").endswith(path) else ""
        if base and not parts.query and not parts.fragment and base != self._base_url:
            # The same API elsewhere (https, another host or path): that is the base URL.
            fix = f"set OPENAI_BASE_URL to {base}"
        else:  # a login page, or somewhere that is not this API
            fix = (
                "set OPENAI_BASE_URL to the address the API itself answers at (relaybot "
                "does not follow redirects: the key would go along)"
            )
        shown = location or "nowhere (no Location header)"
        return EndpointRedirects(
            f"{where}: HTTP {response.status_code} redirects to {shown}: {fix}",
            location=shown,
            fix=fix,
        )

    def _error_from_payload(
        self,
        status: int | None,
        payload: Any,
        where: str,
        retry_after: float | None,
        *,
        label: str | None = None,
    ) -> RelaybotError:
        """Map an error (an HTTP status and body, or a mid-stream error object) to our errors."""
        error = _error_object(payload)
        code = str(error.get("code") or "")
        etype = str(error.get("type") or "")
        param = str(error.get("param") or "")
        message = self._scrub(str(error.get("message") or ""))
        tags = f"{code} {etype}".lower()
        if label is None:
            label = f"HTTP {status}" if status is not None else "error in stream"
        detail = f"{where}: {label} [{code or etype or '-'}] {message}".rstrip()
        if status in (401, 403) or (status is None and "invalid_api_key" in tags):
            return AuthFailed(detail)
        if "insufficient_quota" in tags or "billing" in tags:
            return QuotaExhausted(detail)
        if "context_length_exceeded" in tags:
            return ContextTooLong(detail)
        if status == 429 or (status is None and "rate_limit" in tags):
            if _TPM_TOO_LARGE.search(message):
                # Over the per-minute token limit in one request: waiting cannot fix it.
                return ContextTooLong(detail)
            return RateLimited(detail, retry_after=retry_after)
        if any(tag in tags for tag in _REFUSAL_TAGS):
            return ContentRefused(detail)
        if status is None:
            if etype == "invalid_request_error":
                if _CONTEXT_MESSAGE.search(message):
                    return ContextTooLong(detail)
                return BadInput(detail)
            return UpstreamDown(detail)
        if status >= 500 or status in (408, 409):
            return UpstreamDown(detail)
        if status == 413:
            if where.startswith("/audio/"):
                # OpenAI's limit on the whole request (file and form: 25 MiB), or a proxy's:
                # the person's file is too large, whatever the setting let through.
                return BadInput(detail, user_message=_audio_too_large(message))
            # A proxy's body limit in front of the model (nginx: 1 MB by default): the
            # request is too big, as an over-long context is.
            return ContextTooLong(detail)
        if _CONTEXT_MESSAGE.search(message):
            return ContextTooLong(detail)
        if status in (400, 422) and (param == "stream_options" or "stream_options" in message):
            return _UnsupportedStreamOptions(detail)
        if status == 400 and (param == "max_tokens" or "max_completion_tokens" in message):
            return _UnsupportedMaxTokens(detail)
        if where.startswith("/images/") and status in (400, 422) and param in _IMAGE_SETTINGS:
            # The operator's RELAYBOT_IMAGE_SIZE or _QUALITY: every image would fail.
            return ConfigError(
                f"{detail} (the image model refused the {param} sent: change "
                f"RELAYBOT_IMAGE_{param.upper()}; `relaybot doctor` lists what it takes)"
            )
        if status == 404 and ("model" in tags or param == "model" or _NO_MODEL.search(message)):
            # model_not_found; OpenAI's "This is not a chat model" and "only supported in
            # v1/responses" (param "model"); vLLM's and Ollama's "model ... not found".
            return ModelUnavailable(detail)
        if status in (400, 422) and (
            {code.lower(), etype.lower()} & _MODEL_REFUSALS
            or param == "model"
            or _INVALID_MODEL.search(message)
        ):
            # The model named refused as such (a chat model sent to /audio/transcriptions,
            # Mistral's "Invalid model: ..." of type invalid_model): the configuration's to
            # mend, not the person's file or words.
            return ModelUnavailable(detail)
        if status in (404, 405) and not where.endswith("(download)"):
            path = where.split(" ", 1)[0]
            hint = (
                "a server without moderation needs RELAYBOT_MODERATION=off"
                if path == "/moderations"
                else "is OPENAI_BASE_URL right? It usually ends in /v1"
            )
            return EndpointMissing(f"{detail} (the endpoint has no {path}: {hint})")
        return BadInput(detail)


# -- parsing helpers -------------------------------------------------------------------
def _never_sent(exc: httpx.TransportError) -> bool:
    """Whether a request that failed with `exc` surely never reached the server: no
    connection could be made. httpx-aiohttp names every connection failure of aiohttp's,
    a server closing the connection after the request too, ConnectTimeout: aiohttp's own
    error (the cause) tells them apart."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError):
        return isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
    return isinstance(
        exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout | httpx.ProxyError
    )


def _audio_too_large(message: str) -> str:
    """What the person is told of audio the transcription service found too large, with its
    limit in MB when it said it (OpenAI: "Maximum content size limit (26214400) exceeded
    (26222592 bytes read)")."""
    said = _CONTENT_LIMIT.search(message)
    limit = f" (its limit is {int(said[1]) // 2**20} MB)" if said and int(said[1]) >= 2**20 else ""
    return (
        f"That audio file is too large for the transcription service{limit}. Please send a "
        "shorter or more compressed recording."
    )


def _moderation_result(item: Any) -> ModerationResult:
    categories = item.get("categories") if isinstance(item, dict) else None
    hit = (
        tuple(name for name, on in categories.items() if on is True)
        if isinstance(categories, dict)
        else ()
    )
    flagged = bool(item.get("flagged")) if isinstance(item, dict) else False
    return ModerationResult(flagged=flagged, categories=hit)


def _error_object(payload: Any) -> dict[str, Any]:
    """The error dict inside OpenAI's, Ollama's or vLLM's error bodies."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            return error
        if isinstance(error, str):
            return {"message": error}
        if "message" in payload:
            return payload
        if "detail" in payload:
            return {"message": str(payload["detail"])}
    return {"message": str(payload)[:300]}


def _model_entries(payload: Any) -> list[Any] | None:
    """The models in a /models answer: OpenAI's {"data": [...]} or a bare list (Together)."""
    if isinstance(payload, list):
        return payload
    data = payload.get("data") if isinstance(payload, dict) else None
    return data if isinstance(data, list) else None


def _text_parts(content: list[Any]) -> str:
    """The text of content given as parts (Mistral's magistral models): the "text" parts;
    "thinking" parts and others are left out."""
    return "".join(
        part["text"]
        for part in content
        if isinstance(part, dict)
        and part.get("type") == "text"
        and isinstance(part.get("text"), str)
    )


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asked us to wait, from `retry-after-ms` or `retry-after`."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _parse_usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cached_tokens=int(cached or 0),
    )


def _count(value: Any) -> int:
    """A token count from a response: a non-negative whole number, else 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return 0
    return max(int(value), 0)


def _picture_usage(raw: Any) -> tuple[Usage | None, int]:
    """GPT Image's usage ({"input_tokens", "input_tokens_details": {"text_tokens",
    "image_tokens"}, "output_tokens"}) and how many of its input tokens were images."""
    if not isinstance(raw, dict):
        return None, 0
    prompt = _count(raw.get("input_tokens"))
    details = raw.get("input_tokens_details")
    images = _count(details.get("image_tokens")) if isinstance(details, dict) else 0
    usage = Usage(prompt_tokens=prompt, completion_tokens=_count(raw.get("output_tokens")))
    return usage, min(images, prompt)


def _transcript(text: str, raw: Any) -> Transcript:
    if not isinstance(raw, dict):
        return Transcript(text)
    if raw.get("type") == "duration":
        seconds = raw.get("seconds")
        if isinstance(seconds, int | float) and seconds >= 0:
            return Transcript(text, seconds=float(seconds))
        return Transcript(text)
    if raw.get("type") != "tokens":
        return Transcript(text)
    prompt = int(raw.get("input_tokens") or 0)
    details = raw.get("input_token_details")
    audio = details.get("audio_tokens") if isinstance(details, dict) else None
    usage = Usage(prompt_tokens=prompt, completion_tokens=int(raw.get("output_tokens") or 0))
    return Transcript(text, usage, audio_tokens=min(int(audio or prompt), prompt))


def _parse_chat(payload: Any, model: str) -> ChatResult:
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamDown("/chat/completions: no choices in the response")
    choice = choices[0]
    message = choice.get("message")
    text = ""
    if isinstance(message, dict):
        text = message.get("content") or message.get("refusal") or ""
        if isinstance(text, list):
            text = _text_parts(text)
    finish = choice.get("finish_reason")
    return ChatResult(
        text=str(text),
        usage=_parse_usage(payload.get("usage")),
        finish_reason=str(finish) if finish is not None else None,
        model=str(payload.get("model") or model),
    )


def _begins_answer(chunk: dict[str, Any]) -> bool:
    """Whether a streamed chunk carries something of the answer (text, reasoning, a finish,
    usage), which ends the stream's first wait: not its framing alone (a role with empty
    content, which some servers send at once; Azure's prompt-filter results, no choices),
    after which a reasoning model may still think for minutes."""
    if chunk.get("usage"):
        return True
    choices = chunk.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        return False
    first = choices[0]
    if first.get("finish_reason") is not None:
        return True
    delta = first.get("delta")
    return isinstance(delta, dict) and any(v for k, v in delta.items() if k != "role")


def _parse_chunk(chunk: dict[str, Any]) -> ChatDelta | None:
    """The text, finish reason and usage of one streamed chunk (run once per token)."""
    text = ""
    finish: str | None = None
    choices = chunk.get("choices")
    if choices and isinstance(choices, list):
        first = choices[0]
        if isinstance(first, dict):
            delta = first.get("delta")
            if isinstance(delta, dict):
                # A refusal streams its text in `refusal`, content null: it is the answer,
                # as `message.refusal` is in a JSON one (`_parse_chat`).
                content = delta.get("content") or delta.get("refusal")
                if isinstance(content, str):
                    text = content
                elif isinstance(content, list):
                    text = _text_parts(content)
            reason = first.get("finish_reason")
            if reason is not None:
                finish = str(reason)
    raw_usage = chunk.get("usage")
    usage = None if raw_usage is None else _parse_usage(raw_usage)
    if not text and finish is None and usage is None:
        return None
    return ChatDelta(text, usage, finish)


def _extension(filename: str) -> str:
    name = filename.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _stem(filename: str, fallback: str) -> str:
    name = filename.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return stem or fallback


def _sniff_audio(audio: bytes) -> str | None:
    head = audio[:16]
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    if head[4:8] == b"ftyp":
        return "m4a"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


def _audio_upload(filename: str, audio: bytes) -> tuple[str, str]:
    """A file name the endpoint accepts (it judges format by extension) and its MIME type."""
    ext = _extension(filename)
    ext = _AUDIO_ALIASES.get(ext, ext)
    if ext not in _AUDIO_MIME:
        sniffed = _sniff_audio(audio)
        if sniffed is None:
            raise BadInput(
                f"unsupported audio format: {filename!r}",
                user_message="I can't read that audio format.",
            )
        ext = sniffed
    return f"{_stem(filename, 'audio')}.{ext}", _AUDIO_MIME[ext]


def image_mime(image: bytes) -> str | None:
    """The MIME type of a picture the model endpoints take (PNG, JPEG, WebP, GIF), judged by
    its bytes (a name or a declared type can be wrong), else None (HEIC, SVG, not a picture)."""
    if image.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if image.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "image/webp"
    if image[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def _image_upload(filename: str, image: bytes) -> tuple[str, str]:
    """A file name and MIME type that match what the image bytes really are."""
    mime = image_mime(image)
    if mime is None or mime == "image/gif":  # whatever its name says: it would be refused
        raise BadInput(
            f"not a PNG, JPEG or WebP image: {filename!r}",
            user_message="I can only edit PNG, JPEG or WebP images.",
        )
    ext = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}[mime]
    return f"{_stem(filename, 'image')}.{ext}", mime
