"""Every billed model call is made once and recorded, answered or not, as a person and the
operator meet it in the console: what they are told, what `/usage` says, and how many
requests the endpoint received."""

from __future__ import annotations

import io
import json

from sqlalchemy import select

from bots.console import run_console
from core.app import Core, open_core
from core.config import Settings
from core.db.models import Message, UsageRecord
from core.testing.fake_openai import FakeOpenAI
from tests.conftest import FIXTURES

PRICES = json.dumps({"gpt-4o-mini": {"input": 1000, "output": 1000}})


async def chat(core: Core, *lines: str) -> list[str]:
    out = io.StringIO()
    stdin = io.StringIO("".join(f"{x}\n" for x in lines))
    await run_console(core, chat="default", user="you", stdin=stdin, stdout=out)
    return out.getvalue().splitlines()


def today(out: list[str]) -> str:
    """The `/usage` line of today's spend."""
    return next(line for line in out if line.startswith("  today")).split(None, 1)[1]


async def usage_rows(core: Core) -> list[UsageRecord]:
    async with core.store._session() as session:
        query = select(UsageRecord).order_by(UsageRecord.id)
        return list((await session.execute(query)).scalars())


def slow(settings: Settings) -> Settings:
    """Requests time out after 0.2 s; a billed answer (and a stream's first words) is
    waited for 0.5 s."""
    update = {"request_timeout": 0.2, "first_token_timeout": 0.5, "max_retries": 2}
    return settings.model_copy(update=update)


async def test_an_image_that_outlasts_its_wait_is_asked_once_and_recorded(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    # GPT Image at high quality takes up to two minutes; the endpoint makes and bills the
    # picture whether or not the answer is still awaited.
    fake_openai.answer_delays["/images/generations"] = 1.0
    async with open_core(slow(settings)) as core:
        out = await chat(core, "/image a detailed city at night", "/usage")
    assert out[0] == "! The image service took too long to answer. Please try again in a minute."
    assert len(fake_openai.calls("/images/generations")) == 1
    # Recorded at the price of one picture at the configured size and quality.
    assert today(out) == "$0.04  (1 request)", out


async def test_an_image_whose_connection_breaks_is_asked_once_and_recorded(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.drop_after_request.add("/images/edits")
    square = FIXTURES / "square.png"
    async with open_core(slow(settings)) as core:
        out = await chat(core, f"/edit {square} add a hat", "/usage")
    assert out[0] == (
        "! The connection to the image service broke before it answered. Please try again "
        "in a minute."
    )
    assert len(fake_openai.calls("/images/edits")) == 1
    assert today(out) == "$0.04  (1 request)", out


async def test_a_transcription_that_outlasts_its_wait_is_asked_once_and_recorded(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.answer_delays["/audio/transcriptions"] = 1.0
    voice = FIXTURES / "voice-note.ogg"
    async with open_core(slow(settings)) as core:
        out = await chat(core, f"/voice {voice}")
        rows = await usage_rows(core)
    assert out[0] == (
        "! The transcription service took too long to answer. Please try again in a minute."
    )
    assert len(fake_openai.calls("/audio/transcriptions")) == 1
    # A file given by path has no duration: the call is recorded, at what is known of it.
    assert [(r.kind, r.model) for r in rows] == [("audio", settings.transcribe_model)]


async def test_a_stream_cut_before_its_first_words_is_recorded_for_both_requests(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    # The connection drops after the stream's head (a proxy's idle cut while a reasoning
    # model thinks): the model read the request, which is billed; the client asks again.
    fake_openai.cut_next_streams = 1
    async with open_core(settings.model_copy(update={"prices": PRICES})) as core:
        out = await chat(core, "what is the answer", "/usage")
        rows = await usage_rows(core)
    assert out[0] == "echo: what is the answer"
    assert len(fake_openai.chat_requests()) == 2
    assert today(out).endswith("(2 requests)"), out
    first, second = rows
    # The first request's prompt, counted with the tokenizer (no usage came).
    assert first.prompt_tokens > 0 and first.completion_tokens == 0
    assert second.completion_tokens == 5  # the fake's count: one token a word


async def test_a_stream_that_never_starts_is_recorded(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    # Not asked again (the model may still be thinking), but what it read is billed.
    fake_openai.think_seconds = 1.0
    async with open_core(slow(settings).model_copy(update={"prices": PRICES})) as core:
        out = await chat(core, "think hard", "/usage")
    assert out[0].startswith("! The model took too long to start answering.")
    assert len(fake_openai.chat_requests()) == 1
    assert today(out).endswith("(1 request)"), out
    assert not today(out).startswith("$0.00"), out


async def test_a_request_made_again_after_the_history_proved_stale_is_recorded_for_both(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    # Rows written by a script into a chat with no chats row: the request, sent while the
    # turn was stored, is made again with the history as stored. Both reached the model.
    async with open_core(settings.model_copy(update={"prices": PRICES})) as core:
        async with core.store._session() as session:
            session.add(
                Message(
                    chat_key="console:default",
                    role="user",
                    content="an older turn",
                    token_count=4,
                    encoding="o200k_base",
                )
            )
            await session.commit()
        out = await chat(core, "hello there", "/usage")
        rows = await usage_rows(core)
    assert out[0] == "echo: hello there"
    first, second = fake_openai.chat_requests()
    assert "an older turn" in json.dumps(second) and "an older turn" not in json.dumps(first)
    assert today(out).endswith("(2 requests)"), out
    assert all(r.prompt_tokens > 0 for r in rows)


async def test_an_empty_answer_from_a_server_without_usage_is_recorded(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    # The server reports no usage: the empty answer's request was read all the same.
    fake_openai.reject_stream_options = True
    fake_openai.queue_reply("")
    async with open_core(settings.model_copy(update={"prices": PRICES})) as core:
        out = await chat(core, "hello there", "/usage")
        rows = await usage_rows(core)
    assert out[0].startswith("! The model sent back an empty answer.")
    assert today(out).endswith("(1 request)"), out
    assert [(r.kind, r.completion_tokens) for r in rows] == [("chat", 0)]
    assert rows[0].prompt_tokens > 0
