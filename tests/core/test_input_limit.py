"""A model whose API takes less input than its window less the reply: OpenAI's gpt-5 models
take at most 272,000 tokens of their 400,000 (the rest is kept for the reply). A long chat's
requests keep within it, so none is refused first and sent again."""

from __future__ import annotations

import itertools

import pytest

from core.app import Core, open_core
from core.config import Settings
from core.testing.fake_openai import FakeOpenAI
from core.testing.sink import RecordingSink
from core.tokens import PER_MESSAGE_TOKENS, PRIMING_TOKENS, ROLE_TOKENS, counter_for
from core.trimming import history_budget
from core.types import ChatRef, IncomingMessage, Sender

GPT5_MAX_INPUT = 272_000
_ids = itertools.count(1)
DEFAULTS = Settings(_env_file=None)  # type: ignore[call-arg]
SYSTEM_COST = 50 + PER_MESSAGE_TOKENS + ROLE_TOKENS + PRIMING_TOKENS  # beside the history


@pytest.mark.parametrize(
    "model", ["gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-5.1", "gpt-5-2025-08-07", "openai/gpt-5"]
)
def test_a_gpt5_models_history_fits_its_input_limit_with_the_system_prompt(model: str) -> None:
    assert history_budget(DEFAULTS, model, 50) == GPT5_MAX_INPUT - SYSTEM_COST


@pytest.mark.parametrize(
    ("model", "window"),
    [("gpt-4.1", 1_047_576), ("o3", 200_000), ("gpt-5-chat-latest", 128_000)],
)
def test_other_models_take_their_window_less_the_reply(model: str, window: int) -> None:
    assert history_budget(DEFAULTS, model, 50) == window - DEFAULTS.reply_tokens - SYSTEM_COST


async def say(core: Core, i: int, words: int) -> list[str]:
    sink = RecordingSink()
    msg = IncomingMessage(
        chat=ChatRef("test", "long"),
        sender=Sender("u1", "Alice"),
        event_key=f"input-limit:{next(_ids)}",
        text=f"part {i} " + "word " * words,
    )
    await core.service.handle(msg, sink)
    return sink.texts


def gpt5(settings: Settings, fake: FakeOpenAI, limit: int) -> Settings:
    """A chat on gpt-5 at an endpoint that takes at most `limit` tokens of input, refusing
    more with OpenAI's 400 ("Input tokens exceed the configured limit of ...")."""
    fake.models = [*fake.models, "gpt-5"]
    fake.max_input_tokens = {"gpt-5": limit}
    fake.reply = lambda messages: "ok"
    return settings.model_copy(update={"chat_model": "gpt-5", "max_input_chars": 500_000})


async def test_a_long_gpt5_chat_is_answered_without_a_refusal(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    async with open_core(gpt5(settings, fake_openai, GPT5_MAX_INPUT)) as core:
        for i in range(4):  # 320,000 tokens in all: the first turn no longer fits
            assert await say(core, i, 80_000) == ["ok"]
    requests = fake_openai.chat_requests()
    assert len(requests) == 4  # one each: none refused, none sent again
    counter = counter_for("gpt-5")
    sizes = [sum(counter.count(m["content"]) for m in r["messages"]) for r in requests]
    assert max(sizes) <= GPT5_MAX_INPUT
    assert not requests[-1]["messages"][1]["content"].startswith("part 0")


async def test_a_refusal_past_the_input_limit_is_taken_as_too_long(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    """An endpoint taking less still (a gateway's own limit): its refusal is "too long", the
    message is asked again with half the history, and the next ones fit at once."""
    async with open_core(gpt5(settings, fake_openai, 150_000)) as core:
        for i in range(3):
            assert await say(core, i, 80_000) == ["ok"]
    asked = [[m["content"][:6] for m in r["messages"][1:]] for r in fake_openai.chat_requests()]
    # The second message was refused (with the first turn) and asked again without it.
    assert asked == [
        ["part 0"],
        ["part 0", "ok", "part 1"],
        ["ok", "part 1"],
        ["ok", "part 2"],
    ]
