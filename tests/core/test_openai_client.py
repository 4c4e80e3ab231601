"""The OpenAI client against the fake OpenAI server, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import Settings
from core.errors import (
    AuthFailed,
    BadInput,
    ConfigError,
    ContentRefused,
    ContextTooLong,
    ModelUnavailable,
    QuotaExhausted,
    RateLimited,
    UpstreamDown,
)
from core.openai_client import (
    ChatDelta,
    EncodedMessage,
    FirstTokenTimeout,
    NotAnswered,
    OpenAIClient,
    Picture,
    Transcript,
    Usage,
    build_http_client,
)
from core.testing.fake_openai import DEFAULT_TRANSCRIPT, PNG_SIGNATURE, FakeOpenAI

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
KEY = "sk-test-0123456789abcdef"
PNG = PNG_SIGNATURE


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture(params=["app", "plain"])
async def http(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """The app's client (its chat stream goes straight to the transport) and a plain httpx
    client (everything through `send`): the same behaviour is expected of both."""
    if request.param == "app":
        client = build_http_client(Settings(_env_file=None, request_timeout=5))  # type: ignore[call-arg]
    else:
        client = httpx.AsyncClient(timeout=5)
    async with client:
        yield client


@pytest.fixture
def client(http: httpx.AsyncClient, fake: FakeOpenAI) -> OpenAIClient:
    return OpenAIClient(http, base_url=fake.base_url, api_key=KEY, retry_base_delay=0.001)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def collect(client: OpenAIClient, text: str) -> list[ChatDelta]:
    return [d async for d in client.chat_stream(model="gpt-4o-mini", messages=user(text))]


# -- chat ------------------------------------------------------------------------------
async def test_chat_returns_the_answer_with_usage(client: OpenAIClient, fake: FakeOpenAI) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "what is relaybot"}]},
    ]
    result = await client.chat(model="gpt-4o-mini", messages=messages, max_tokens=50)

    assert result.text == "echo: what is relaybot"
    assert result.finish_reason == "stop"
    assert result.model == "gpt-4o-mini"
    assert result.usage == Usage(prompt_tokens=5, completion_tokens=4)
    sent = fake.chat_requests()[0]
    assert sent["messages"] == messages
    assert sent["max_tokens"] == 50
    assert "stream" not in sent


async def test_streamed_chat_yields_text_then_usage(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.queue_reply("Lisbon is sunny and warm today")

    deltas = await collect(client, "weather in lisbon?")

    assert "".join(d.text for d in deltas) == "Lisbon is sunny and warm today"
    assert len([d for d in deltas if d.text]) > 1, "the answer arrives in pieces"
    assert deltas[-1] == ChatDelta(text="", usage=Usage(prompt_tokens=3, completion_tokens=6))
    assert any(d.finish_reason == "stop" for d in deltas)
    sent = fake.chat_requests()[0]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


async def test_a_refusal_is_the_answer_streamed_or_not(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    refusal = "I'm sorry, I can't help with that."
    fake.queue_refusal(refusal)
    assert (await client.chat(model="gpt-4o-mini", messages=user("pick a lock"))).text == refusal
    fake.queue_refusal(refusal)
    deltas = await collect(client, "pick a lock")
    assert "".join(d.text for d in deltas) == refusal
    assert len([d for d in deltas if d.text]) > 1, "the refusal arrives in pieces"


async def test_a_server_refusing_stream_options_is_streamed_to_without_them(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.reject_stream_options = True
    fake.queue_reply("Lisbon is sunny")
    deltas = await collect(client, "weather in lisbon?")
    assert "".join(d.text for d in deltas) == "Lisbon is sunny"
    assert all(d.usage is None for d in deltas)  # the server was not asked for it
    first, second = fake.chat_requests()
    assert "stream_options" in first and "stream_options" not in second
    # The client remembers: later streams go out without them at once.
    await collect(client, "and tomorrow?")
    assert len(fake.chat_requests()) == 3
    assert "stream_options" not in fake.chat_requests()[-1]


async def test_a_compressed_or_non_ascii_stream_reads_the_same(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    """Event streams are UTF-8; one a server or proxy compressed is read all the same."""
    text = "São Paulo: 28 °C, sol — 晴れ 🌞"
    fake.queue_reply(text)
    plain = await collect(client, "weather?")
    fake.compress_streams = True
    fake.queue_reply(text)
    compressed = await collect(client, "weather?")

    assert "".join(d.text for d in plain) == text
    assert "".join(d.text for d in compressed) == text
    assert compressed[-1].usage == plain[-1].usage


@pytest.mark.parametrize("compressed", [False, True])
async def test_the_event_stream_reads_the_same_as_bytes_and_as_text(
    http: httpx.AsyncClient, fake: FakeOpenAI, compressed: bool
) -> None:
    """The body `EventSource` reads, as text (what httpx-sse reads today) or as bytes (in
    case a release reads those): the decoded event stream either way."""
    from core.openai_client import _EventText

    fake.compress_streams = compressed
    body = {"model": "gpt-4o-mini", "stream": True, "messages": user("olá, 晴れ")}
    texts, datas = [], []
    for read in ("text", "bytes"):
        async with http.stream("POST", f"{fake.base_url}/chat/completions", json=body) as resp:
            view = _EventText(resp)
            assert view.status_code == 200  # anything else is the response's own
            if read == "text":
                texts.append("".join([t async for t in view.aiter_text()]))
            else:
                datas.append(b"".join([b async for b in view.aiter_bytes()]))

    def answer(stream: str) -> str:
        chunks = [json.loads(line[6:]) for line in stream.splitlines() if line[:7] == "data: {"]
        return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])

    assert answer(texts[0]) == answer(datas[0].decode()) == "echo: olá, 晴れ"
    assert texts[0].rstrip().endswith("data: [DONE]")


async def test_streamed_answers_reuse_one_connection(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    # A new connection per answer would cost a TLS handshake per message against a real API.
    for question in ("one", "two", "three"):
        await collect(client, question)
    peers = {r.peer for r in fake.calls("/chat/completions")}
    assert len(peers) == 1


async def test_many_answers_at_once_keep_their_connections_for_the_next_ones(
    fake: FakeOpenAI,
) -> None:
    # 40 answers stream at once, then 40 more: the second wave reuses the first wave's
    # connections instead of opening new ones (each a TLS handshake against a real API).
    fake.chunk_delay = 0.01
    settings = Settings(openai_base_url=fake.base_url, openai_api_key=KEY, max_connections=100)
    http = build_http_client(settings)
    try:
        app_client = OpenAIClient(http, base_url=fake.base_url, api_key=KEY)
        for _ in range(2):
            await asyncio.gather(*(collect(app_client, f"q{i}") for i in range(40)))
    finally:
        await http.aclose()
    peers = {r.peer for r in fake.calls("/chat/completions")}
    assert len(fake.chat_requests()) == 80
    assert len(peers) <= 40


async def test_error_mid_stream_after_text_is_raised_without_retry(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.queue_reply("a long answer that breaks")
    fake.error_mid_stream = {"message": "The server had an error", "type": "server_error"}
    received: list[str] = []

    with pytest.raises(UpstreamDown) as caught:
        async for delta in client.chat_stream(model="gpt-4o-mini", messages=user("hi")):
            received.append(delta.text)

    assert received == ["a "], "the text already shown is not repeated by a retry"
    assert "server had an error" in str(caught.value)
    assert len(fake.chat_requests()) == 1


async def test_quota_error_mid_stream_maps_to_quota_exhausted(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.error_mid_stream = {
        "error": {"message": "You exceeded your quota", "type": "insufficient_quota"}
    }
    with pytest.raises(QuotaExhausted):
        await collect(client, "hi")


async def test_cut_stream_raises_upstream_down(client: OpenAIClient, fake: FakeOpenAI) -> None:
    fake.queue_reply("one two three four five")
    fake.cut_stream_after = 2
    received: list[str] = []

    with pytest.raises(UpstreamDown, match="stream cut"):
        async for delta in client.chat_stream(model="gpt-4o-mini", messages=user("hi")):
            received.append(delta.text)

    assert "".join(received) == "one two "


def idle_client(http: httpx.AsyncClient, fake: FakeOpenAI, seconds: float) -> OpenAIClient:
    """A client whose streams are cut after `seconds` without data once their answer began
    (their first words may take a second), never retried."""
    return OpenAIClient(
        http,
        base_url=fake.base_url,
        api_key=KEY,
        stream_idle_timeout=seconds,
        first_token_timeout=1.0,
        max_retries=0,
    )


async def test_stream_that_stalls_raises_upstream_down(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    client = idle_client(http, fake, 0.02)
    fake.queue_reply("slow reply")
    fake.chunk_delay = 0.2  # the first word after 0.2 s (the first wait), then a stall

    started = time.monotonic()
    with pytest.raises(UpstreamDown, match="no data"):
        await collect(client, "hi")
    assert time.monotonic() - started < 0.35


async def test_a_slow_consumer_is_not_an_idle_stream(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    # The idle timeout is about the model going quiet, not about time spent between events
    # by whoever reads them (a slow platform, say).
    client = idle_client(http, fake, 0.05)
    fake.queue_reply("one two three")
    received: list[str] = []
    async for delta in client.chat_stream(model="gpt-4o-mini", messages=user("hi")):
        received.append(delta.text)
        await asyncio.sleep(0.12)
    assert "".join(received) == "one two three"


async def test_a_stall_after_some_text_is_cut_too(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    client = idle_client(http, fake, 0.1)
    fake.queue_reply("one two three four five six")
    fake.chunk_delay = 0.03
    received: list[str] = []
    with pytest.raises(UpstreamDown, match="no data"):
        async for delta in client.chat_stream(model="gpt-4o-mini", messages=user("hi")):
            received.append(delta.text)
            if len(received) == 2:
                fake.chunk_delay = 0.5  # the model goes quiet mid-answer
    assert received[:2] == ["one ", "two "]
    assert len(received) <= 3


async def test_a_stream_cancelled_from_outside_stays_cancelled(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    # A shutdown cancelling an answer in progress is not a stalled model: no error to map,
    # no retry.
    client = idle_client(http, fake, 1.0)
    fake.queue_reply("one two three four")
    fake.chunk_delay = 0.1
    received: list[str] = []

    async def read() -> None:
        async for delta in client.chat_stream(model="gpt-4o-mini", messages=user("hi")):
            received.append(delta.text)

    task = asyncio.create_task(read())
    await asyncio.sleep(0.15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert received == ["one "]
    assert len(fake.calls("/chat/completions")) == 1


async def test_requests_go_through_the_configured_proxy(fake: FakeOpenAI) -> None:
    # The endpoint's host does not resolve; only the proxy (here the fake itself, which
    # serves absolute-form requests as a forward proxy passes them on) can reach it.
    origin = fake.base_url.rsplit("/v1", 1)[0]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_base_url="http://model.invalid/v1",
        http_proxy=origin,
    )
    async with build_http_client(settings) as http:
        client = OpenAIClient(http, base_url="http://model.invalid/v1", api_key=KEY)
        deltas = await collect(client, "via the proxy")
        assert "".join(d.text for d in deltas) == "echo: via the proxy"
        assert "gpt-4o-mini" in await client.list_models()
    assert fake.calls("/chat/completions")[0].headers["Authorization"] == f"Bearer {KEY}"


async def test_stream_closed_early_by_the_consumer_is_fine(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.queue_reply("one two three four")
    stream = client.chat_stream(model="gpt-4o-mini", messages=user("hi"))
    first = await anext(stream)
    await stream.aclose()
    assert first.text == "one "


async def test_stream_error_before_any_text_is_retried(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.fail_next(503, message="overloaded", path="/chat/completions")
    deltas = await collect(client, "hi")
    assert "".join(d.text for d in deltas) == "echo: hi"
    assert len(fake.chat_requests()) == 2


# -- retries and error mapping ----------------------------------------------------------
async def test_rate_limit_waits_for_retry_after_then_succeeds(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.fail_next(429, code="rate_limit_exceeded", message="Rate limit reached", retry_after=0.1)

    started = time.monotonic()
    result = await client.chat(model="gpt-4o-mini", messages=user("hi"))

    assert result.text == "echo: hi"
    assert time.monotonic() - started >= 0.1
    assert len(fake.chat_requests()) == 2


async def test_rate_limit_that_persists_raises_rate_limited(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.fail_next(429, code="rate_limit_exceeded", retry_after=0.01, times=5)

    with pytest.raises(RateLimited) as caught:
        await client.chat(model="gpt-4o-mini", messages=user("hi"))

    assert caught.value.retry_after == pytest.approx(0.01)
    assert len(fake.chat_requests()) == 3  # the first try and max_retries=2


async def test_rate_limit_asking_for_a_long_wait_fails_at_once(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    client = OpenAIClient(http, base_url=fake.base_url, api_key=KEY, max_retry_wait=5)
    fake.fail_next(429, code="rate_limit_exceeded", retry_after=120)

    with pytest.raises(RateLimited) as caught:
        await client.chat(model="gpt-4o-mini", messages=user("hi"))

    assert caught.value.retry_after == 120
    assert len(fake.chat_requests()) == 1


async def test_insufficient_quota_is_not_retried(client: OpenAIClient, fake: FakeOpenAI) -> None:
    fake.fail_next(429, code="insufficient_quota", message="You exceeded your current quota")

    with pytest.raises(QuotaExhausted):
        await client.chat(model="gpt-4o-mini", messages=user("hi"))

    assert len(fake.requests) == 1


async def test_server_errors_are_retried_then_upstream_down(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.fail_next(500, message="The server had an error", times=10)

    with pytest.raises(UpstreamDown):
        await client.chat(model="gpt-4o-mini", messages=user("hi"))

    assert len(fake.chat_requests()) == 3


async def test_server_error_then_success_is_invisible(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.fail_next(502, times=2)
    result = await client.chat(model="gpt-4o-mini", messages=user("hi"))
    assert result.text == "echo: hi"


async def test_unreachable_endpoint_is_upstream_down(http: httpx.AsyncClient) -> None:
    async with FakeOpenAI() as gone:
        base_url = gone.base_url
    client = OpenAIClient(http, base_url=base_url, api_key=KEY, retry_base_delay=0.001)
    with pytest.raises(UpstreamDown):
        await client.list_models()


async def test_context_length_exceeded_maps_to_context_too_long(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.context_tokens = 5
    with pytest.raises(ContextTooLong) as caught:
        await client.chat(model="gpt-4o-mini", messages=user("one two three four five six"))
    assert "maximum context length" in str(caught.value)
    assert len(fake.chat_requests()) == 1


async def test_context_overflow_said_only_in_the_message_is_recognised(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    # vLLM and others say it only in words, with no code.
    fake.fail_next(400, message="This model's maximum context length is 4096 tokens.")
    with pytest.raises(ContextTooLong):
        await client.chat(model="local-llama", messages=user("hi"))
    # A gateway passing on gpt-5's input limit without OpenAI's code.
    fake.fail_next(400, message="Input tokens exceed the configured limit of 272000 tokens.")
    with pytest.raises(ContextTooLong):
        await client.chat(model="gpt-5", messages=user("hi"))


async def test_content_policy_maps_to_content_refused(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.fail_next(400, code="moderation_blocked", message="Your request was rejected")
    with pytest.raises(ContentRefused):
        await client.generate_image(model="gpt-image-1", prompt="something bad")


async def test_other_client_errors_are_bad_input_with_a_generic_user_message(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.fail_next(400, code="invalid_value", message="Invalid value for 'messages[0].role'")
    with pytest.raises(BadInput) as caught:
        await client.chat(model="gpt-4o-mini", messages=user("hi"))
    assert "messages[0].role" in str(caught.value)
    assert "messages" not in caught.value.user_message


@pytest.mark.parametrize("call", ["models", "chat", "stream", "moderate", "image"])
async def test_an_endpoint_that_redirects_is_a_config_error_naming_where(
    client: OpenAIClient, fake: FakeOpenAI, call: str
) -> None:
    """An http -> https redirect, or a proxy's login page: no request can work until the
    operator sets OPENAI_BASE_URL, and nothing is the person's fault."""
    fake.redirect_to = "https://llm.example.test/v1"
    calls = {
        "models": lambda: client.list_models(),
        "chat": lambda: client.chat(model="gpt-4o-mini", messages=user("hi")),
        "stream": lambda: collect(client, "hi"),
        "moderate": lambda: client.moderate(model="omni-moderation-latest", inputs=["hi"]),
        "image": lambda: client.generate_image(
            model="gpt-image-1", prompt="a red bicycle", size="1024x1024"
        ),
    }
    with pytest.raises(ConfigError) as caught:
        await calls[call]()
    said = str(caught.value)
    assert "redirects to https://llm.example.test/v1/" in said, said
    assert "set OPENAI_BASE_URL to https://llm.example.test/v1" in said, said
    assert caught.value.user_message == ConfigError.user_message
    assert len(fake.requests) == 1  # not retried, not followed (the key stays here)


async def test_a_relative_redirect_names_the_full_address(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.redirect_to = "/proxy/v1"  # a Location without scheme and host: the same server
    with pytest.raises(ConfigError) as caught:
        await client.list_models()
    assert str(caught.value) == (
        f"/models: HTTP 302 redirects to {fake.url}/proxy/v1/models: "
        f"set OPENAI_BASE_URL to {fake.url}/proxy/v1"
    )


async def test_a_model_the_endpoint_cannot_chat_with_is_model_unavailable(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    with pytest.raises(ModelUnavailable) as caught:  # OpenAI's 404 for a non-chat model
        await client.chat(model="whisper-1", messages=user("hi"))
    assert "not a chat model" in str(caught.value)
    # Ollama and vLLM say it in words only.
    fake.fail_next(404, message='model "llama3" not found, try pulling it first')
    with pytest.raises(ModelUnavailable):
        await client.chat(model="llama3", messages=user("hi"))
    fake.missing_models.add("gpt-4o")
    with pytest.raises(ModelUnavailable):
        await client.chat(model="gpt-4o", messages=user("hi"))
    assert len(fake.calls("/chat/completions")) == 3  # none retried


async def test_a_400_naming_the_model_is_model_unavailable_not_the_persons_input(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    voice_note = (FIXTURES / "voice-note.ogg").read_bytes()
    # OpenAI: a chat model sent to /audio/transcriptions, refused with param "model".
    with pytest.raises(ModelUnavailable) as caught:
        await client.transcribe(model="gpt-4o-mini", audio=voice_note, filename="note.ogg")
    assert "Invalid model gpt-4o-mini" in str(caught.value)
    # Mistral's "Invalid model: ..." of type invalid_model, without a param.
    fake.fail_next(400, error_type="invalid_model", message="Invalid model: voxtral-x")
    with pytest.raises(ModelUnavailable):
        await client.transcribe(model="voxtral-x", audio=voice_note, filename="note.ogg")
    # A code that merely mentions a model is not the model refused: the person's input.
    fake.fail_next(400, code="model_input_unreadable", message="Could not read the input.")
    with pytest.raises(BadInput) as unread:
        await client.transcribe(model="whisper-1", audio=voice_note, filename="note.ogg")
    assert not isinstance(unread.value, ModelUnavailable)
    # A 400 about the file stays the person's.
    fake.fail_next(400, message="Audio file might be corrupted or unsupported")
    with pytest.raises(BadInput) as refused:
        await client.transcribe(model="whisper-1", audio=voice_note, filename="note.ogg")
    assert not isinstance(refused.value, ModelUnavailable)


async def test_model_wanting_max_completion_tokens_gets_it(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.fail_next(
        400,
        code="unsupported_parameter",
        message="Unsupported parameter: 'max_tokens' is not supported with this model. "
        "Use 'max_completion_tokens' instead.",
    )
    result = await client.chat(model="o3", messages=user("one two three"), max_tokens=2)
    assert result.finish_reason == "length"
    assert fake.chat_requests()[-1]["max_completion_tokens"] == 2


async def test_bad_key_is_auth_failed_and_never_leaks(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.api_key = "sk-the-right-key-000000"
    client = OpenAIClient(http, base_url=fake.base_url, api_key=KEY)

    with pytest.raises(AuthFailed) as caught:
        await client.chat(model="gpt-4o-mini", messages=user("hi"))

    err = caught.value
    for text in (str(err), err.user_message, repr(err)):
        assert KEY not in text
        assert KEY[-4:] not in text, "not even the masked tail the provider echoes back"
    assert len(fake.requests) == 1


# -- headers ---------------------------------------------------------------------------
async def test_authorization_header_is_sent(client: OpenAIClient, fake: FakeOpenAI) -> None:
    await client.list_models()
    assert fake.requests[0].headers["Authorization"] == f"Bearer {KEY}"


async def test_no_authorization_header_without_a_key(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    client = OpenAIClient(http, base_url=fake.base_url + "/", api_key=None)  # e.g. Ollama
    assert "gpt-4o" in await client.list_models()
    assert "Authorization" not in fake.requests[0].headers
    assert fake.requests[0].path == "/v1/models"


async def test_client_from_settings_talks_to_the_endpoint(fake: FakeOpenAI) -> None:
    settings = Settings(_env_file=None, request_timeout=7, max_connections=3)
    async with build_http_client(settings) as http:
        assert http.timeout.read == 7
        client = OpenAIClient(http, base_url=fake.base_url, api_key=KEY)
        assert await client.list_models() == sorted(fake.models)


# -- audio -----------------------------------------------------------------------------
async def test_voice_note_oga_is_sent_as_ogg(client: OpenAIClient, fake: FakeOpenAI) -> None:
    audio = (FIXTURES / "voice-note.ogg").read_bytes()

    heard = await client.transcribe(
        model="gpt-4o-mini-transcribe", audio=audio, filename="voice/file_12.oga", language="en"
    )

    assert heard.text == DEFAULT_TRANSCRIPT
    form = fake.calls("/audio/transcriptions")[0].form
    assert form["file"]["filename"] == "file_12.ogg"
    assert form["file"]["data"] == audio
    assert form["model"] == "gpt-4o-mini-transcribe"
    assert form["language"] == "en"


async def test_audio_without_an_extension_is_named_by_its_content(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    audio = (FIXTURES / "audio-clip.m4a").read_bytes()
    await client.transcribe(model="whisper-1", audio=audio, filename="audio_message")
    assert fake.calls("/audio/transcriptions")[0].form["file"]["filename"] == "audio_message.m4a"


async def test_unknown_audio_is_refused_before_upload(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    with pytest.raises(BadInput):
        await client.transcribe(model="whisper-1", audio=b"not audio at all", filename="x.txt")
    assert fake.requests == []


async def test_fake_rejects_audio_named_without_a_supported_extension(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    response = await http.post(
        fake.base_url + "/audio/transcriptions",
        data={"model": "whisper-1"},
        files={"file": ("voice.oga", b"OggS....", "audio/ogg")},
    )
    assert response.status_code == 400
    assert "Invalid file format" in response.json()["error"]["message"]


async def test_translation_goes_to_the_translation_endpoint(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.translation = "good morning, how are you?"
    audio = (FIXTURES / "voice-note.ogg").read_bytes()

    heard = await client.transcribe(
        model="whisper-1", audio=audio, filename="voice.oga", translate=True, language="pt"
    )

    assert heard.text == "good morning, how are you?"
    form = fake.calls("/audio/translations")[0].form
    assert form["file"]["filename"] == "voice.ogg"
    assert "language" not in form
    assert fake.calls("/audio/transcriptions") == []


# -- images ----------------------------------------------------------------------------
async def test_generated_image_is_png_bytes(client: OpenAIClient, fake: FakeOpenAI) -> None:
    image = await client.generate_image(model="sdxl-turbo", prompt="a red fox", size="256x256")
    assert image.data.startswith(PNG)
    assert fake.calls("/images/generations")[0].json == {
        "model": "sdxl-turbo",
        "prompt": "a red fox",
        "size": "256x256",
        "n": 1,
    }


async def test_image_given_as_url_is_downloaded_without_the_key(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.image_response_format = "url"
    image = await client.generate_image(model="stablediffusion", prompt="a fox", size="256x256")
    assert image.data.startswith(PNG)
    download = fake.calls(".png")[0]
    assert download.method == "GET"
    assert "Authorization" not in download.headers


async def test_image_edit_uploads_the_picture(client: OpenAIClient, fake: FakeOpenAI) -> None:
    square = (FIXTURES / "square.png").read_bytes()

    image = await client.edit_image(
        model="sdxl-turbo", image=square, filename="square.png", prompt="add a hat", size="64x64"
    )

    assert image.data.startswith(PNG)
    form = fake.calls("/images/edits")[0].form
    assert form["image"]["data"] == square
    assert form["image"]["content_type"] == "image/png"
    assert form["prompt"] == "add a hat"


async def test_image_edit_of_a_jpeg_named_oddly_is_labelled_jpeg(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    photo = (FIXTURES / "photo.jpg").read_bytes()
    await client.edit_image(model="gpt-image-1", image=photo, filename="file_7", prompt="x")
    upload = fake.calls("/images/edits")[0].form["image"]
    assert (upload["filename"], upload["content_type"]) == ("file_7.jpg", "image/jpeg")


# -- billed requests the endpoint does not answer ----------------------------------------
@pytest.fixture(params=["app", "plain"])
async def quick_http(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """The `http` clients with a 0.2 s request timeout."""
    if request.param == "app":
        client = build_http_client(Settings(_env_file=None, request_timeout=0.2))  # type: ignore[call-arg]
    else:
        client = httpx.AsyncClient(timeout=0.2)
    async with client:
        yield client


def billed_client(http: httpx.AsyncClient, fake: FakeOpenAI, wait: float) -> OpenAIClient:
    """A client that waits `wait` seconds for a billed answer (its first_token_timeout),
    with the usual two retries."""
    return OpenAIClient(
        http, base_url=fake.base_url, api_key=KEY, first_token_timeout=wait, retry_base_delay=0.001
    )


async def make_image(client: OpenAIClient) -> Picture:
    return await client.generate_image(model="gpt-image-1", prompt="a city at night")


async def edit_image(client: OpenAIClient) -> Picture:
    square = (FIXTURES / "square.png").read_bytes()
    return await client.edit_image(
        model="gpt-image-1", image=square, filename="square.png", prompt="add a hat"
    )


async def transcribe(client: OpenAIClient) -> Transcript:
    audio = (FIXTURES / "voice-note.ogg").read_bytes()
    return await client.transcribe(model="whisper-1", audio=audio, filename="voice.ogg")


async def translate(client: OpenAIClient) -> Transcript:
    audio = (FIXTURES / "voice-note.ogg").read_bytes()
    return await client.transcribe(
        model="whisper-1", audio=audio, filename="voice.ogg", translate=True
    )


BILLED = [
    pytest.param(make_image, "/images/generations", "image", id="image"),
    pytest.param(edit_image, "/images/edits", "image", id="edit"),
    pytest.param(transcribe, "/audio/transcriptions", "transcription", id="transcription"),
    pytest.param(translate, "/audio/translations", "transcription", id="translation"),
]


@pytest.mark.parametrize(("call", "path", "service"), BILLED)
async def test_a_billed_request_waits_past_the_request_timeout_for_its_answer(
    quick_http: httpx.AsyncClient, fake: FakeOpenAI, call: Any, path: str, service: str
) -> None:
    # GPT Image takes up to two minutes, past RELAYBOT_REQUEST_TIMEOUT's 60 s.
    fake.answer_delays[path] = 0.5
    assert await call(billed_client(quick_http, fake, 2.0))
    assert len(fake.calls(path)) == 1


@pytest.mark.parametrize(("call", "path", "service"), BILLED)
async def test_a_billed_request_not_answered_in_time_is_not_sent_again(
    quick_http: httpx.AsyncClient, fake: FakeOpenAI, call: Any, path: str, service: str
) -> None:
    # Each request sent is made and billed by the endpoint, answered or not.
    fake.answer_delays[path] = 0.8
    with pytest.raises(NotAnswered, match="timed out") as caught:
        await call(billed_client(quick_http, fake, 0.3))
    assert caught.value.user_message == (
        f"The {service} service took too long to answer. Please try again in a minute."
    )
    assert len(fake.calls(path)) == 1


@pytest.mark.parametrize(("call", "path", "service"), BILLED)
async def test_a_billed_request_whose_connection_breaks_is_not_sent_again(
    quick_http: httpx.AsyncClient, fake: FakeOpenAI, call: Any, path: str, service: str
) -> None:
    fake.drop_after_request.add(path)
    with pytest.raises(NotAnswered, match="connection lost") as caught:
        await call(billed_client(quick_http, fake, 2.0))
    assert caught.value.user_message == (
        f"The connection to the {service} service broke before it answered. Please try "
        "again in a minute."
    )
    assert len(fake.calls(path)) == 1


@pytest.mark.parametrize(("call", "path", "service"), BILLED)
async def test_a_billed_request_refused_with_a_server_error_is_still_retried(
    quick_http: httpx.AsyncClient, fake: FakeOpenAI, call: Any, path: str, service: str
) -> None:
    # A 503 is the endpoint saying it did not do the work: asking again costs nothing.
    fake.fail_next(503, message="overloaded", path=path)
    assert await call(billed_client(quick_http, fake, 2.0))
    assert len(fake.calls(path)) == 2


async def test_a_billed_request_that_never_connects_is_upstream_down(
    quick_http: httpx.AsyncClient,
) -> None:
    # No connection, no request: retried as ever, and failing as the endpoint being down.
    async with FakeOpenAI() as gone:
        client = billed_client(quick_http, gone, 2.0)
    with pytest.raises(UpstreamDown) as caught:
        await make_image(client)
    assert not isinstance(caught.value, NotAnswered)


async def test_a_stream_cut_before_its_words_is_made_again_and_told_abandoned(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.cut_next_streams = 1  # the head and role came: the model read the request
    abandoned: list[int] = []

    async def note() -> None:
        abandoned.append(len(fake.chat_requests()))

    deltas = [
        d
        async for d in client.chat_stream(model="gpt-4o-mini", messages=user("hi"), abandoned=note)
    ]
    assert "".join(d.text for d in deltas) == "echo: hi"
    assert abandoned == [1]  # told of the first request, before the second was made
    assert len(fake.chat_requests()) == 2


async def test_a_stream_refused_with_a_server_error_is_not_told_abandoned(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.fail_next(503, message="overloaded", path="/chat/completions")
    abandoned: list[int] = []

    async def note() -> None:
        abandoned.append(1)

    deltas = [
        d
        async for d in client.chat_stream(model="gpt-4o-mini", messages=user("hi"), abandoned=note)
    ]
    assert "".join(d.text for d in deltas) == "echo: hi"
    assert abandoned == []
    assert len(fake.chat_requests()) == 2


async def test_a_stream_that_never_starts_is_told_abandoned(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    # The model may still be thinking: not asked again, but what it read is billed.
    client = idle_client(http, fake, 1.0)
    fake.think_seconds = 1.5
    abandoned: list[int] = []

    async def note() -> None:
        abandoned.append(1)

    with pytest.raises(FirstTokenTimeout):
        await anext(client.chat_stream(model="gpt-4o-mini", messages=user("hi"), abandoned=note))
    assert abandoned == [1]


# -- moderation and models -------------------------------------------------------------
async def test_moderation_reports_flagged_categories(
    client: OpenAIClient, fake: FakeOpenAI
) -> None:
    fake.flag_words["spam"] = ["harassment", "illicit"]

    results = await client.moderate(
        model="omni-moderation-latest", inputs=["hello there", "I will flagme now", "buy SPAM"]
    )

    assert [r.flagged for r in results] == [False, True, True]
    assert results[0].categories == ()
    assert results[1].categories == ("violence",)
    assert set(results[2].categories) == {"harassment", "illicit"}
    assert fake.calls("/moderations")[0].json["input"] == [
        "hello there",
        "I will flagme now",
        "buy SPAM",
    ]


async def test_models_are_listed_sorted(client: OpenAIClient, fake: FakeOpenAI) -> None:
    fake.models = ["zeta", "alpha", "mid"]
    assert await client.list_models() == ["alpha", "mid", "zeta"]


# -- the fake, used from another thread ------------------------------------------------
def test_fake_runs_in_its_own_thread_for_sync_callers() -> None:
    with FakeOpenAI() as server:
        server.queue_reply("from a thread")
        response = httpx.post(
            server.base_url + "/chat/completions",
            json={"model": "gpt-4o-mini", "messages": user("hi")},
        )
        assert response.json()["choices"][0]["message"]["content"] == "from a thread"
        assert server.chat_requests()[0]["model"] == "gpt-4o-mini"


def app_client(fake: FakeOpenAI, max_connections: int) -> tuple[httpx.AsyncClient, OpenAIClient]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key=KEY,
        openai_base_url=fake.base_url,
        max_connections=max_connections,
    )
    http = build_http_client(settings)
    return http, OpenAIClient(http, base_url=fake.base_url, api_key=KEY)


async def test_the_app_client_reuses_one_connection_for_answers_in_turn(fake: FakeOpenAI) -> None:
    http, client = app_client(fake, max_connections=100)
    async with http:
        for question in ("one", "two", "three", "four"):
            assert "".join(d.text for d in await collect(client, question)) == f"echo: {question}"
    assert len({r.peer for r in fake.calls("/chat/completions")}) == 1


async def test_many_answers_at_once_share_the_connection_limit(fake: FakeOpenAI) -> None:
    """The app's pool lets the configured number of answers stream at once, never more."""
    import asyncio

    from core.testing.fake_openai import echo_reply

    at_once = 0
    most = 0

    async def slow_echo(messages: Any) -> str:
        nonlocal at_once, most
        at_once += 1
        most = max(most, at_once)
        await asyncio.sleep(0.05)
        at_once -= 1
        return echo_reply(messages)

    fake.reply = slow_echo
    http, client = app_client(fake, max_connections=40)
    async with http:
        answers = await asyncio.gather(*(collect(client, f"q{i}") for i in range(100)))
    assert ["".join(d.text for d in a) for a in answers] == [f"echo: q{i}" for i in range(100)]
    # Up to the limit at once (not a smaller default), never more.
    assert 32 < most <= 40


def test_a_kept_message_encoding_costs_about_its_length() -> None:
    # Chat windows keep every turn with its encoding, for thousands of chats at once: an
    # encoder that hands back oversized buffers (orjson's are 4 KB each) multiplies that.
    tracemalloc.start()
    try:
        kept = [EncodedMessage({"role": "user", "content": f"message {i}"}) for i in range(2000)]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept[7].encoded == b'{"role":"user","content":"message 7"}'
    assert held / len(kept) < 1024  # the dict and its ~40-byte encoding; orjson's: over 4 KB
