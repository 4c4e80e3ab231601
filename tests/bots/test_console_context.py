"""A model server whose window is smaller than relaybot was told, met through the console."""

from __future__ import annotations

import logging

import pytest

from core.app import Core
from core.testing.fake_openai import FakeOpenAI
from tests.bots.test_console import chat

LONG_TURN = "lorem ipsum dolor sit amet " * 30  # ~150 words a turn


async def test_a_window_the_server_states_is_kept_to_from_then_on(
    core: Core, fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    # vLLM started with a short --max-model-len behind a model relaybot takes for 128k.
    out = await chat(core, *(f"turn {i} {LONG_TURN}" for i in range(20)))
    assert len(out.splitlines()) == 20
    fake_openai.context_tokens = 3000  # words, in the fake: the whole chat is ~6,000
    before = len(fake_openai.chat_requests())

    with caplog.at_level(logging.WARNING, logger="relaybot"):
        out = await chat(core, "hi", "ok?", "why?")

    assert out.splitlines() == ["echo: hi", "echo: ok?", "echo: why?"]
    requests = fake_openai.chat_requests()[before:]
    # Refused once, asked again within the window the server stated; then every message
    # is asked once, still with as much history as that window holds.
    assert len(requests) == 4
    last = requests[-1]["messages"]
    assert sum(len(str(m["content"]).split()) for m in last) <= 3000
    assert len(last) > 4
    assert any("RELAYBOT_CONTEXT_TOKENS" in r.getMessage() for r in caplog.records)


async def test_a_conversation_that_no_longer_fits_says_reset(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    out = await chat(core, *(f"turn {i} {LONG_TURN}" for i in range(6)))
    # A server that refuses every request with history in it, without saying its window.
    fake_openai.context_tokens = 40
    out = await chat(core, "hi", "/reset", "hello")
    assert out.splitlines() == [
        "! This conversation no longer fits the model, even with its older messages left "
        "out. Send /reset to start afresh.",
        "History cleared. Let's start over.",
        "echo: hello",
    ]
