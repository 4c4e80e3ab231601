"""/retry through the console: it answers the right question again, and keeps the answer
it had until a new one exists."""

from __future__ import annotations

from core.app import Core
from core.testing.fake_openai import FakeOpenAI
from tests.bots.test_console import chat, chat_bodies


def contents(body: dict) -> list[str]:
    return [str(m["content"]) for m in body["messages"][1:]]


async def test_retry_after_a_refused_message_answers_the_last_question_again(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue_reply("Why did the chicken cross the road?")
    fake_openai.queue_reply("A horse walks into a bar.")
    out = await chat(core, "tell me a joke", "FLAGME now", "/retry")

    lines = out.splitlines()
    assert lines[0] == "Why did the chicken cross the road?"
    assert lines[1].startswith("! Sorry")
    assert lines[2] == "A horse walks into a bar."
    assert contents(chat_bodies(fake_openai)[-1]) == ["tell me a joke"]


async def test_a_retry_that_fails_keeps_the_answer_it_had(
    core: Core, fake_openai: FakeOpenAI
) -> None:
    fake_openai.queue_reply("Why did the chicken cross the road?")
    assert (await chat(core, "tell me a joke")).strip() == "Why did the chicken cross the road?"
    fake_openai.fail_next(503, times=2, path="/chat/completions")

    out = await chat(core, "/retry", "and another?")

    assert out.splitlines()[0].startswith("! ")
    assert contents(chat_bodies(fake_openai)[-1]) == [
        "tell me a joke",
        "Why did the chicken cross the road?",
        "and another?",
    ]
