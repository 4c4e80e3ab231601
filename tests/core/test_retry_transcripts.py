"""/retry in a group that gets transcripts: it asks the question it answers again, with the
history before it. The transcripts posted since came after the question: they are not sent
and take no room, however many there are, and the new answer replaces the old one."""

from __future__ import annotations

import itertools

import pytest

from core.app import Core, open_core
from core.config import Settings
from core.testing.fake_openai import FakeOpenAI
from core.testing.sink import RecordingSink
from core.types import Attachment, AttachmentKind, ChatRef, IncomingMessage, Sender
from tests.conftest import FIXTURES

_ids = itertools.count(1)
VOICE = (FIXTURES / "voice-note.ogg").read_bytes()
QUESTION = "what is the capital of France?"
MEETING = "we talked about the budget" + " and the plan" * 40  # about 125 tokens


def message(text: str = "") -> IncomingMessage:
    """A question to the bot, or (no text) a voice note nobody addressed to it."""

    async def fetch() -> bytes:
        return VOICE

    voice = Attachment(AttachmentKind.AUDIO, "audio/ogg", len(VOICE), "note.oga", fetch)
    return IncomingMessage(
        chat=ChatRef("test", "team"),
        sender=Sender("u1", "Alice"),
        event_key=f"retry-transcripts:{next(_ids)}",
        text=text,
        attachments=() if text else (voice,),
        is_direct=False,
        addressed_to_bot=bool(text),
    )


async def send(core: Core, text: str = "") -> list[tuple[str, str]]:
    """What one message showed, as (kind, text)."""
    sink = RecordingSink()
    await core.service.handle(message(text), sink)
    return sink.shown


async def voice_notes(core: Core, fake: FakeOpenAI, count: int, transcript: str) -> None:
    fake.transcript = transcript
    for _ in range(count):
        assert await send(core) == [("transcript", transcript)]


def asked(fake: FakeOpenAI) -> list[str]:
    """The newest chat request's history (its system prompt left out)."""
    return [str(m["content"]) for m in fake.chat_requests()[-1]["messages"][1:]]


async def history(core: Core) -> list[str]:
    return [r.content async for r in core.store.newest_messages("test:team")][::-1]


def group(settings: Settings, context_tokens: int | None = None) -> Settings:
    return settings.model_copy(
        update={
            "context_tokens": context_tokens,
            "reply_tokens": 50,
            "group_voice_transcript_only": True,
        }
    )


@pytest.mark.parametrize(
    ("notes", "transcript"),
    [(6, MEETING), (1, MEETING * 10)],
    ids=["transcripts-filling-the-room", "one-transcript-over-the-room"],
)
async def test_retry_asks_the_question_whatever_room_the_transcripts_since_would_take(
    settings: Settings, fake_openai: FakeOpenAI, notes: int, transcript: str
) -> None:
    async with open_core(group(settings, 700)) as core:
        await send(core, "hello there")
        fake_openai.queue_reply("Lyon.")
        assert await send(core, QUESTION) == [("answer", "Lyon.")]
        await voice_notes(core, fake_openai, notes, transcript)

        assert await send(core, "/retry") == [("answer", f"echo: {QUESTION}")]
        assert asked(fake_openai) == ["hello there", "echo: hello there", QUESTION]
        # The new answer replaced the old one (stored after the transcripts, as shown).
        assert await history(core) == [
            "hello there",
            "echo: hello there",
            QUESTION,
            *[transcript] * notes,
            f"echo: {QUESTION}",
        ]


async def test_a_retry_refused_as_too_long_is_asked_again_with_its_question(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """The endpoint's window is smaller than configured: the retried question is asked again
    within it, still with the question (the transcripts since take none of it)."""
    async with open_core(group(settings, 2000)) as core:
        for i in range(10):
            await send(core, f"turn {i} " + "word " * 60)
        await send(core, QUESTION)
        await voice_notes(core, fake_openai, 6, MEETING)
        fake_openai.context_tokens = 600  # "This model's maximum context length is 600 tokens"
        before = len(fake_openai.chat_requests())

        assert await send(core, "/retry") == [("answer", f"echo: {QUESTION}")]
        assert len(fake_openai.chat_requests()) - before == 2  # refused, then asked again
        assert asked(fake_openai)[-1] == QUESTION
        assert (await history(core))[-1] == f"echo: {QUESTION}"


async def test_retry_finds_the_last_answer_behind_many_transcripts(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(group(settings)) as core:
        fake_openai.queue_reply("Lyon.")
        await send(core, QUESTION)
        await voice_notes(core, fake_openai, 25, MEETING)

        assert await send(core, "/retry") == [("answer", f"echo: {QUESTION}")]
        assert asked(fake_openai) == [QUESTION]
        assert await history(core) == [QUESTION, *[MEETING] * 25, f"echo: {QUESTION}"]
