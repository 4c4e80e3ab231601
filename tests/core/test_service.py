"""The conversation service end to end: recorded sink in, fake OpenAI server behind."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from core.app import Core, open_core
from core.config import ModerationPolicy, Settings
from core.testing.fake_openai import FakeOpenAI
from core.testing.sink import RecordingSink
from core.tokens import PRIMING_TOKENS, counter_for
from core.types import Attachment, AttachmentKind, ChatRef, IncomingMessage, Sender
from tests.conftest import FIXTURES

_ids = itertools.count(1)


def message(text: str = "", chat: str = "c1", **kw: object) -> IncomingMessage:
    """A neutral message with a fresh event key unless one is given."""
    fields: dict[str, object] = {
        "chat": ChatRef("test", chat),
        "sender": Sender("u1", "Alice"),
        "event_key": f"test:{next(_ids)}",
        "text": text,
    }
    fields.update(kw)
    return IncomingMessage(**fields)  # type: ignore[arg-type]


def request_tokens(body: dict, model: str) -> int:
    """Prompt tokens of a chat request, counted the way the OpenAI cookbook does."""
    counter = counter_for(model)
    total = PRIMING_TOKENS
    for m in body["messages"]:
        name = m.get("name")
        tokens = counter.count(m["content"]) + (counter.count(name) if name else 0)
        total += counter.message_cost(tokens, has_name=bool(name))
    return total


async def test_redelivered_event_is_answered_once(core: Core, fake_openai: FakeOpenAI) -> None:
    sink = RecordingSink()
    msg = message("hello")
    assert await core.service.handle(msg, sink) is True
    assert await core.service.handle(msg, sink) is False
    assert sink.texts == ["echo: hello"]
    assert len(fake_openai.chat_requests()) == 1
    assert await core.store.count_messages(msg.chat.key) == 2


async def test_messages_of_one_chat_are_answered_in_order(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    fake_openai.chunk_delay = 0.01
    sinks = [RecordingSink() for _ in range(3)]
    await asyncio.gather(
        *(core.service.handle(message(f"m{i}"), sinks[i]) for i in range(3)),
        core.service.handle(message("other chat", chat="c2"), RecordingSink()),
    )
    bodies = [
        b for b in fake_openai.chat_requests() if b["messages"][-1]["content"] != "other chat"
    ]
    # Each request of chat c1 already holds the previous answers: strictly one at a time.
    assert [len(b["messages"]) for b in bodies] == [2, 4, 6]
    assert [m["content"] for m in bodies[-1]["messages"][1:]] == [
        "m0",
        "echo: m0",
        "m1",
        "echo: m1",
        "m2",
    ]
    assert len(core.service.locks) == 0


@pytest.fixture
def small_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"context_tokens": 400, "reply_tokens": 100})


async def test_history_is_trimmed_to_the_budget(
    small_settings: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(small_settings) as core:
        for i in range(40):
            await core.service.handle(
                message(f"message number {i} " + "word " * 10), RecordingSink()
            )
    model = small_settings.chat_model
    for body in fake_openai.chat_requests():
        assert request_tokens(body, model) <= 400 - 100
        assert body["messages"][0]["role"] == "system"
    last = fake_openai.chat_requests()[-1]
    assert last["messages"][-1]["content"].startswith("message number 39 ")
    assert not any(m["content"].startswith("message number 0 ") for m in last["messages"])
    # The window is used well: one more message would not have fitted.
    assert request_tokens(last, model) > 400 - 100 - 40


async def test_a_message_too_long_for_the_model_is_explained(
    small_settings: Settings, fake_openai: FakeOpenAI
) -> None:
    sink = RecordingSink()
    async with open_core(small_settings) as core:
        await core.service.handle(message("word " * 1000), sink)
    assert "too long" in sink.texts[0]
    assert not fake_openai.chat_requests()


async def test_unknown_model_names_work(core: Core, fake_openai: FakeOpenAI) -> None:
    fake_openai.models.append("llama3.1:8b")
    sink = RecordingSink()
    await core.service.handle(message("/model llama3.1:8b"), sink)
    await core.service.handle(message("hi llama"), sink)
    assert sink.texts[-1] == "echo: hi llama"
    assert fake_openai.chat_requests()[-1]["model"] == "llama3.1:8b"


async def test_group_turns_carry_the_speaker(core: Core, fake_openai: FakeOpenAI) -> None:
    await core.service.handle(
        message("hi all", is_direct=False, sender=Sender("u1", "Alice Smith")), RecordingSink()
    )
    await core.service.handle(
        message("hello", is_direct=False, sender=Sender("u2", "Bob")), RecordingSink()
    )
    body = fake_openai.chat_requests()[-1]
    users = [m for m in body["messages"] if m["role"] == "user"]
    assert [u["name"] for u in users] == ["Alice_Smith", "Bob"]


async def test_image_goes_to_a_vision_model(core: Core, fake_openai: FakeOpenAI) -> None:
    data = (FIXTURES / "photo.jpg").read_bytes()

    async def fetch() -> bytes:
        return data

    photo = Attachment(AttachmentKind.IMAGE, "image/jpeg", len(data), "photo.jpg", fetch)
    sink = RecordingSink()
    await core.service.handle(message("what is this?", attachments=(photo,)), sink)
    content = fake_openai.chat_requests()[-1]["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "what is this?"}
    assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,/9j/")
    assert sink.texts == ["echo: what is this?"]


async def test_oversized_audio_is_refused_before_download(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    fetched: list[bool] = []

    async def fetch() -> bytes:
        fetched.append(True)
        return b""

    big = Attachment(AttachmentKind.AUDIO, "audio/ogg", 30 * 2**20, "voice.oga", fetch)
    sink = RecordingSink()
    await core.service.handle(message(attachments=(big,)), sink)
    assert "too large" in sink.texts[0]
    assert not fetched
    assert not fake_openai.calls("/audio/transcriptions")


async def test_unsupported_audio_type_is_explained(core: Core, fake_openai: FakeOpenAI) -> None:
    async def fetch() -> bytes:
        return b"data"

    odd = Attachment(AttachmentKind.AUDIO, "application/x-thing", 4, "voice.xyz", fetch)
    sink = RecordingSink()
    await core.service.handle(message(attachments=(odd,)), sink)
    assert "can't transcribe that file type" in sink.texts[0]


async def test_group_voice_transcript_only(core: Core, fake_openai: FakeOpenAI) -> None:
    core.service.settings = core.service.settings.model_copy(
        update={"group_voice_transcript_only": True}
    )
    path = FIXTURES / "voice-note.ogg"

    async def fetch() -> bytes:
        return path.read_bytes()

    voice = Attachment(AttachmentKind.AUDIO, "audio/ogg", path.stat().st_size, "file_7.oga", fetch)
    sink = RecordingSink()
    await core.service.handle(message(attachments=(voice,), is_direct=False), sink)
    assert sink.shown == [("transcript", fake_openai.transcript)]
    assert not fake_openai.chat_requests()


async def test_history_survives_a_restart(settings: Settings, fake_openai: FakeOpenAI) -> None:
    async with open_core(settings) as core:
        await core.service.handle(message("my name is Ada"), RecordingSink())
    async with open_core(settings) as core:
        await core.service.handle(message("what is my name?"), RecordingSink())
    contents = [m["content"] for m in fake_openai.chat_requests()[-1]["messages"][1:]]
    assert contents == ["my name is Ada", "echo: my name is Ada", "what is my name?"]


async def test_provider_context_overflow_trims_harder_once(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    for i in range(6):
        await core.service.handle(message(f"turn {i}"), RecordingSink())
    fake_openai.fail_next(
        400,
        code="context_length_exceeded",
        message="This model's maximum context length is 10 tokens.",
        path="/chat/completions",
    )
    sink = RecordingSink()
    await core.service.handle(message("one more"), sink)
    assert sink.texts == ["echo: one more"]


async def test_retry_regenerates_the_last_answer(core: Core, fake_openai: FakeOpenAI) -> None:
    fake_openai.queue_reply("first try")
    await core.service.handle(message("tell a joke"), RecordingSink())
    fake_openai.queue_reply("second try")
    sink = RecordingSink()
    await core.service.handle(message("/retry"), sink)
    assert sink.texts == ["second try"]
    last = fake_openai.chat_requests()[-1]["messages"]
    assert [m["content"] for m in last[1:]] == ["tell a joke"]


async def test_usage_is_recorded_from_the_stream(core: Core, fake_openai: FakeOpenAI) -> None:
    from sqlalchemy import select

    from core.db.models import UsageRecord

    await core.service.handle(message("count my tokens please"), RecordingSink())
    async with core.engine.connect() as conn:
        rows = (await conn.execute(select(UsageRecord))).all()
    assert len(rows) == 1
    assert rows[0].kind == "chat" and rows[0].prompt_tokens > 0 and rows[0].completion_tokens > 0


async def test_empty_message_is_explained(core: Core, fake_openai: FakeOpenAI) -> None:
    sink = RecordingSink()
    await core.service.handle(message("   "), sink)
    assert sink.texts == ["Your message was empty."]


async def test_huge_paste_is_refused_politely(core: Core, fake_openai: FakeOpenAI) -> None:
    sink = RecordingSink()
    await core.service.handle(message("x" * 200_000), sink)
    assert "characters long" in sink.texts[0]
    assert not fake_openai.chat_requests()


async def test_a_burst_is_answered_in_full_with_bounded_work_at_once(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    running = 0
    peak = 0

    async def slow_reply(messages: list[dict]) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return "ok"

    fake_openai.reply = slow_reply
    bounded = settings.model_copy(update={"max_in_flight": 3, "moderation": ModerationPolicy.OFF})
    async with open_core(bounded) as core:
        sinks = [RecordingSink() for _ in range(30)]
        await asyncio.gather(
            *(core.service.handle(message(f"q{i}", chat=f"c{i}"), sinks[i]) for i in range(30))
        )
    assert [s.texts for s in sinks] == [["ok"]] * 30
    assert 1 < peak <= 3


async def test_a_reply_to_the_latest_answer_costs_no_more_database_work(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    """Whether the replied-to message is the chat's latest answer (not quoted again) is
    told by the chat's window in memory: a reply costs the units of work a message does."""
    await core.service.handle(message("hello"), RecordingSink())
    await core.service.handle(message("warm up"), RecordingSink())
    db = core.store.db
    units: list[str] = []
    for name in ("run", "fetch"):
        original = getattr(db, name)

        def spy(*args: object, _original: object = original, **kw: object) -> object:
            units.append(getattr(args[0], "__name__", str(args[0])[:40]))
            return _original(*args, **kw)  # type: ignore[operator]

        setattr(db, name, spy)
    await core.service.handle(message("plain"), RecordingSink())
    plain, units[:] = list(units), []
    await core.service.handle(message("and?", reply_to_text="echo: plain"), RecordingSink())

    assert units == plain
    assert fake_openai.chat_requests()[-1]["messages"][-1]["content"] == "and?"
