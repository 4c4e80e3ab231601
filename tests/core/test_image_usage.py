"""What /image and /edit cost, met through the console: GPT Image bills the prompt's text
and an edit's input picture by tokens, on top of the picture it makes.

Seen before: the endpoint's usage was dropped. Image rows showed 0 prompt tokens and cost
only the per-image price, so /usage and the budgets missed what the input cost.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.app import open_core
from core.config import Settings
from core.db.models import UsageRecord
from core.pricing import money
from core.testing.fake_openai import FakeOpenAI
from tests.bots.test_console import chat
from tests.conftest import FIXTURES

PROMPT = " ".join(["a watercolour lighthouse on a cliff at dawn with gulls"] * 10)  # 100 words
SQUARE_TOKENS = 65 + 129  # the 256x256 fixture: one 512-pixel tile, as OpenAI counts it

# Per 1M tokens: text in, image in (OpenAI's list prices); the picture made, per image
# (medium quality, 1024x1024: what the fake says "auto" made).
PRICES = {"gpt-image-1": (5.00, 10.00, 0.042), "gpt-image-1-mini": (2.00, 2.50, 0.011)}


@pytest.mark.parametrize("model", sorted(PRICES))
async def test_image_and_edit_input_tokens_are_recorded_and_priced(
    settings: Settings, fake_openai: FakeOpenAI, model: str
) -> None:
    text_rate, image_rate, per_image = PRICES[model]
    settings = settings.model_copy(update={"image_model": model, "admins": "console:you"})
    async with open_core(settings) as core:
        out = await chat(core, f"/image {PROMPT}", f"/edit {FIXTURES / 'square.png'} {PROMPT}")
        assert out.count("Image saved to ") == 2, out
        async with core.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(UsageRecord).where(UsageRecord.kind == "image").order_by(UsageRecord.id)
                )
            ).all()
        usage = await chat(core, "/usage")

    made, edited = rows
    # What the endpoint reported: the prompt's words in (and the edit's picture), and the
    # picture's tokens out.
    assert (made.model, made.prompt_tokens, made.completion_tokens) == (model, 100, 1056)
    assert (edited.prompt_tokens, edited.completion_tokens) == (100 + SQUARE_TOKENS, 1056)
    text_cost = 100 * text_rate / 1e6
    assert made.cost_usd == pytest.approx(per_image + text_cost)
    assert edited.cost_usd == pytest.approx(
        per_image + text_cost + SQUARE_TOKENS * image_rate / 1e6
    )
    # /usage shows the person what it all cost.
    today = next(line for line in usage.splitlines() if line.strip().startswith("today"))
    assert money(made.cost_usd + edited.cost_usd) in today, usage
