"""A chat model named by a long path, as vLLM serves one, on SQLite and PostgreSQL.

vLLM serves a model under the path it was started with; a Hugging Face snapshot's runs past
128 characters. PostgreSQL refused to record the usage of such a model (the column held 128),
so every message got "Something went wrong" instead of its answer.
"""

from __future__ import annotations

import io

import pytest

from bots.console import run_console
from core.app import Core, open_core
from core.config import ModerationPolicy, Settings
from core.testing.fake_openai import FakeOpenAI

SNAPSHOT = "/srv/models/hub/models--meta-llama--Meta-Llama-3.1-8B-Instruct/snapshots/"
LONG = SNAPSHOT + "5206a32e0bd3067aef1ce90f5528ade7d866253f" * 3
LONG = LONG + "x" * (200 - len(LONG))


async def chat(core: Core, *lines: str, name: str = "vllm") -> str:
    out = io.StringIO()
    stdin = io.StringIO("".join(f"{x}\n" for x in lines))
    await run_console(core, chat=name, stdin=stdin, stdout=out)
    return out.getvalue()


@pytest.fixture
def vllm(settings: Settings, fake_openai: FakeOpenAI) -> Settings:
    fake_openai.models.append(LONG)
    return settings.model_copy(update={"chat_model": LONG, "moderation": ModerationPolicy.OFF})


async def test_a_model_with_a_200_character_name_answers_and_its_usage_is_counted(
    vllm: Settings, fake_openai: FakeOpenAI
) -> None:
    assert len(LONG) == 200
    async with open_core(vllm) as core:
        assert await chat(core, "hello", "again") == "echo: hello\necho: again\n"
        usage = await chat(core, "/usage")
    assert [body["model"] for body in fake_openai.chat_requests()] == [LONG, LONG]
    assert usage.startswith("Your usage:\n")
    assert usage.splitlines()[1].endswith("(2 requests)")


async def test_a_chat_switched_to_a_model_with_a_200_character_name_uses_it(
    settings: Settings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.models.append(LONG)
    async with open_core(settings.model_copy(update={"moderation": ModerationPolicy.OFF})) as core:
        out = await chat(core, f"/model {LONG}", "hello", "/model")
        # Another run reads the chat's model back from the database.
        again = await chat(core, "still there?")
    assert out.splitlines()[:2] == [f"This chat now uses {LONG}.", "echo: hello"]
    assert again == "echo: still there?\n"
    assert [body["model"] for body in fake_openai.chat_requests()] == [LONG, LONG]
