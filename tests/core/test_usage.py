"""Usage and cost: every model call is recorded with what it cost, and people can see it."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from core.app import Core, open_core
from core.config import Settings
from core.db.models import UsageRecord
from core.errors import ConfigError
from core.pricing import PriceTable, money
from core.testing.fake_openai import AUDIO_TOKENS_PER_SECOND, FakeOpenAI
from core.testing.sink import RecordingSink
from core.types import Attachment, AttachmentKind, ChatRef, IncomingMessage, Sender
from tests.conftest import FIXTURES

_ids = itertools.count(1)

# $1 per 1,000 tokens in and $2 per 1,000 out: round numbers the fake's word counts turn into.
PRICES = {"gpt-4o-mini": {"input": 1000, "cached_input": 500, "output": 2000}}


def message(text: str, user: str = "u1", chat: str = "c1", **kw: object) -> IncomingMessage:
    fields: dict[str, object] = {
        "chat": ChatRef("test", chat),
        "sender": Sender(user, user.title()),
        "event_key": f"usage:{next(_ids)}",
        "text": text,
    }
    fields.update(kw)
    return IncomingMessage(**fields)  # type: ignore[arg-type]


async def usage_rows(core: Core) -> list[UsageRecord]:
    async with core.store._session() as session:
        return list(
            (await session.execute(select(UsageRecord).order_by(UsageRecord.id))).scalars()
        )


@pytest.fixture
def priced(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"prices": json.dumps(PRICES), "system_prompt": "Be brief.", "admins": "test:boss"}
    )


# -- the price table ---------------------------------------------------------------------------
def test_chat_cost_counts_cached_tokens_at_their_own_price() -> None:
    table = PriceTable.from_config(None)
    # gpt-4o: $2.50 in, $1.25 cached in, $10 out per 1M tokens.
    cost = table.tokens_cost("gpt-4o", 1_000_000, 1_000_000, cached_tokens=400_000)
    assert cost == pytest.approx(0.6 * 2.50 + 0.4 * 1.25 + 10.00)


def test_dated_snapshots_use_their_model_price() -> None:
    table = PriceTable.from_config(None)
    assert table.lookup("gpt-4o-mini-2024-07-18") is table.lookup("gpt-4o-mini")
    assert table.lookup("openai/gpt-4.1") is table.lookup("gpt-4.1")


def test_audio_and_images_are_priced() -> None:
    table = PriceTable.from_config(None)
    assert table.audio_cost("whisper-1", 90) == pytest.approx(0.009)
    assert table.image_cost("gpt-image-1", "1024x1024", "high") == pytest.approx(0.167)
    assert table.image_cost("gpt-image-1", "1536x1024", "low", count=2) == pytest.approx(0.032)
    # "auto" quality is billed like medium (when the model does not say what it chose).
    assert table.image_cost("gpt-image-1", "1024x1024") == pytest.approx(0.042)


def test_transcription_is_priced_by_its_audio_tokens_else_by_its_seconds() -> None:
    table = PriceTable.from_config('{"local-stt": {"audio_minute": 0.01}}')
    # gpt-4o-mini-transcribe: audio $3, text in $1.25, out $5 per 1M; the seconds not again.
    by_tokens = table.cost(
        "gpt-4o-mini-transcribe",
        prompt_tokens=1_000_000,
        audio_tokens=800_000,
        completion_tokens=100_000,
        audio_seconds=60,
    )
    assert by_tokens == pytest.approx(0.8 * 3.00 + 0.2 * 1.25 + 0.1 * 5.00)
    # A model without an audio token price: its audio tokens are not text; its minutes count.
    assert table.cost(
        "local-stt", prompt_tokens=500, audio_tokens=500, audio_seconds=90
    ) == pytest.approx(0.015)


def test_unknown_model_costs_nothing_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    table = PriceTable.from_config(None)
    with caplog.at_level(logging.WARNING, logger="relaybot.pricing"):
        assert table.cost("llama3.1:8b", prompt_tokens=500, completion_tokens=50) == 0.0
        assert table.cost("llama3.1:8b", prompt_tokens=500, completion_tokens=50) == 0.0
    warnings = [r for r in caplog.records if "llama3.1:8b" in r.getMessage()]
    assert len(warnings) == 1


def test_prices_can_be_overridden_inline_or_from_a_file(tmp_path: Path) -> None:
    inline = PriceTable.from_config('{"gpt-4o": {"output": 12}, "llama3.1:8b": {}}')
    assert inline.tokens_cost("gpt-4o", 0, 1_000_000) == pytest.approx(12.0)
    # Fields not given keep the shipped price.
    assert inline.tokens_cost("gpt-4o", 1_000_000, 0) == pytest.approx(2.50)
    assert inline.lookup("llama3.1:8b") is not None
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"gpt-image-1": {"image": {"high": {"1024x1024": 0.2}}}}))
    from_file = PriceTable.from_config(str(path))
    assert from_file.image_cost("gpt-image-1", "1024x1024", "high") == pytest.approx(0.2)
    assert from_file.image_cost("gpt-image-1", "1024x1024", "low") == pytest.approx(0.011)


@pytest.mark.parametrize(
    "source",
    ['{"gpt-4o": {"inptu": 1}}', '{"gpt-4o": {"input": -1}}', "{not json", "/no/such/file.json"],
)
def test_bad_price_overrides_are_one_clear_config_error(source: str) -> None:
    with pytest.raises(ConfigError) as err:
        PriceTable.from_config(source)
    assert "RELAYBOT_PRICES" in str(err.value)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("NaN", "nan"),
        ("Infinity", "inf"),
        ("-Infinity", "-inf"),
        ("1e400", "inf"),
        ("1" + "0" * 400, "1" + "0" * 36 + "..."),
        ('"0.15"', "'0.15'"),
        ("true", "True"),
        ("null", "None"),
    ],
)
@pytest.mark.parametrize("field", ["input", "cached_input", "output", "audio_minute", "image"])
def test_a_price_must_be_a_finite_number(value: str, shown: str, field: str) -> None:
    # Python's JSON reader takes NaN, Infinity and 1e400 (infinite): every cost would be NaN.
    if field == "cached_input" and value == "null":
        return  # null there means "as input"
    raw = f'{{"1024x1024": {value}}}' if field == "image" else value
    name = "image.high.1024x1024" if field == "image" else field
    raw = f'{{"high": {raw}}}' if field == "image" else raw
    with pytest.raises(ConfigError) as err:
        PriceTable.from_config(f'{{"gpt-4o-mini": {{"{field}": {raw}}}}}')
    assert str(err.value) == (
        f"RELAYBOT_PRICES: gpt-4o-mini.{name} must be a finite number >= 0, not {shown}"
    )


def test_money_shows_small_amounts_to_the_hundredth_of_a_cent() -> None:
    assert money(0.000123) == "$0.0001"
    assert money(0.0000078) == "< $0.0001", "a few cheap requests are not free"
    assert money(0.0123) == "$0.01"
    assert money(12.5) == "$12.50"
    assert money(0) == "$0.00"


# -- recording --------------------------------------------------------------------------------
async def test_a_streamed_answer_records_the_servers_token_counts_and_cost(
    priced: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(priced) as core:
        await core.service.handle(message("hello there"), RecordingSink())
        (row,) = await usage_rows(core)
    body = fake_openai.chat_requests()[0]
    assert body["stream_options"] == {"include_usage": True}
    # The fake counts words: "Be brief." + "hello there" in, "echo: hello there" out.
    assert (row.prompt_tokens, row.completion_tokens) == (4, 3)
    assert (row.platform, row.chat_key, row.user_id, row.model, row.kind) == (
        "test",
        "test:c1",
        "u1",
        "gpt-4o-mini",
        "chat",
    )
    assert row.cost_usd == pytest.approx(4 * 0.001 + 3 * 0.002)


async def test_voice_and_images_record_seconds_and_count(
    priced: Settings, fake_openai: FakeOpenAI
) -> None:
    data = (FIXTURES / "voice-note.ogg").read_bytes()

    async def fetch() -> bytes:
        return data

    voice = Attachment(AttachmentKind.AUDIO, "audio/ogg", len(data), "v.oga", fetch, 30.0)
    async with open_core(priced) as core:
        await core.service.handle(message("", attachments=(voice,)), RecordingSink())
        await core.service.handle(message("/image a red bicycle"), RecordingSink())
        rows = await usage_rows(core)
    audio = next(r for r in rows if r.kind == "audio")
    assert audio.model == "gpt-4o-mini-transcribe"
    assert audio.audio_seconds == 30.0
    # Billed as the endpoint reports it: its audio tokens at $3 and the transcript's at $5 per
    # 1M, not the platform's 30 s at OpenAI's per-minute estimate.
    words = len(fake_openai.transcript.split())
    audio_tokens = round(fake_openai.audio_seconds * AUDIO_TOKENS_PER_SECOND)
    assert (audio.prompt_tokens, audio.completion_tokens) == (audio_tokens, words)
    assert audio.cost_usd == pytest.approx((audio_tokens * 3.00 + words * 5.00) / 1e6)
    image = next(r for r in rows if r.kind == "image")
    # The picture at its quality and size, and the prompt's 3 text tokens at $5 per 1M.
    assert (image.images, image.prompt_tokens) == (1, 3)
    assert image.cost_usd == pytest.approx(0.042 + 3 * 5.00 / 1e6)
    assert [r.kind for r in rows].count("chat") == 1


async def test_usage_shows_my_spend_today_this_month_and_all_time(
    priced: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(priced) as core:
        await core.service.handle(message("hello there"), RecordingSink())
        await core.service.handle(message("hi", user="u2", chat="c2"), RecordingSink())
        sink = RecordingSink()
        await core.service.handle(message("/usage"), sink)
    text = sink.texts[0]
    assert text.startswith("Your usage:")
    assert "today" in text and "this month" in text and "all time" in text
    assert text.count(money(0.010)) == 3 and "(1 request)" in text
    # Other people's spend is not shown to a non-admin.
    assert "test:u2" not in text and "Total" not in text


async def test_admins_see_totals_per_user_and_chat(
    priced: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(priced) as core:
        await core.service.handle(message("hello there"), RecordingSink())
        await core.service.handle(message("hi", user="u2", chat="c2"), RecordingSink())
        sink = RecordingSink()
        await core.service.handle(message("/usage", user="boss", chat="admin"), sink)
        await core.service.handle(message("/usage test:u2", user="boss", chat="admin"), sink)
        await core.service.handle(message("/usage test:boss"), sink)
    overview, of_u2, refused = sink.texts
    assert "All users" in overview and "test:u1" in overview and "test:u2" in overview
    assert "Chats" in overview and "test:c1" in overview and "test:c2" in overview
    assert "Total:" in overview
    assert of_u2.startswith("Usage of test:u2:")
    assert refused == "Sorry, only the bot's admins can do that."
