"""A fake OpenAI-compatible endpoint over real HTTP, for relaybot's tests and for yours.

Start it with `async with FakeOpenAI() as fake:` (same event loop) or `with FakeOpenAI() as fake:`
(its own thread), then point a client at `fake.base_url`. Knobs are plain attributes and
methods; they may be changed from the test's thread while the server runs in another one.
`fail_next` answers errors, `missing_endpoints` and `missing_models` answer 404s as servers
without them do, `max_audio_seconds` refuses over-long audio as OpenAI's gpt-4o transcribe
models do, `max_audio_request_bytes` refuses an audio request whose whole body (the file and
the multipart form around it) is larger, with OpenAI's 413, `think_seconds` holds back each
chat answer's first byte (its response head too) as a reasoning model's silence does,
`answer_delays` holds back the answers of other paths (the work done, and billed, first: GPT
Image may take two minutes), `drop_after_request` drops the connection of a path's requests
once read (the work done and billed all the same), `cut_next_streams` cuts the next streamed
answers after their head, before any words, and `redirect_to` answers every request with a
redirect.

Other OpenAI-compatible servers speak variants of the API; these knobs make the fake speak
them: `models_as_list` (/models answers a bare JSON array, as Together AI does),
`think_tags` ("block": answers open with "<think>REASONING</think>" in `content`, as reasoning
models served without a reasoning parser write; "open": only "REASONING</think>", the chat
template having opened the tag), `content_parts` (delta.content as a list of parts, a
"thinking" part first, as Mistral's magistral models send), `omit_done` (the stream ends
after its finish_reason without "data: [DONE]": ik_llama.cpp, older TGI), `null_error`
(every chunk carries "error": null: Foundry Local), `stream_content_type` (the Content-Type
label of streamed answers, e.g. "application/json"), `stream_as_json` (a streamed request
gets one whole JSON answer, as servers that ignore `stream` send) and `error_with_200` (chat
requests get HTTP 200 with this {"error": ...} body, as OpenRouter answers some failures)
and `prompt_filter_results` (a stream opens at once with a chunk of no choices and the
prompt's content-filter results, as Azure OpenAI's do, before a reasoning model's
`think_seconds`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import json
import math
import re
import struct
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from core.testing.server import FakeServer, RecordedRequest

Messages = list[dict[str, Any]]
ReplyFn = Callable[[Messages], str | Awaitable[str]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_TRANSCRIPT = (
    "hello, this is a voice note for relay bot. what is the weather like in lisbon?"
)
DEFAULT_MODELS = [
    "gpt-4o-mini",
    "gpt-4o",
    "whisper-1",
    "gpt-4o-mini-transcribe",
    "gpt-image-1",
    "omni-moderation-latest",
]
# Models OpenAI lists but refuses on /v1/chat/completions (404, "This is not a chat model").
NOT_CHAT_MODELS = frozenset(
    {
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-4o-mini-tts",
        "tts-1",
        "tts-1-hd",
        "dall-e-2",
        "dall-e-3",
        "gpt-image-1",
        "omni-moderation-latest",
        "text-moderation-latest",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "text-embedding-ada-002",
        "davinci-002",
        "babbage-002",
    }
)
AUDIO_EXTENSIONS = frozenset({"flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "wav", "webm"})
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# OpenAI's limit on an audio request's body, multipart framing and fields included.
MAX_AUDIO_REQUEST_BYTES = 25 * 1024 * 1024


def make_png(width: int, height: int, rgb: tuple[int, int, int] = (80, 140, 220)) -> bytes:
    """A valid solid-colour RGB PNG, built with zlib and struct only."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    row = b"\x00" + bytes(rgb) * width  # filter byte 0, then the pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height, 6))
        + chunk(b"IEND", b"")
    )


def message_text(content: Any) -> str:
    """The text of a chat message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        ]
        return " ".join(parts)
    return ""


def echo_reply(messages: Messages) -> str:
    """The default reply: "echo: " and the text of the last user message."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return "echo: " + message_text(message.get("content"))
    return "echo: "


# What GPT Image takes (DALL-E's sizes and qualities were retired with it), and its refusal.
_GPT_IMAGE_SETTINGS = {
    "size": ("1024x1024", "1024x1536", "1536x1024", "auto"),
    "quality": ("low", "medium", "high", "auto"),
}
AUDIO_TOKENS_PER_SECOND = 10
# GPT Image's output tokens for a square picture, by quality.
_IMAGE_TOKENS = {"low": 272, "medium": 1056, "high": 4160}


def _picture_size(data: bytes) -> tuple[int, int] | None:
    """A PNG's or baseline/progressive JPEG's width and height, else None."""
    if data.startswith(PNG_SIGNATURE) and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if not data.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 9 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):  # start of frame: precision, height, width
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return int(width), int(height)
        at += 2 + length
    return None


def _input_image_tokens(data: bytes) -> int:
    """The input tokens GPT Image counts for a picture sent to it (an edit's), as OpenAI
    counts them: 65 plus 129 for each 512-pixel tile of the picture scaled to fit 2048x2048
    and then to a shorter side of at most 768. A picture of unknown size counts as
    1024x1024."""
    width, height = (float(v) for v in (_picture_size(data) or (1024, 1024)))
    scale = min(1.0, 2048 / max(width, height, 1))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / max(min(width, height), 1))
    tiles = math.ceil(width * scale / 512) * math.ceil(height * scale / 512)
    return 65 + 129 * tiles


def _refused_image_setting(model: str, size: str, quality: str) -> web.Response | None:
    if not model.startswith("gpt-image"):
        return None  # another server's model: any size
    for field, value in (("size", size), ("quality", quality)):
        allowed = _GPT_IMAGE_SETTINGS[field]
        if value not in allowed:
            listed = ", ".join(f"'{v}'" for v in allowed[:-1]) + f", and '{allowed[-1]}'"
            return _error(
                400,
                f"Invalid value: '{value}'. Supported values are: {listed}.",
                code="invalid_value",
                param=field,
            )
    return None


def _words(text: str) -> int:
    return len(text.split())


def _data_url_bytes(part: Mapping[str, Any]) -> bytes:
    """The bytes of an image_url part's data URL (b"" for anything else)."""
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else None
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        return b""
    try:
        return base64.b64decode(url.split(";base64,", 1)[1])
    except ValueError:
        return b""


def _error_body(message: str, type_: str, code: str | None, param: str | None = None) -> Any:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.json_response(
        _error_body(message, type_, code, param), status=status, headers=headers
    )


@dataclass(slots=True)
class _Failure:
    status: int
    code: str | None
    message: str
    type: str
    retry_after: float | None
    times: int
    path: str | None


class FakeOpenAI(FakeServer):
    """An OpenAI-compatible server: chat (JSON and SSE), audio, images, moderations, models."""

    def __init__(self) -> None:
        super().__init__()
        self.reply: ReplyFn = echo_reply
        self.transcript: str = DEFAULT_TRANSCRIPT
        self.translation: str = DEFAULT_TRANSCRIPT
        # How long the fake "hears" any audio to be (it reports it as the usage it bills).
        self.audio_seconds: float = 7.5
        # When set, transcription models other than whisper refuse audio longer than this
        # many seconds with OpenAI's 400 (gpt-4o-transcribe stops at 1500, the diarize model
        # at 1400): "audio duration 1830.53 seconds is longer than 1500 seconds which is the
        # maximum for this model". whisper-1 has no duration limit, only the size limit.
        self.max_audio_seconds: float | None = None
        # Audio requests whose body (Content-Length, else the bytes read) is larger get
        # OpenAI's 413 "Maximum content size limit (26214400) exceeded (N bytes read)", of
        # type server_error: the limit counts the whole multipart body, not just the file.
        self.max_audio_request_bytes: int = MAX_AUDIO_REQUEST_BYTES
        self.flag_words: dict[str, list[str]] = {"FLAGME": ["violence"]}
        # Pictures (their bytes) moderation flags, with the categories, when they come as
        # image_url parts (data URLs) of a multi-modal input, as omni-moderation reads them.
        self.flag_pictures: dict[bytes, list[str]] = {}
        # False: /moderations refuses image inputs whatever the model (a text-only server
        # or proxy under an omni-moderation name), as a text-moderation model does.
        self.moderation_reads_images = True
        self.models: list[str] = list(DEFAULT_MODELS)
        # Chat requests for these get OpenAI's 404 model_not_found (a model withdrawn).
        self.missing_models: set[str] = set()
        # A reasoning model's hidden tokens before each answer: they count against the
        # reply limit (an answer may have no room left: empty, finish_reason "length").
        self.reasoning_tokens: int = 0
        # Seconds a reasoning model thinks before each chat answer, sending nothing at all
        # meanwhile (not even the response head), as OpenAI's Chat Completions does for the
        # o-series and gpt-5: the first byte of a streamed answer comes after the whole think.
        self.think_seconds: float = 0.0
        # Paths answered with a bare 404, as servers without them do (Ollama: /moderations,
        # /audio/transcriptions) or as a base URL missing its /v1 finds every path.
        self.missing_endpoints: set[str] = set()
        # Said as every answer's finish_reason when set (e.g. Azure's "content_filter").
        self.finish_reason: str | None = None
        # Refuse chat requests carrying `stream_options`, as some compatible servers do.
        self.reject_stream_options: bool = False
        self.chunk_delay: float = 0.0
        # When set, streamed answers are compressed (gzip or deflate, as the client accepts).
        self.compress_streams: bool = False
        self.cut_stream_after: int | None = None
        # The next this many streamed answers are cut after their head and role chunk, before
        # any words (a proxy's idle cut while a reasoning model thinks); later ones are whole.
        self.cut_next_streams: int = 0
        # By path suffix ("/images/generations"): seconds a request's answer is held back
        # after it was made (and billed), as a slow endpoint answers.
        self.answer_delays: dict[str, float] = {}
        # Path suffixes whose requests are read and worked on (billed), and their connection
        # then dropped with no answer, as a proxy or server that fails mid-request does.
        self.drop_after_request: set[str] = set()
        self.error_mid_stream: dict[str, Any] | None = None
        # Variants of compatible servers (see the module's docstring).
        self.models_as_list: bool = False
        self.think_tags: str | None = None  # "block" or "open"
        self.thinking: str = "The user wants an answer. I will think it over first."
        self.content_parts: bool = False
        self.omit_done: bool = False
        self.null_error: bool = False
        self.stream_content_type: str | None = None
        self.stream_as_json: bool = False
        self.error_with_200: dict[str, Any] | None = None
        self.prompt_filter_results: bool = False
        # When set, requests must carry "Authorization: Bearer <api_key>" or get a 401.
        self.api_key: str | None = None
        # When set, every /v1 request is answered 302 Found to this URL plus the path after
        # /v1, as an http -> https redirect ("https://host/v1") or a proxy's login page
        # ("https://sso.example/login?next=") answers.
        self.redirect_to: str | None = None
        # When set, chat prompts longer than this many (rough) tokens get context_length_exceeded.
        self.context_tokens: int | None = None
        # By model: the most (rough) tokens of input a chat request may carry, refused past
        # it as OpenAI refuses gpt-5's past 272,000 ("Input tokens exceed the configured
        # limit of 272000 tokens. ...", context_length_exceeded), whatever its window.
        self.max_input_tokens: dict[str, int] = {}
        # What each picture (an image_url part) adds to a request's count (0: nothing).
        self.tokens_per_picture = 0
        # "b64_json" (GPT image models) or "url" (the retired DALL·E style, served by this fake).
        self.image_response_format: str = "b64_json"
        # The quality a GPT Image model reports for quality "auto" (OpenAI picks by prompt).
        self.image_auto_quality: str = "medium"
        self._lock = threading.Lock()
        # Queued answers: (text, refused): a refusal comes back as OpenAI sends one.
        self._replies: deque[tuple[str, bool]] = deque()
        self._failures: list[_Failure] = []
        self._images: dict[str, bytes] = {}

    # -- knobs -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The URL to configure as the OpenAI base URL (ends in /v1)."""
        return self.url + "/v1"

    def queue_reply(self, text: str) -> None:
        """Answer the next chat request with `text` (queued replies are used first)."""
        with self._lock:
            self._replies.append((text, False))

    def queue_refusal(self, text: str) -> None:
        """Answer the next chat request with a refusal, as OpenAI sends one: `text` in
        `message.refusal` (content null), or streamed in `delta.refusal` chunks."""
        with self._lock:
            self._replies.append((text, True))

    def fail_next(
        self,
        status: int,
        *,
        code: str | None = None,
        message: str = "The fake server was told to fail this request.",
        retry_after: float | None = None,
        times: int = 1,
        path: str | None = None,
        error_type: str | None = None,
    ) -> None:
        """Answer the next `times` requests (whose path ends with `path`, if given) with an error.

        The body has OpenAI's shape {"error": {"message", "type", "param", "code"}}, the type
        derived from status and code unless `error_type` is given; with `retry_after` the
        response carries `retry-after-ms` and `retry-after` headers.
        """
        if error_type is None:
            if code == "insufficient_quota":
                error_type = "insufficient_quota"
            elif status == 429:
                error_type = "requests"
            elif status >= 500:
                error_type = "server_error"
            else:
                error_type = "invalid_request_error"
        failure = _Failure(status, code, message, error_type, retry_after, times, path)
        with self._lock:
            self._failures.append(failure)

    async def moderated(self, text: str, within: float = 5) -> None:
        """Wait until a moderation request carried `text` (e.g. a whole streamed answer)."""
        while True:
            requests = await self.wait_for("/moderations", count=1, within=within)
            if any(text in str(r.json) for r in requests):
                return
            await asyncio.sleep(0.01)

    def chat_requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of the chat completion requests received so far."""
        return [r.json for r in self.calls("/chat/completions") if isinstance(r.json, dict)]

    # -- routing -----------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        """Add the /v1 routes and the image download route."""
        app.router.add_post("/v1/chat/completions", self._guard(self._chat))
        app.router.add_post("/v1/audio/transcriptions", self._guard(self._transcribe))
        app.router.add_post("/v1/audio/translations", self._guard(self._translate))
        app.router.add_post("/v1/images/generations", self._guard(self._generate_image))
        app.router.add_post("/v1/images/edits", self._guard(self._edit_image))
        app.router.add_post("/v1/moderations", self._guard(self._moderate))
        app.router.add_get("/v1/models", self._guard(self._list_models))
        app.router.add_get("/files/images/{name}", self._download_image)

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if self.redirect_to is not None:
                location = self.redirect_to + request.path.removeprefix("/v1")
                return web.Response(status=302, headers={"Location": location})
            if self.api_key is not None:
                sent = request.headers.get("Authorization", "")
                if sent != f"Bearer {self.api_key}":
                    shown = sent.removeprefix("Bearer ")
                    masked = f"{shown[:3]}***{shown[-4:]}" if len(shown) > 8 else "***"
                    return _error(
                        401,
                        f"Incorrect API key provided: {masked}. You can find your API key at "
                        "https://platform.openai.com/account/api-keys.",
                        code="invalid_api_key",
                    )
            if any(request.path.endswith(path) for path in self.missing_endpoints):
                return web.Response(status=404, text="404 page not found")  # as Ollama's
            failure = self._take_failure(request.path)
            if failure is not None:
                headers: dict[str, str] = {}
                if failure.retry_after is not None:
                    headers["retry-after-ms"] = str(round(failure.retry_after * 1000))
                    headers["retry-after"] = str(math.ceil(failure.retry_after))
                return _error(
                    failure.status,
                    failure.message,
                    type_=failure.type,
                    code=failure.code,
                    headers=headers,
                )
            response = await handler(request)
            if any(request.path.endswith(path) for path in self.drop_after_request):
                return self._cut(request, response)
            delay = next(
                (s for path, s in self.answer_delays.items() if request.path.endswith(path)), 0.0
            )
            if delay:
                await asyncio.sleep(delay)
            return response

        return guarded

    def _take_failure(self, path: str) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.path is None or path.endswith(failure.path):
                    failure.times -= 1
                    if failure.times <= 0:
                        self._failures.remove(failure)
                    return failure
        return None

    @staticmethod
    def _recorded(request: web.Request) -> RecordedRequest:
        rec: RecordedRequest = FakeServer.recorded(request)
        return rec

    # -- chat --------------------------------------------------------------------------
    async def _next_reply(self, messages: Messages) -> tuple[str, bool]:
        """The answer's text, and whether it is a refusal."""
        with self._lock:
            queued = self._replies.popleft() if self._replies else None
        if queued is not None:
            return queued
        result = self.reply(messages)
        if inspect.isawaitable(result):
            result = await result
        return str(result), False

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = self._recorded(request).json
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.")
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            return _error(400, "you must provide a model parameter", param="model")
        if not isinstance(messages, list) or not messages:
            return _error(400, "'messages' must be a non-empty array", param="messages")
        if self.reject_stream_options and "stream_options" in body:
            # As Azure OpenAI's older API versions answer (Mistral's API: a 422 alike).
            return _error(400, "Unrecognized request argument supplied: stream_options")
        if model in self.missing_models:
            return _error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        if model in NOT_CHAT_MODELS:
            return _error(
                404,
                "This is not a chat model and thus not supported in the v1/chat/completions "
                "endpoint. Did you mean to use v1/completions?",
                param="model",
            )
        prompt_tokens = sum(
            _words(message_text(m.get("content"))) for m in messages if isinstance(m, dict)
        )
        if self.tokens_per_picture:
            prompt_tokens += self.tokens_per_picture * sum(
                1
                for m in messages
                if isinstance(m, dict) and isinstance(m.get("content"), list)
                for part in m["content"]
                if isinstance(part, dict) and part.get("type") == "image_url"
            )
        if self.context_tokens is not None and prompt_tokens > self.context_tokens:
            return _error(
                400,
                f"This model's maximum context length is {self.context_tokens} tokens. "
                f"However, your messages resulted in {prompt_tokens} tokens. "
                "Please reduce the length of the messages.",
                code="context_length_exceeded",
                param="messages",
            )
        input_limit = self.max_input_tokens.get(model)
        if input_limit is not None and prompt_tokens > input_limit:
            return _error(
                400,
                f"Input tokens exceed the configured limit of {input_limit} tokens. Your messages "
                f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
                code="context_length_exceeded",
                param="messages",
            )
        if self.error_with_200 is not None:
            return web.json_response({"error": self.error_with_200})
        text, refused = await self._next_reply(messages)
        streams = bool(body.get("stream")) and not self.stream_as_json
        if self.think_seconds > 0 and not (streams and self.prompt_filter_results):
            await asyncio.sleep(self.think_seconds)  # the model reasons, in silence
        finish_reason = "stop"
        thinking = self.reasoning_tokens
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and limit > 0 and thinking + _words(text) > limit:
            text = " ".join(text.split()[: max(0, limit - thinking)])
            thinking = min(thinking, limit)
            finish_reason = "length"
        if self.finish_reason is not None:
            finish_reason = self.finish_reason
        completion = thinking + _words(text)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": thinking, "audio_tokens": 0},
        }
        completion_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        if self.think_tags is not None and not refused:
            # Reasoning written into the answer by a model served without a reasoning parser.
            opening = "<think>\n" if self.think_tags == "block" else ""
            text = f"{opening}{self.thinking}\n</think>\n\n{text}"
        if body.get("stream") and not self.stream_as_json:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            del body, messages  # what the stream needs is taken (see `_answered`)
            return await self._chat_stream(
                request,
                text=text,
                model=model,
                completion_id=completion_id,
                created=created,
                finish_reason=finish_reason,
                usage=usage if include_usage else None,
                refused=refused,
            )
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if refused:
            message.update(content=None, refusal=text)
        elif self.content_parts:
            message["content"] = self._parts(text)
        return web.json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": usage,
                "system_fingerprint": "fp_fake",
            },
            content_type=(self.stream_content_type or "text/event-stream").split(";")[0]
            if body.get("stream")
            else "application/json",
        )

    def _parts(self, text: str) -> list[dict[str, Any]]:
        """`text` as Mistral's magistral models send content: a thinking part, then text."""
        thinking = [{"type": "text", "text": self.thinking}]
        return [{"type": "thinking", "thinking": thinking}, {"type": "text", "text": text}]

    def _answered(self, request: web.Request) -> None:
        """A streamed answer is about to end (hook: the benchmark's fake forgets the request
        here, so freeing a large parsed body is part of the model's time, not after it)."""

    async def _chat_stream(
        self,
        request: web.Request,
        *,
        text: str,
        model: str,
        completion_id: str,
        created: int,
        finish_reason: str,
        usage: dict[str, Any] | None,
        refused: bool = False,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": self.stream_content_type or "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        if self.compress_streams:
            response.enable_compression()
        include_usage = usage is not None
        cut_after = self.cut_stream_after
        with self._lock:
            if self.cut_next_streams > 0:
                self.cut_next_streams -= 1
                cut_after = 0

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            data: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                data["usage"] = None
            if self.null_error:
                data["error"] = None
            return data

        async def send(data: Any) -> None:
            payload = data if isinstance(data, str) else json.dumps(data)
            await response.write(f"data: {payload}\n\n".encode())

        try:
            # (Inside: after a long think the client may have gone away already.)
            await response.prepare(request)
            if self.prompt_filter_results:  # Azure's first chunk, then the model's think
                await send(
                    {
                        "id": "",
                        "object": "",
                        "created": 0,
                        "model": "",
                        "choices": [],
                        "prompt_filter_results": [
                            {"prompt_index": 0, "content_filter_results": {}}
                        ],
                    }
                )
                await asyncio.sleep(self.think_seconds)
            if refused:  # OpenAI's first chunk of a refusal, then its text in `refusal`
                await send(chunk({"role": "assistant", "content": None, "refusal": ""}))
            elif self.content_parts:
                await send(chunk({"role": "assistant", "content": self._parts("")[:1]}))
            else:
                await send(chunk({"role": "assistant", "content": "", "refusal": None}))
            field = "refusal" if refused else "content"
            parts = self.content_parts and not refused
            pieces = re.findall(r"\S+\s*|\s+", text)
            for sent, piece in enumerate(pieces):
                if cut_after is not None and sent >= cut_after:
                    return self._cut(request, response)
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                if parts:
                    await send(chunk({field: [{"type": "text", "text": piece}]}))
                else:
                    await send(chunk({field: piece}))
                if self.error_mid_stream is not None:
                    error = self.error_mid_stream
                    await send(error if "error" in error else {"error": error})
                    await response.write_eof()
                    return response
            if cut_after is not None:
                return self._cut(request, response)
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await send(chunk({}, finish_reason))
            if usage is not None:
                last = chunk({})
                last["choices"] = []
                last["usage"] = usage
                await send(last)
            self._answered(request)
            if not self.omit_done:
                await send("[DONE]")
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away (e.g. its idle timeout fired); nothing left to do
        return response

    @staticmethod
    def _cut(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        # Drop the TCP connection mid-body, as a crashed proxy or upstream would.
        if request.transport is not None:
            request.transport.abort()
        return response

    # -- audio -------------------------------------------------------------------------
    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        return self._audio(request, self.transcript)

    async def _translate(self, request: web.Request) -> web.StreamResponse:
        return self._audio(request, self.translation)

    def _audio(self, request: web.Request, text: str) -> web.Response:
        recorded = self._recorded(request)
        size = request.content_length
        if size is None:
            size = len(recorded.body)
        if size > self.max_audio_request_bytes:
            return _error(
                413,
                f"Maximum content size limit ({self.max_audio_request_bytes}) exceeded "
                f"({size} bytes read)",
                type_="server_error",
            )
        form = recorded.form
        upload = form.get("file")
        if not isinstance(upload, dict):
            return _error(400, "No file was provided in the 'file' field.", param="file")
        model = str(form.get("model") or "")
        if not model:
            return _error(400, "you must provide a model parameter", param="model")
        if model in self.models and not any(w in model for w in ("whisper", "transcribe")):
            # A model the server has, but for chat or images (RELAYBOT_TRANSCRIBE_MODEL set
            # to the chat model): refused as the model, not as the file.
            return _error(
                400,
                f"Invalid model {model} for this endpoint: use a speech-to-text model such "
                "as whisper-1 or gpt-4o-mini-transcribe.",
                param="model",
            )
        filename = str(upload.get("filename") or "")
        ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        if ext not in AUDIO_EXTENSIONS:
            supported = ", ".join(f"'{e}'" for e in sorted(AUDIO_EXTENSIONS))
            return _error(
                400,
                f"Invalid file format. Supported formats: [{supported}]",
                code="invalid_value",
                param="file",
            )
        limit = self.max_audio_seconds
        if (
            limit is not None
            and self.audio_seconds > limit
            and not str(form.get("model")).startswith("whisper")
        ):
            return _error(
                400,
                f"audio duration {self.audio_seconds:g} seconds is longer than {limit:g} "
                "seconds which is the maximum for this model",
                code="invalid_value",
            )
        if form.get("response_format") == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        # What OpenAI bills: whisper the audio's seconds, the gpt-4o transcribe models
        # tokens (here a made-up AUDIO_TOKENS_PER_SECOND; nothing has to match OpenAI's).
        seconds = self.audio_seconds
        usage: dict[str, Any]
        if str(form.get("model")).startswith("whisper"):
            usage = {"type": "duration", "seconds": math.ceil(seconds)}
        else:
            audio_tokens = round(seconds * AUDIO_TOKENS_PER_SECOND)
            usage = {
                "type": "tokens",
                "input_tokens": audio_tokens,
                "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
                "output_tokens": _words(text),
                "total_tokens": audio_tokens + _words(text),
            }
        return web.json_response({"text": text, "usage": usage})

    # -- images ------------------------------------------------------------------------
    def _image_result(
        self, request: web.Request, fields: Mapping[str, Any], picture: bytes | None = None
    ) -> web.Response:
        model = str(fields.get("model") or "gpt-image-1")
        prompt = str(fields["prompt"])
        size = fields.get("size") or "auto"
        quality = fields.get("quality") or "auto"
        gpt_image = model.startswith("gpt-image")
        refused = _refused_image_setting(model, str(size), str(quality))
        if refused is not None:
            return refused
        if size == "auto":
            size = "1024x1024"
        match = re.fullmatch(r"(\d{1,4})x(\d{1,4})", str(size))
        if match is None or not all(0 < int(v) <= 4096 for v in match.groups()):
            return _error(400, f"Invalid value: '{size}'.", code="invalid_value", param="size")
        width, height = (int(v) for v in match.groups())
        digest = hashlib.sha256(prompt.encode()).digest()
        png = make_png(width, height, (digest[0], digest[1], digest[2]))
        item: dict[str, Any]
        if (fields.get("response_format") or self.image_response_format) == "url":
            name = uuid.uuid4().hex + ".png"
            with self._lock:
                self._images[name] = png
            item = {"url": f"{self.url}/files/images/{name}", "revised_prompt": prompt}
        else:
            item = {"b64_json": base64.b64encode(png).decode("ascii")}
        result: dict[str, Any] = {"created": int(time.time()), "data": [item]}
        if gpt_image:  # GPT Image says what it made, and its tokens
            made = self.image_auto_quality if quality == "auto" else quality
            output = _IMAGE_TOKENS.get(made, 1056)
            text_tokens = _words(prompt)
            # An edit's picture is input too, counted and billed as image tokens.
            image_tokens = _input_image_tokens(picture) if picture is not None else 0
            result.update(
                background="opaque",
                output_format="png",
                quality=made,
                size=size,
                usage={
                    "input_tokens": text_tokens + image_tokens,
                    "input_tokens_details": {
                        "text_tokens": text_tokens,
                        "image_tokens": image_tokens,
                    },
                    "output_tokens": output,
                    "total_tokens": text_tokens + image_tokens + output,
                },
            )
        return web.json_response(result)

    async def _generate_image(self, request: web.Request) -> web.StreamResponse:
        body = self._recorded(request).json
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            return _error(400, "Missing required parameter: 'prompt'.", param="prompt")
        return self._image_result(request, body)

    async def _edit_image(self, request: web.Request) -> web.StreamResponse:
        form = self._recorded(request).form
        upload = form.get("image", form.get("image[]"))
        if not isinstance(upload, dict):
            return _error(400, "Missing required parameter: 'image'.", param="image")
        data: bytes = upload.get("data", b"")
        is_png = data.startswith(PNG_SIGNATURE)
        is_jpeg = data.startswith(b"\xff\xd8\xff")
        is_webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
        if not (is_png or is_jpeg or is_webp):
            return _error(
                400,
                "Invalid image file or mode for image 1, please check your image file.",
                code="invalid_image_format",
                param="image",
            )
        prompt = form.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return _error(400, "Missing required parameter: 'prompt'.", param="prompt")
        return self._image_result(request, form, data)

    async def _download_image(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            png = self._images.get(request.match_info["name"])
        if png is None:
            return web.Response(status=404, text="not found")
        return web.Response(body=png, content_type="image/png")

    # -- moderation and models ---------------------------------------------------------
    async def _moderate(self, request: web.Request) -> web.StreamResponse:
        body = self._recorded(request).json
        if not isinstance(body, dict) or "input" not in body:
            return _error(400, "Missing required parameter: 'input'.", param="input")
        raw = body["input"]
        inputs: list[str]
        pictures: list[bytes] = []
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and all(isinstance(i, str) for i in raw):
            inputs = list(raw)
        elif isinstance(raw, list):
            inputs = [message_text(raw)]  # one multimodal input made of parts
            model = str(body.get("model") or "omni-moderation")
            if not model.startswith("omni-moderation") or not self.moderation_reads_images:
                return _error(400, "This model does not support image inputs.", param="input")
            pictures = [_data_url_bytes(p) for p in raw if isinstance(p, dict)]
        else:
            return _error(400, "Invalid type for 'input'.", param="input")
        flag_words = dict(self.flag_words)
        results = []
        for text in inputs:
            hit: set[str] = set()
            for picture in pictures:
                hit.update(self.flag_pictures.get(picture, ()))
            for word, categories in flag_words.items():
                if re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE):
                    hit.update(categories)
            results.append(
                {
                    "flagged": bool(hit),
                    "categories": {c: c in hit for c in MODERATION_CATEGORIES},
                    "category_scores": {
                        c: (0.97 if c in hit else 0.0001) for c in MODERATION_CATEGORIES
                    },
                    "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
                }
            )
        return web.json_response(
            {
                "id": "modr-" + uuid.uuid4().hex[:24],
                "model": str(body.get("model") or "omni-moderation-latest"),
                "results": results,
            }
        )

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        data = [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}
            for m in list(self.models)
        ]
        if self.models_as_list:  # Together AI: the list itself, with a "type" per model
            return web.json_response([{**m, "type": "chat"} for m in data])
        return web.json_response({"object": "list", "data": data})
