"""The client's wait for a stream's first bytes (RELAYBOT_FIRST_TOKEN_TIMEOUT) is its own:
longer than the wait between chunks and than httpx's read timeout, and a stream silent past
it is not asked again. Through the app's HTTP client (the stream goes straight to its
transport) and a plain httpx client alike; times scaled down."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import ValidationError

from core.config import Settings
from core.errors import BadInput, UpstreamDown
from core.openai_client import FirstTokenTimeout, OpenAIClient, build_http_client
from core.testing.fake_openai import FakeOpenAI

KEY = "sk-test-first-token"
READ_TIMEOUT = 0.3  # httpx's (RELAYBOT_REQUEST_TIMEOUT)
IDLE = 0.3  # between chunks (RELAYBOT_STREAM_IDLE_TIMEOUT)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture(params=["app", "plain"])
async def http(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    if request.param == "app":
        settings = Settings(_env_file=None, request_timeout=READ_TIMEOUT)  # type: ignore[call-arg]
        client: httpx.AsyncClient = build_http_client(settings)
    else:
        client = httpx.AsyncClient(timeout=READ_TIMEOUT)
    async with client:
        yield client


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_first_token_timeout_that_cannot_work_is_refused_naming_it(value: str) -> None:
    with pytest.raises(ValidationError, match="RELAYBOT_FIRST_TOKEN_TIMEOUT"):
        Settings(_env_file=None, RELAYBOT_FIRST_TOKEN_TIMEOUT=value)  # type: ignore[call-arg]


def test_the_first_token_timeout_defaults_to_five_minutes() -> None:
    assert Settings(_env_file=None).first_token_timeout == 300  # type: ignore[call-arg]
    taken = Settings(_env_file=None, RELAYBOT_FIRST_TOKEN_TIMEOUT="900")  # type: ignore[call-arg]
    assert taken.first_token_timeout == 900


def client_for(http: httpx.AsyncClient, fake: FakeOpenAI, first: float) -> OpenAIClient:
    return OpenAIClient(
        http,
        base_url=fake.base_url,
        api_key=KEY,
        stream_idle_timeout=IDLE,
        first_token_timeout=first,
        max_retries=2,
        retry_base_delay=0.001,
    )


async def answer(client: OpenAIClient) -> str:
    messages = [{"role": "user", "content": "think hard"}]
    return "".join([d.text async for d in client.chat_stream(model="o3", messages=messages)])


# Azure OpenAI opens each stream with a chunk of no choices (the prompt's filter results),
# then the model thinks: that chunk is not the answer's start.
@pytest.mark.parametrize("framing_first", [False, True], ids=["silent", "azure-framing"])
async def test_a_think_past_the_idle_and_read_timeouts_is_waited_for(
    http: httpx.AsyncClient, fake: FakeOpenAI, framing_first: bool
) -> None:
    fake.prompt_filter_results = framing_first
    fake.queue_reply("forty two")
    fake.think_seconds = 0.8
    assert await answer(client_for(http, fake, 1.5)) == "forty two"
    assert len(fake.chat_requests()) == 1


async def test_a_think_past_the_first_token_timeout_fails_at_once_without_a_retry(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.queue_reply("too late")
    fake.think_seconds = 1.5
    started = time.monotonic()
    with pytest.raises(FirstTokenTimeout, match="raise RELAYBOT_FIRST_TOKEN_TIMEOUT") as failed:
        await answer(client_for(http, fake, 0.6))
    assert 0.6 <= time.monotonic() - started < 1.4
    assert "sent nothing for 0.6 s" in str(failed.value)
    assert len(fake.chat_requests()) == 1


async def test_once_the_answer_began_the_idle_timeout_cuts_it(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    # The model's first words came, then it went quiet: not a think, an outage, cut at the
    # idle timeout, far sooner than the first-token one.
    fake.queue_reply("one two")
    fake.chunk_delay = 1.0
    started = time.monotonic()
    with pytest.raises(UpstreamDown, match=r"no data for 0\.3 s"):
        await answer(client_for(http, fake, 5.0))
    assert time.monotonic() - started < 2.5
    assert len(fake.chat_requests()) == 1  # words were given: not asked again


async def test_a_413_from_a_proxy_in_front_of_the_audio_endpoint_is_the_file_s_size(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.fail_next(413, message="Request Entity Too Large", path="/audio/transcriptions")
    client = client_for(http, fake, 300.0)
    with pytest.raises(BadInput) as refused:
        await client.transcribe(model="whisper-1", audio=b"OggS" + bytes(64), filename="a.ogg")
    assert refused.value.user_message == (
        "That audio file is too large for the transcription service. Please send a shorter "
        "or more compressed recording."
    )
    assert len(fake.calls("/audio/transcriptions")) == 1
